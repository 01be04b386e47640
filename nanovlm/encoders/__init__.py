"""Encoders share one contract: a batch in, L2-normalised embeddings [B, D] out."""

from nanovlm.encoders.image import CNNEncoder, ViTEncoder
from nanovlm.encoders.text import AttentionTextEncoder, MeanPoolTextEncoder

__all__ = ["AttentionTextEncoder", "CNNEncoder", "MeanPoolTextEncoder", "ViTEncoder"]
