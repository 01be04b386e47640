"""`FusionSizes`: what every fusion design is sized by that its yaml cannot know.

The question tokenizer fixes the vocabulary, the question length, the PAD and EOS ids and the answer words' ids;
the image encoder fixes its pooled embedding and its token grid. The VQA task reads them once (`FusionSizes.of`)
and hands the one object to whichever design `fusion=` names; each design takes what it needs from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from nanovlm.data.tokenizer import TextTokenizer


@dataclass(frozen=True)
class FusionSizes:
    vocab_size: int
    answer_ids: tuple[int, ...]  # the vocabulary id of each answer word, in the order of the answer logits
    max_len: int  # question tokens, EOS included
    pad_id: int | None
    eos_id: int
    embed_dim: int  # the image encoder's pooled embedding
    token_dim: int  # ... and its token grid [num_tokens, token_dim]
    num_tokens: int

    @property
    def n_answers(self) -> int:
        return len(self.answer_ids)

    @classmethod
    def of(cls, tokenizer: TextTokenizer, image_encoder: nn.Module, answers: Sequence[str]) -> FusionSizes:
        ids = getattr(tokenizer, "ids", None)
        if ids is None or any(a not in ids for a in answers) or tokenizer.eos_id is None:
            raise ValueError("model=vqa needs data=vqa: its tokenizer has no ids for the answer words")
        return cls(
            vocab_size=tokenizer.vocab_size,
            answer_ids=tuple(ids[a] for a in answers),
            max_len=tokenizer.max_len,
            pad_id=tokenizer.pad_id,
            eos_id=tokenizer.eos_id,
            embed_dim=image_encoder.embed_dim,
            token_dim=image_encoder.token_dim,
            num_tokens=image_encoder.num_tokens,
        )
