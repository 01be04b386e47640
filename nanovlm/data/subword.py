"""A subword tokenizer for free-form captions (data=csv, coco, wds), built on Hugging Face's `tokenizers`.

Real captions have an open vocabulary and any length, which the synthetic worlds' closed word tokenizer cannot
read. This one is trained on the training captions when the datamodule is built (a second or so for 100k captions):
BPE (`tokenizer.kind=bpe`, GPT-2/CLIP's algorithm over words) or WordPiece (`wordpiece`, BERT's), lower-cased and
accent-stripped, split on whitespace and punctuation first. Its ids: [PAD]=0, [CLS]=1 (BOS: the summary position
every text encoder reads), [SEP]=2 (EOS), [UNK]=3, then the learned pieces. A caption becomes
[CLS] pieces... [SEP] [PAD]... of `data.max_tokens` positions, truncated to fit (its [SEP] always kept).

`state()` is the whole trained tokenizer as JSON, saved in every checkpoint and in the run dir, so evaluation and
resume read text with exactly these ids (`nanovlm.data.tokenizer.tokenizer_from_state`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from nanovlm.data.tokenizer import register_tokenizer

PAD, BOS, EOS, UNK = "[PAD]", "[CLS]", "[SEP]", "[UNK]"
SPECIALS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3 in that order
KINDS = ("bpe", "wordpiece")
WORD_START = "▁"  # marks a word's first piece (SentencePiece's convention), so that decoding knows where spaces go


def _normaliser() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])


def bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """A BPE tokenizer learnt from `texts`: words and punctuation split apart, each marked with WORD_START.

    The mark is a character like any other, so the trainer's ids (sorted characters, then merges in order) and its
    tie-breaks are the same in every process: DDP processes, a resumed run and `nanovlm.evaluate` each train their
    own from the same captions and must get the same ids. (`tokenizers`' suffix and prefix options, `</w>` and
    `##`, number those pieces in hash-map order, which differs between processes, and with it the merges.)

    min_frequency=2: a piece seen once is more likely a typo than a word."""
    tokenizer = HFTokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = _normaliser()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Metaspace()])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIALS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def wordpiece(learnt: HFTokenizer) -> HFTokenizer:
    """BERT's WordPiece over the pieces BPE learnt (how `tokenizers`' own WordPieceTrainer learns them too): a
    word-initial piece keeps its text, a continuation gets "##", and every character is in both forms, so no word
    of known characters is unknown. Ids: the special tokens, then the pieces sorted."""
    pieces = {t for t in learnt.get_vocab() if t not in SPECIALS and t != WORD_START}
    characters = {c for t in pieces for c in t if c != WORD_START}
    words = {t[1:] if t.startswith(WORD_START) else f"##{t}" for t in pieces}
    words |= characters | {f"##{c}" for c in characters}
    vocab = {token: i for i, token in enumerate([*SPECIALS, *sorted(words)])}
    tokenizer = HFTokenizer(models.WordPiece(vocab, unk_token=UNK))
    tokenizer.normalizer = _normaliser()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


class SubwordTokenizer:
    """The TextTokenizer protocol (nanovlm.data.tokenizer) over a trained `tokenizers.Tokenizer`."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    form = None  # free-form: no slots

    def __init__(self, kind: str, backend: HFTokenizer, max_len: int) -> None:
        if kind not in KINDS:
            raise ValueError(f"tokenizer.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if max_len < 3:
            raise ValueError(f"data.max_tokens must be >= 3 ([CLS], one piece, [SEP]), got {max_len}")
        ids = [backend.token_to_id(t) for t in SPECIALS]
        if ids != [self.pad_id, self.bos_id, self.eos_id, self.unk_id]:
            raise ValueError(f"a subword tokenizer's special tokens {SPECIALS} must be ids 0-3, got {ids}")
        self.kind, self.backend, self.max_len = kind, backend, max_len

    @classmethod
    def train(cls, texts: Iterable[str], kind: str = "bpe", vocab_size: int = 4096, max_len: int = 32):
        """Learn about `vocab_size` pieces (specials included) from `texts`, the training captions. (WordPiece ends
        up with more: each character in both its word-initial and its continuing form.)"""
        if kind not in KINDS:
            raise ValueError(f"tokenizer.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if vocab_size < len(SPECIALS) + 1:
            raise ValueError(f"tokenizer.vocab_size must be > {len(SPECIALS)} (the special tokens), got {vocab_size}")
        learnt = bpe(texts, vocab_size)
        return cls(kind, learnt if kind == "bpe" else wordpiece(learnt), max_len)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def _frame(self, pieces: Sequence[int]) -> list[int]:
        """[CLS] + pieces (truncated) + [SEP], right-padded to max_len."""
        body = list(pieces[: self.max_len - 2])
        return [self.bos_id, *body, self.eos_id] + [self.pad_id] * (self.max_len - 2 - len(body))

    def encode(self, text: str) -> torch.Tensor:
        """[max_len] long."""
        return torch.tensor(self._frame(self.backend.encode(text, add_special_tokens=False).ids), dtype=torch.long)

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """[B, max_len] long (the backend encodes the batch in parallel threads)."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return torch.tensor([self._frame(e.ids) for e in encodings], dtype=torch.long).view(len(texts), self.max_len)

    def decode(self, ids: torch.Tensor) -> str:
        """The text of `ids`: [CLS] and [PAD] dropped, stopping at [SEP]. Normalised (lower case, no accents), and
        punctuation comes back space-separated, as the pre-tokeniser split it."""
        pieces: list[int] = []
        for i in (int(v) for v in ids):
            if i == self.eos_id:
                break
            if i not in (self.bos_id, self.pad_id):
                pieces.append(i)
        return self.backend.decode(pieces, skip_special_tokens=False)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "module": __name__, "max_len": self.max_len, "tokenizer": self.backend.to_str()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SubwordTokenizer:
        return cls(state["kind"], HFTokenizer.from_str(state["tokenizer"]), int(state["max_len"]))


for _kind in KINDS:
    register_tokenizer(_kind, SubwordTokenizer.from_state)
