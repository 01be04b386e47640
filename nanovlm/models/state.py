"""encoder=state: the scene's exact description read off the renderer's pixels, instead of a learned vision tower.

CLEVR's and Sort-of-CLEVR's "state description" input (Johnson et al. 2017; Santoro et al. 2017 report their
Relation Network on it beside pixels): a model given the objects' true colours, shapes and cells has nothing left to
perceive, so what it still cannot answer is what its fusion and question reading cannot. It is a diagnostic for the
synthetic worlds (data=shapes, scenes, vqa), whose renderer (nanovlm/data/shapes.py) draws every object inside its
own cell of the 3x3 grid: the cell's centre pixel is the object's colour (black: empty), and two corners tell the
shape (a square fills its top-left corner, a triangle only its bottom-left, a circle neither). Any other picture is
read as whatever those pixels happen to be.

Tokens: one per cell, row-major, [B, 9, 13] = one-hot colour (9) ; one-hot shape (3) ; empty (1), fixed, with no
parameters. The pooled embedding, which late fusion and the dual encoder read, is a learned linear map of all nine
tokens, LayerNorm and L2, as the other encoders end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.data.shapes import COLOURS, POSITIONS, SHAPES, cell_box

FEATURES = len(COLOURS) + len(SHAPES) + 1  # colour one-hot, shape one-hot, empty


class SceneStateEncoder(nn.Module):
    """The 3x3 grid's objects as one-hot tokens read from fixed pixels; only the pooled embedding is learned."""

    def __init__(self, embed_dim: int, image_size: int = 32) -> None:
        super().__init__()
        if image_size != 32:
            raise ValueError(f"data.image_size must be 32 with encoder=state (the worlds' renders), got {image_size}")
        boxes = torch.tensor([cell_box(p) for p in POSITIONS])  # [9, 4] inclusive (x0, y0, x1, y1)
        x0, y0, x1, y1 = boxes.unbind(1)
        # The pixels read per cell, (row, column): its centre, top-left corner, bottom-left corner.
        self.register_buffer("rows", torch.stack([(y0 + y1) // 2, y0, y1], 1), persistent=False)  # [9, 3]
        self.register_buffer("cols", torch.stack([(x0 + x1) // 2, x0, x0], 1), persistent=False)
        self.register_buffer("palette", torch.tensor(list(COLOURS.values()), dtype=torch.float), persistent=False)
        self.proj = nn.Linear(len(POSITIONS) * FEATURES, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.embed_dim, self.token_dim, self.num_tokens = embed_dim, FEATURES, len(POSITIONS)

    def read(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 9, 13] one-hot (colour ; shape ; empty) of each cell of images [B, 3, 32, 32] in [0, 1], in their dtype
        (read in float32: cdist has no bf16 kernel)."""
        pixels = images[:, :, self.rows, self.cols].float().mul(255).permute(0, 2, 3, 1)  # [B, 9, 3 pixels, RGB]
        centre, top_left, bottom_left = (pixels[:, :, k].sum(-1) > 0 for k in range(3))  # [B, 9] each: drawn?
        colour = torch.cdist(pixels[:, :, 0], self.palette.float().expand(len(images), -1, -1)).argmin(-1)  # [B, 9]
        shape = torch.where(top_left, SHAPES.index("square"), SHAPES.index("circle"))
        shape = torch.where(bottom_left & ~top_left, SHAPES.index("triangle"), shape)
        drawn = centre[..., None]  # [B, 9, 1]: an empty cell keeps only its `empty` flag
        tokens = torch.cat([F.one_hot(colour, len(COLOURS)) * drawn, F.one_hot(shape, len(SHAPES)) * drawn, ~drawn], -1)
        return tokens.to(images.dtype)  # the model's dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_with_tokens(images)[0]

    def encode_with_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding [B, D], tokens [B, 9, 13])."""
        tokens = self.read(images)
        return F.normalize(self.norm(self.proj(tokens.flatten(1))), dim=-1), tokens
