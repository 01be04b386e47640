"""fusion=blind: the question alone, the language-prior baseline (CLEVR's "Q-type" / LSTM-only rows). It can do no
better than answering each question text with its most common training answer; fusion=blind matching that prior
shows the other designs' accuracy above it is read from the picture."""

from __future__ import annotations

import torch
from torch import nn

from nanovlm.fusion.late import answer_mlp
from nanovlm.fusion.sizes import FusionSizes


class BlindFusion(nn.Module):
    """MLP(question embedding) -> answer logits: LateFusion without the image."""

    uses_image = False

    def __init__(self, sizes: FusionSizes, text_encoder: nn.Module, hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.mlp = answer_mlp(text_encoder.embed_dim, sizes.n_answers, hidden, dropout)

    def forward(
        self, image_emb: torch.Tensor | None, image_tokens: torch.Tensor | None, questions: torch.Tensor
    ) -> torch.Tensor:
        """[B, A] answer logits from question tokens [B, L]; the image arguments are ignored (None from the task)."""
        return self.mlp(self.text_encoder(questions))
