"""The closed word-level tokenizer: every world's captions are a fixed number of words from a closed vocabulary.

A world builds one over its own vocabulary (`WorldDataModule.tokenizer()`); id 0 is `[CLS]`, which every caption
starts with and every text encoder reads its summary from. Captions have exactly `seq_len - 1` words, so there is
no padding, end token or unknown word: a word outside the vocabulary is an error naming the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CLS = "[CLS]"


class Tokenizer:
    """Word-level tokenizer over a world's closed vocabulary: a caption of `seq_len - 1` words becomes
    [CLS] + one id per word. Each world passes its own vocabulary, length and caption form (for the error)."""

    def __init__(self, vocab: Sequence[str], seq_len: int, form: str) -> None:
        self.vocab = tuple(vocab)
        self.seq_len, self.form = seq_len, form
        self.ids = {word: i for i, word in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        words = text.split()
        unknown = [w for w in words if w not in self.ids or w == CLS]
        if unknown:
            words_list = ", ".join(v for v in self.vocab if v != CLS)
            raise ValueError(f"unknown word(s) {unknown} in {text!r}; the vocabulary is: {words_list}")
        if len(words) != self.seq_len - 1:
            raise ValueError(f"a caption is '{self.form}' ({self.seq_len - 1} words), got {text!r}")
        return torch.tensor([self.ids[CLS], *(self.ids[w] for w in words)], dtype=torch.long)

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.encode(t) for t in texts])

    def decode(self, ids: torch.Tensor) -> str:
        return " ".join(self.vocab[int(i)] for i in ids if int(i) != self.ids[CLS])
