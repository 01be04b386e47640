"""Contrastive losses over a batch of paired, L2-normalised embeddings.

A loss owns the parameters that define it (CLIP's temperature, SigLIP's scale and bias) so that
choosing a loss in the config is the whole change; the module just calls `loss(img, txt)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ClipLoss(nn.Module):
    """Symmetric InfoNCE: cross-entropy of image->text and text->image over logits = sim / tau.

    The temperature is stored as a log logit scale, log(1/tau), the form open_clip learns it in.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        self.register_buffer("logit_scale", torch.tensor(math.log(1.0 / temperature)))

    @property
    def temperature(self) -> torch.Tensor:
        return self.logit_scale.exp().reciprocal()

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        logits = self.logit_scale.exp() * image_emb @ text_emb.T  # [B, B]; row i = image i
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def extra_log(self) -> dict[str, torch.Tensor]:
        """Scalars worth a line on the dashboard."""
        return {"temperature": self.temperature}
