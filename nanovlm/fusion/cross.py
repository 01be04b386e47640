"""fusion=cross: the captioners' decoder answers. nanovlm.models.decoder.TextDecoder reads the question as its
prefix (causal self-attention) and cross-attends to the image's memory (its token grid and pooled embedding, as
in captioning); its next-token prediction at the question's EOS is the answer, read over the answer words only.

Right padding needs no mask here: the EOS position sees only the tokens before it (causality), never the padding
after it, so a question's answer does not depend on how much padding follows it."""

from __future__ import annotations

import torch
from torch import nn

from nanovlm.fusion.sizes import FusionSizes
from nanovlm.models.decoder import TextDecoder


def eos_positions(questions: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B] the position of each question's EOS (every encoded question has one: the tokenizer writes it)."""
    is_eos = questions == eos_id
    if not bool(is_eos.any(dim=1).all()):
        raise ValueError("every question must end with the tokenizer's EOS id (QuestionTokenizer writes it)")
    return is_eos.int().argmax(dim=1)


class CrossFusion(nn.Module):
    """TextDecoder(question | image memory) -> logits of the token after EOS, restricted to the answer words."""

    uses_image = True

    def __init__(
        self,
        sizes: FusionSizes,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        s = sizes
        self.decoder = TextDecoder(
            s.vocab_size, s.token_dim, s.num_tokens, s.embed_dim, width, depth, heads, mlp_ratio, dropout, s.max_len,
            s.pad_id,
        )  # fmt: skip
        self.eos_id = sizes.eos_id
        self.register_buffer("answer_ids", torch.tensor(sizes.answer_ids), persistent=False)

    def forward(self, image_emb: torch.Tensor, image_tokens: torch.Tensor, questions: torch.Tensor) -> torch.Tensor:
        memory = self.decoder.memory(image_emb, image_tokens)  # [B, 1 + N, W]
        logits = self.decoder(questions, memory)  # [B, L, V]: position t predicts token t + 1
        at_eos = logits[torch.arange(len(questions), device=questions.device), eos_positions(questions, self.eos_id)]
        return at_eos[:, self.answer_ids]  # [B, A]
