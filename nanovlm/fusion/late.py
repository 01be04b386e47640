"""fusion=late: what a CLIP feature plus a head can do. The image encoder's pooled embedding and the text encoder's
question embedding (the dual encoder's two unit vectors) are concatenated and classified by an MLP; nothing lets a
question word look at a particular place in the picture, only at the one vector that summarises it."""

from __future__ import annotations

import torch
from torch import nn

from nanovlm.fusion.sizes import FusionSizes


def answer_mlp(in_dim: int, n_answers: int, hidden: int, dropout: float) -> nn.Sequential:
    """LayerNorm (the inputs are unit vectors, entries ~1/sqrt(D)), then two GELU layers and the answer logits."""
    if hidden < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"fusion.hidden must be >= 1 and fusion.dropout in [0, 1), got {hidden}, {dropout}")
    return nn.Sequential(
        nn.LayerNorm(in_dim),
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, n_answers),
    )


class LateFusion(nn.Module):
    """MLP([image embedding ; question embedding]) -> answer logits. The text encoder is the configured one
    (`text_encoder=`, sized and given the padding id by build_model, so padded questions embed as unpadded ones)."""

    uses_image = True

    def __init__(self, sizes: FusionSizes, text_encoder: nn.Module, hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.mlp = answer_mlp(sizes.embed_dim + text_encoder.embed_dim, sizes.n_answers, hidden, dropout)

    def forward(self, image_emb: torch.Tensor, image_tokens: torch.Tensor, questions: torch.Tensor) -> torch.Tensor:
        """[B, A] answer logits from image_emb [B, D] and question tokens [B, L] (image_tokens unused)."""
        return self.mlp(torch.cat([image_emb, self.text_encoder(questions)], dim=-1))
