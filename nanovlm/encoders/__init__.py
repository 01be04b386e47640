"""Encoders share one contract: a batch in, L2-normalised embeddings [B, D] out."""

from nanovlm.encoders.image import CNNEncoder
from nanovlm.encoders.text import MeanPoolTextEncoder

__all__ = ["CNNEncoder", "MeanPoolTextEncoder"]
