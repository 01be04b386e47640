"""Image encoders: images [B, 3, 32, 32] in [0, 1] -> unit vectors [B, D]."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.encoders.transformer import check_transformer_sizes, transformer_blocks


class CNNEncoder(nn.Module):
    """Five stride-2 3x3 convs take 32x32 down to 1x1 (32->16->8->4->2->1); the last conv has D
    channels, so flattening gives the embedding directly, then LayerNorm and L2."""

    def __init__(self, embed_dim: int, channels: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        widths = [3, *channels, embed_dim]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1))
            if i < len(widths) - 2:  # no activation after the projection to D
                layers.append(nn.GELU())
        self.convs = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.convs(images * 2 - 1)  # [B, D, 1, 1]; inputs centred on 0
        return F.normalize(self.norm(x.flatten(1)), dim=-1)  # [B, D]


class ViTEncoder(nn.Module):
    """Vision Transformer: non-overlapping patches -> linear patch embedding, a learned [CLS] token
    and learned positional embeddings, `depth` pre-norm transformer blocks, then the [CLS] output
    -> final LayerNorm -> linear -> LayerNorm -> L2.

    Defaults are small: 8x8 patches give a 4x4 grid, 17 tokens with [CLS], cheap on a CPU; 4x4
    patches (65 tokens) cost about 4x as much per step.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int = 8,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"encoder.patch_size must divide {image_size}, got {patch_size}")
        check_transformer_sizes("encoder", width, depth, heads, mlp_ratio, dropout)
        self.patch_size = patch_size
        n_patches = (image_size // patch_size) ** 2
        # A stride-p conv with a p x p kernel is the linear map of each flattened patch.
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n_patches, width) * 0.02)
        self.blocks = transformer_blocks(width, depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(width)  # pre-norm blocks leave the residual stream unnormalised
        self.proj = nn.Linear(width, embed_dim)
        self.out_norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images * 2 - 1)  # [B, W, H/p, W/p]; inputs centred on 0
        x = x.flatten(2).transpose(1, 2)  # [B, P, W], patches in row-major order
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed  # [B, 1+P, W]
        x = self.norm(self.blocks(x))[:, 0]  # [B, W], the [CLS] output
        return F.normalize(self.out_norm(self.proj(x)), dim=-1)  # [B, D]
