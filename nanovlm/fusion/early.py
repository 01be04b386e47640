"""fusion=early: one transformer over image and question tokens together, as a prefix-LM (PaliGemma; the
projector-into-LM recipe of LLaVA and nanoVLM).

The sequence is [image tokens | question tokens | answer tokens]. The image's token grid (and its pooled summary)
go through a small two-layer MLP projector into the transformer's width (LLaVA-1.5's); question words are embedded
by the transformer itself. The prefix (image + question) attends to itself in full, so every question word can look
at every image token and the image tokens can read the question; each answer position sees the prefix and the
answer positions before it, never after (`prefix_lm_mask`). PAD question tokens are masked as keys.

Why generation (prefix-LM) rather than a classifier head on a pooled output: the answer is a word of the same
vocabulary as the question, predicted by the LM head at the first answer position, whose input is EOS ("the
question has ended; answer"). Every answer here is one word, so generating it is one step and numerically the same
work as a head would do, but the layout is PaliGemma's and extends to answers of several words unchanged (teacher
forced through `sequence_logits`, with the same mask). Answers are read over the answer words only, like the
captioners' constrained decoding.
"""

from __future__ import annotations

import torch
from torch import nn

from nanovlm.data.tokenizer import padding_mask
from nanovlm.fusion.sizes import FusionSizes
from nanovlm.models.transformer import check_transformer_sizes, transformer_blocks


def prefix_lm_mask(prefix_len: int, total_len: int, device: torch.device | None = None) -> torch.Tensor:
    """[T, T] bool attention mask in torch's convention (True = may NOT attend): the first `prefix_len` positions
    attend to each other in full and to nothing after them; each later position attends to the whole prefix and
    causally to the positions after it up to itself."""
    allowed = torch.ones(total_len, total_len, dtype=torch.bool, device=device).tril()
    allowed[:, :prefix_len] = True
    return ~allowed


class EarlyFusion(nn.Module):
    """Projector + token embeddings + `depth` pre-norm self-attention blocks (torch's) + LM head."""

    uses_image = True

    def __init__(
        self,
        sizes: FusionSizes,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        max_answer_len: int = 1,
    ) -> None:
        super().__init__()
        check_transformer_sizes("fusion", width, depth, heads, mlp_ratio, dropout)
        self.pad_id, self.eos_id = sizes.pad_id, sizes.eos_id
        self.projector = nn.Sequential(nn.Linear(sizes.token_dim, width), nn.GELU(), nn.Linear(width, width))
        self.summary_projector = nn.Sequential(nn.Linear(sizes.embed_dim, width), nn.GELU(), nn.Linear(width, width))
        self.image_pos = nn.Parameter(torch.randn(1, 1 + sizes.num_tokens, width) * 0.02)
        self.embed = nn.Embedding(sizes.vocab_size, width)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.text_pos = nn.Parameter(torch.randn(1, sizes.max_len, width) * 0.02)
        # The answer's positions are its own, not the question's continued: however much padding a question
        # has, its answer starts at the same embedding.
        self.answer_pos = nn.Parameter(torch.randn(1, max_answer_len, width) * 0.02)
        self.blocks = transformer_blocks(width, depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, sizes.vocab_size)
        self.register_buffer("answer_ids", torch.tensor(sizes.answer_ids), persistent=False)

    def sequence_logits(
        self, image_emb: torch.Tensor, image_tokens: torch.Tensor, questions: torch.Tensor, answer_inputs: torch.Tensor
    ) -> torch.Tensor:
        """Vocabulary logits [B, A, V] at the answer positions: position a predicts answer word a, having seen the
        image, the question and answer_inputs[:, :a + 1] (EOS first, then the answer's earlier words)."""
        image = torch.cat([self.summary_projector(image_emb)[:, None], self.projector(image_tokens)], dim=1)
        image = image + self.image_pos  # [B, 1 + N, W]
        n_question, n_answer = questions.shape[1], answer_inputs.shape[1]
        if n_question > self.text_pos.shape[1] or n_answer > self.answer_pos.shape[1]:
            raise ValueError(
                f"{n_question} question and {n_answer} answer tokens exceed the model's "
                f"{self.text_pos.shape[1]} and {self.answer_pos.shape[1]}"
            )
        question = self.embed(questions) + self.text_pos[:, :n_question]  # [B, L, W]
        answer = self.embed(answer_inputs) + self.answer_pos[:, :n_answer]  # [B, A, W]
        x = torch.cat([image, question, answer], dim=1)  # [B, P + A, W], P = 1 + N + L
        prefix = x.shape[1] - n_answer
        mask = prefix_lm_mask(prefix, x.shape[1], x.device)
        real = padding_mask(questions, self.pad_id)  # [B, L] True = a real question token
        ignored = None
        if real is not None:
            keep = torch.ones(len(x), x.shape[1], dtype=torch.bool, device=x.device)
            keep[:, image.shape[1] : image.shape[1] + questions.shape[1]] = real
            ignored = ~keep  # [B, P + A] True = a PAD key no position attends to
        x = self.norm(self.blocks(x, mask=mask, src_key_padding_mask=ignored))
        return self.head(x[:, prefix:])  # [B, A, V]

    def forward(self, image_emb: torch.Tensor, image_tokens: torch.Tensor, questions: torch.Tensor) -> torch.Tensor:
        """[B, len(answer_ids)] logits of the one-word answer: the first answer position, whose input is EOS."""
        start = torch.full((len(questions), 1), self.eos_id, dtype=questions.dtype, device=questions.device)
        return self.sequence_logits(image_emb, image_tokens, questions, start)[:, 0, self.answer_ids]
