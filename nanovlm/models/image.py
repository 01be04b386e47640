"""Image encoders: images [B, 3, S, S] in [0, 1] -> unit vectors [B, D]; S is `image_size` (data.image_size, 32 for
the synthetic worlds).

Both also expose their token grid through `encode_with_tokens(images) -> (embedding [B, D], tokens [B, N, C])`,
for objectives that need more than the pooled embedding (a captioner's decoder attends to the tokens). The
embedding it returns is exactly `forward`'s; `num_tokens` (N) and `token_dim` (C) size whatever reads the tokens.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.models.transformer import check_transformer_sizes, transformer_blocks


class CNNEncoder(nn.Module):
    """Five stride-2 3x3 convs take 32x32 down to 1x1 (32->16->8->4->2->1); the last conv has D
    channels, then a global average (the identity at 32 px, where the map is already 1x1), LayerNorm and L2.
    Larger images keep the same convs: 64 px ends on a 2x2 map, 224 px on 7x7, averaged to one vector.

    Its tokens are the cells of the map after the third conv and its GELU (4x4 = 16 at 32 px, ceil(S/8)^2 in
    general): the last map on which the 3x3 grid of positions is still spatially resolved at 32 px.
    """

    TOKEN_CONVS_FROM_END = 2  # the tokens are read before the last two convs (4x4 -> 2x2 -> 1x1)

    def __init__(self, embed_dim: int, channels: tuple[int, ...] = (32, 64, 128, 128), image_size: int = 32) -> None:
        super().__init__()
        if image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {image_size}")
        widths = [3, *channels, embed_dim]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1))
            if i < len(widths) - 2:  # no activation after the projection to D
                layers.append(nn.GELU())
        self.convs = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(embed_dim)
        self.embed_dim = embed_dim
        # Each of the last two convs is one layer plus (except the last) one GELU: 3 layers from the end.
        self.token_layers = len(layers) - (2 * self.TOKEN_CONVS_FROM_END - 1)
        self.token_dim = widths[-1 - self.TOKEN_CONVS_FROM_END]
        side = image_size
        for _ in range(len(widths) - 1 - self.TOKEN_CONVS_FROM_END):  # a stride-2, padding-1 conv: ceil(side / 2)
            side = (side + 1) // 2
        self.num_tokens = side**2  # 32 px: 4x4 = 16 cells

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.convs(images * 2 - 1)  # [B, D, s, s]; inputs centred on 0; s = 1 at 32 px
        return F.normalize(self.norm(x.mean(dim=(2, 3))), dim=-1)  # [B, D]

    def encode_with_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding [B, D], tokens [B, N, C]): the same convs as `forward`, with the token map read on the way."""
        x = self.convs[: self.token_layers](images * 2 - 1)  # [B, C, 4, 4] at 32 px
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C], cells in row-major order
        x = self.convs[self.token_layers :](x)  # [B, D, 1, 1] at 32 px
        return F.normalize(self.norm(x.mean(dim=(2, 3))), dim=-1), tokens


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
            raise ValueError(f"encoder.patch_size must divide data.image_size ({image_size}), got {patch_size}")
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
        self.embed_dim, self.token_dim, self.num_tokens = embed_dim, width, n_patches  # tokens: the patches' outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_with_tokens(images)[0]

    def encode_with_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding [B, D] from the [CLS] output, tokens [B, P, W]: the patch tokens' final outputs)."""
        x = self.patch_embed(images * 2 - 1)  # [B, W, H/p, W/p]; inputs centred on 0
        x = x.flatten(2).transpose(1, 2)  # [B, P, W], patches in row-major order
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed  # [B, 1+P, W]
        x = self.norm(self.blocks(x))  # [B, 1+P, W]
        return F.normalize(self.out_norm(self.proj(x[:, 0])), dim=-1), x[:, 1:]  # [B, D], [B, P, W]
