"""What turns a caption into token ids: the tokenizer protocol, its registry, and the closed word-level tokenizer.

Every datamodule has a `tokenizer` (see `TextTokenizer`); the model is sized from it (vocabulary, positions, the
padding id: `nanovlm.run.training.build_model`), and its `state()` travels inside every checkpoint and beside it in
the run dir, so evaluation and resume read text exactly as training did (`tokenizer_from_state`).

The synthetic worlds use `Tokenizer`, a closed word-level one: every caption is `seq_len - 1` words from the world's
vocabulary, so it needs no padding, no end token and no unknown word (those ids are None), and its ids are the
ones every earlier checkpoint was trained with ([CLS] = 0, then the world's words). Free-form captions use a subword
tokenizer (nanovlm.data.subword) with all three.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

CLS = "[CLS]"


@runtime_checkable
class TextTokenizer(Protocol):
    """What every tokenizer offers. Texts are encoded to `max_len` ids: BOS (the [CLS] a text encoder reads its
    summary from) first, then the text's ids, then EOS where there is one, then PAD to the end. The padding mask
    is `tokens != pad_id` (`padding_mask`): derived from the ids, never carried beside them, so the two cannot
    disagree."""

    kind: str  # its registry name: what `state()["kind"]` says
    vocab_size: int
    max_len: int  # positions of an encoded text, BOS (and EOS) included
    bos_id: int
    pad_id: int | None  # None: every text fills max_len exactly
    eos_id: int | None  # None: texts have a fixed length, nothing marks their end
    unk_id: int | None  # None: an unknown word is an error naming the vocabulary
    form: str | None  # a closed world's caption form ("<colour> <shape> <position>"): its slots; None if free-form

    def encode(self, text: str) -> torch.Tensor: ...
    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor: ...
    def decode(self, ids: torch.Tensor) -> str: ...
    def state(self) -> dict[str, Any]: ...  # JSON: "kind", "module" (where it is registered), what rebuilds it


_REGISTRY: dict[str, Callable[[dict[str, Any]], TextTokenizer]] = {}


def register_tokenizer(kind: str, from_state: Callable[[dict[str, Any]], TextTokenizer]) -> None:
    """Make `tokenizer_from_state` rebuild tokenizers whose state says `kind` with `from_state`."""
    _REGISTRY[kind] = from_state


# Kinds saved before states named their module (`state()["module"]`), and the module that registers each.
_SAVED_WITHOUT_MODULE = {
    "bpe": "nanovlm.data.subword", "wordpiece": "nanovlm.data.subword", "vqa_words": "nanovlm.data.vqa",
}  # fmt: skip


def tokenizer_from_state(state: dict[str, Any]) -> TextTokenizer:
    """The tokenizer a `state()` describes (what a checkpoint holds under "tokenizer"). A state names the module
    that registers its kind (`"module"`), imported only now: reading a checkpoint costs no import of the
    `tokenizers` package unless its tokenizer is a subword one, and a tokenizer of a user's own package is found
    the same way as ours."""
    kind = state.get("kind")
    module = state.get("module", _SAVED_WITHOUT_MODULE.get(str(kind)))
    if kind not in _REGISTRY and module:
        import importlib

        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"tokenizer kind {kind!r}: its module {module!r} cannot be imported ({err})") from None
    if kind not in _REGISTRY:
        raise ValueError(f"tokenizer kind {kind!r} is not one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind](state)


def padding_mask(tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor | None:
    """[B, L] bool, True where a token is real; None when there is no padding id (nothing to mask)."""
    return None if pad_id is None else tokens != pad_id


class Tokenizer:
    """Word-level tokenizer over a world's closed vocabulary: a caption of `seq_len - 1` words becomes
    [CLS] + one id per word. Each world passes its own vocabulary, length and caption form (for the error)."""

    kind = "words"
    pad_id = eos_id = unk_id = None

    def __init__(self, vocab: Sequence[str], seq_len: int, form: str) -> None:
        self.vocab = tuple(vocab)
        self.seq_len, self.form = seq_len, form
        self.ids = {word: i for i, word in enumerate(self.vocab)}
        self.bos_id = self.ids[CLS]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def max_len(self) -> int:
        return self.seq_len

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
        return " ".join(self.vocab[int(i)] for i in ids if int(i) != self.bos_id)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "module": __name__, "vocab": list(self.vocab), "seq_len": self.seq_len,
                "form": self.form}  # fmt: skip


register_tokenizer(Tokenizer.kind, lambda s: Tokenizer(s["vocab"], s["seq_len"], s["form"]))
