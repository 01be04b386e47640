"""Image encoders: images [B, 3, 32, 32] in [0, 1] -> unit vectors [B, D]."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


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
