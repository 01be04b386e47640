"""fusion=pairs: a Relation Network (Santoro et al., 2017, "A simple neural network module for relational
reasoning"): every ordered pair of image tokens, each tagged with its grid coordinates, is scored together with the
question by one shared MLP g; the pair outputs are averaged, layer-normed, and a second MLP f answers.

Why it is here beside the three fusion designs: a question about two objects ("is the red circle left of the blue
square?") needs both found and their positions compared. The attention designs must learn to find each object with
one layer and compare with the next before the answer carries any signal, and from scratch none of them leaves
chance on `relation` (docs/vqa.md). g sees the two cells' contents, their coordinates and the question at once, so
"this pair is the red circle and the blue square, and the first's column is lower" is one function of one input.
That is Santoro et al.'s finding on Sort-of-CLEVR (relational questions: CNN+MLP 63 %, CNN+RN 94 %), which this
module lets a reader check on our world. Measured here it does not carry over at our budget: from scratch it stays
at chance on `relation` too, and learns more slowly than cross (docs/vqa.md, "Why relation stays at chance").

The first layer of g is linear in [o_i ; o_j ; q], so it is computed per token and broadcast over the N x N pairs
(W_a o_i + W_b o_j + W_q q), not on N^2 concatenations: the same function with N^2 fewer first-layer products.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanovlm.fusion.late import answer_mlp
from nanovlm.fusion.sizes import FusionSizes


def grid_coordinates(num_tokens: int) -> torch.Tensor:
    """[N, 2] (column, row) of each token of a square row-major grid, in [-1, 1] (both encoders' token order)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"fusion=pairs and film need a square token grid, got {num_tokens} tokens")
    steps = torch.linspace(-1.0, 1.0, side) if side > 1 else torch.zeros(1)
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([cols.flatten(), rows.flatten()], dim=-1)


class PairsFusion(nn.Module):
    """f(mean over token pairs (i, j) of g(o_i, o_j, q)) -> answer logits; o = [token ; x, y], q = the configured
    text encoder's question embedding (as late and blind read it)."""

    uses_image = True

    def __init__(
        self,
        sizes: FusionSizes,
        text_encoder: nn.Module,
        width: int = 128,
        hidden: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"fusion.width must be >= 1, got {width}")
        self.text_encoder = text_encoder
        self.register_buffer("coords", grid_coordinates(sizes.num_tokens), persistent=False)  # [N, 2]
        self.token_norm = nn.LayerNorm(sizes.token_dim)
        object_dim = sizes.token_dim + 2
        self.first, self.second = nn.Linear(object_dim, width), nn.Linear(object_dim, width, bias=False)
        self.question = nn.Linear(text_encoder.embed_dim, width, bias=False)
        self.g = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width), nn.GELU())
        self.pool_norm = nn.LayerNorm(width)
        self.f = answer_mlp(width, sizes.n_answers, hidden, dropout)

    def forward(self, image_emb: torch.Tensor, image_tokens: torch.Tensor, questions: torch.Tensor) -> torch.Tensor:
        """[B, A] answer logits from the token grid [B, N, C] and question tokens [B, L] (image_emb unused)."""
        coords = self.coords.expand(len(image_tokens), -1, -1)  # [B, N, 2]
        objects = torch.cat([self.token_norm(image_tokens), coords], dim=-1)  # [B, N, C + 2]
        q = self.question(self.text_encoder(questions))  # [B, W]
        pairs = self.first(objects)[:, :, None] + self.second(objects)[:, None, :] + q[:, None, None]  # [B, N, N, W]
        return self.f(self.pool_norm(self.g(pairs).mean(dim=(1, 2))))
