"""The transformer trunks that ViTEncoder, AttentionTextEncoder and the captioning TextDecoder share: torch's own
pre-norm blocks, and the size checks that name the config key."""

from __future__ import annotations

from torch import nn


def _block_args(width: int, heads: int, mlp_ratio: float, dropout: float) -> dict:
    """One block recipe for encoders and decoder: pre-norm (norm_first), batch first, GELU MLP."""
    return {
        "d_model": width,
        "nhead": heads,
        "dim_feedforward": round(width * mlp_ratio),
        "dropout": dropout,
        "activation": "gelu",
        "batch_first": True,
        "norm_first": True,
    }


def transformer_blocks(width: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> nn.TransformerEncoder:
    """`depth` pre-norm (norm_first) self-attention blocks from torch, batch first, GELU MLP."""
    block = nn.TransformerEncoderLayer(**_block_args(width, heads, mlp_ratio, dropout))
    # The nested-tensor fast path only applies to post-norm layers; turning it off silences a warning.
    return nn.TransformerEncoder(block, num_layers=depth, enable_nested_tensor=False)


def decoder_blocks(width: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> nn.TransformerDecoder:
    """`depth` pre-norm decoder blocks from torch (causal self-attention, cross-attention, GELU MLP), batch first,
    sized like `transformer_blocks`."""
    block = nn.TransformerDecoderLayer(**_block_args(width, heads, mlp_ratio, dropout))
    return nn.TransformerDecoder(block, num_layers=depth)


def check_transformer_sizes(group: str, width: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> None:
    """ValueErrors that name the config key, for the sizes every transformer encoder shares."""
    if width < 1 or depth < 1 or heads < 1:
        raise ValueError(f"{group}.width, {group}.depth, {group}.heads must be >= 1, got {width}, {depth}, {heads}")
    if width % heads:
        raise ValueError(f"{group}.heads ({heads}) must divide {group}.width ({width})")
    if mlp_ratio <= 0:
        raise ValueError(f"{group}.mlp_ratio must be > 0, got {mlp_ratio}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{group}.dropout must be in [0, 1), got {dropout}")
