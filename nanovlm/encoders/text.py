"""Text encoders: token ids [B, T] ([CLS] first) -> unit vectors [B, D]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MeanPoolTextEncoder(nn.Module):
    """Bag of words: mean of the token embeddings -> linear -> LayerNorm -> L2. Word order is
    ignored, which suits captions whose three slots never share a word."""

    def __init__(self, vocab_size: int, embed_dim: int, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.proj = nn.Linear(width, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).mean(dim=1)  # [B, T, W] -> [B, W]
        return F.normalize(self.norm(self.proj(x)), dim=-1)  # [B, D]
