"""Text encoders: token ids [B, T] ([CLS] first, right-padded with `pad_id`) -> unit vectors [B, D].

Both honour the padding mask (`tokens != pad_id`): a caption's embedding is the same with any amount of padding
after it, so a batch padded to its longest caption and a caption encoded alone agree. `pad_id=None` (the closed
worlds, whose captions all have one length) skips the mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanovlm.data.tokenizer import padding_mask
from nanovlm.models.transformer import check_transformer_sizes, transformer_blocks


class MeanPoolTextEncoder(nn.Module):
    """Bag of words: mean of the token embeddings -> linear -> LayerNorm -> L2. Word order is
    ignored, which suits captions whose three slots never share a word."""

    def __init__(self, vocab_size: int, embed_dim: int, width: int = 64, pad_id: int | None = None) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, width)
        self.proj = nn.Linear(width, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.embed_dim = embed_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = padding_mask(tokens, self.pad_id)
        if mask is None:
            x = self.embed(tokens).mean(dim=1)  # [B, T, W] -> [B, W]
        else:  # the mean over real tokens only
            weights = mask.to(self.embed.weight.dtype)[..., None]  # [B, T, 1]
            x = (self.embed(tokens) * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return F.normalize(self.norm(self.proj(x)), dim=-1)  # [B, D]


class AttentionTextEncoder(nn.Module):
    """Transformer text encoder: token + learned positional embeddings, `depth` pre-norm
    self-attention blocks (torch's nn.TransformerEncoderLayer), then the [CLS] output (position 0)
    -> final LayerNorm -> linear -> LayerNorm -> L2. Unlike the mean pool it sees word order."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        width: int = 64,
        depth: int = 1,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        max_len: int = 4,
        pad_id: int | None = None,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        check_transformer_sizes("text_encoder", width, depth, heads, mlp_ratio, dropout)
        if max_len < 1:
            raise ValueError(f"text_encoder.max_len must be >= 1, got {max_len}")
        self.embed = nn.Embedding(vocab_size, width)
        # Small embeddings (GPT-2's std 0.02, not nn.Embedding's 1): the [CLS] residual then starts
        # near 0 and its output is set by what attention reads from the words. With std 1 the
        # constant [CLS] embedding dominates and every caption starts at cosine ~0.97 to every other.
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        self.blocks = transformer_blocks(width, depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim)
        self.out_norm = nn.LayerNorm(embed_dim)
        self.embed_dim = embed_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.pos_embed.shape[1]:
            raise ValueError(f"captions of {length} tokens exceed text_encoder.max_len ({self.pos_embed.shape[1]})")
        x = self.embed(tokens) + self.pos_embed[:, :length]  # [B, T, W]
        mask = padding_mask(tokens, self.pad_id)
        ignored = None if mask is None else ~mask  # [B, T]: True = padding no token attends to
        x = self.norm(self.blocks(x, src_key_padding_mask=ignored))[:, 0]  # [B, W], the [CLS] output
        return F.normalize(self.out_norm(self.proj(x)), dim=-1)  # [B, D]
