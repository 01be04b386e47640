"""data=vqa: pictures of one to four objects and questions about them (nanovlm.data.questions), for the VQA task.

Each question has its own image (a scene drawn for the question's target answer), so a split by image is a split
by question. Two splits:
- `random`: train and val scenes use every colour x shape combo (val drawn with its own seed);
- `cogent` (CLEVR-CoGenT on our palette): the colours are split into two halves; in condition A each shape
  takes one half (circle and triangle the odd-numbered colours, square the even ones), in condition B the
  halves swap. Train is A; val is B (what `val/vqa_acc` reports) plus held-out A images (`val/vqa_acc_A`), so
  the A -> B drop is read off one run. The A and B combos are disjoint and together are all 27.

Questions vary in length, so they are tokenized by `QuestionTokenizer`: a closed word list with PAD and EOS.
A batch is {"image" [B, 3, S, S] in [0, 1], "tokens" [B, L] (BOS, words, EOS, PAD...), "answer" [B] (an index
into ANSWERS), "family" [B] (an index into FAMILIES), "condition" [B] (0: A / the random split, 1: B), "index" [B]}
(past the val questions for the curriculum's own, nanovlm.data.curriculum).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from nanovlm.data.curriculum import StagedSampler, first_combos
from nanovlm.data.questions import ANSWERS, FAMILIES, NUMBERS, RELATIONS, Combo, Question, Scene, generate
from nanovlm.data.shapes import COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, build_tensors
from nanovlm.data.tokenizer import CLS, register_tokenizer
from nanovlm.run.config import check_value

PAD, EOS = "[PAD]", "[EOS]"
QUESTION_WORDS: tuple[str, ...] = (
    "is", "there", "a", "the", "how", "many", "are", "what", "colour", "shape", "more", "than", "of", "thing",
    "things", "?", *(w for r in RELATIONS for w in r.split() if w != "of"), *COLOURS, *SHAPES,
    *(f"{s}s" for s in SHAPES),
)  # fmt: skip
VOCAB: tuple[str, ...] = tuple(dict.fromkeys((CLS, PAD, EOS, *QUESTION_WORDS, "yes", "no", *NUMBERS)))
MAX_LEN = 14  # BOS + the longest question (12 words: "what shape is the red thing left of the blue square ?") + EOS
SPLITS: tuple[str, ...] = ("random", "cogent")
ALL_COMBOS: tuple[Combo, ...] = tuple(itertools.product(COLOURS, SHAPES))


class QuestionTokenizer:
    """Closed word-level tokenizer with right padding: BOS, one id per word ("?" is a word), EOS, then PAD to
    `max_len`. An unknown word is an error naming the vocabulary (no UNK: the question world is closed)."""

    kind = "vqa_words"
    unk_id = None
    form = None

    def __init__(self, vocab: Sequence[str] = VOCAB, max_len: int = MAX_LEN) -> None:
        self.vocab, self.max_len = tuple(vocab), max_len
        self.ids = {word: i for i, word in enumerate(self.vocab)}
        self.bos_id, self.pad_id, self.eos_id = self.ids[CLS], self.ids[PAD], self.ids[EOS]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        words = text.replace("?", " ?").split()
        unknown = [w for w in words if w not in self.ids or w in (CLS, PAD, EOS)]
        if unknown:
            known = ", ".join(w for w in self.vocab if w not in (CLS, PAD, EOS))
            raise ValueError(f"question: unknown word(s) {unknown} in {text!r}; the vocabulary is: {known}")
        ids = [*[self.bos_id, *(self.ids[w] for w in words)][: self.max_len - 1], self.eos_id]
        return torch.tensor(ids + [self.pad_id] * (self.max_len - len(ids)), dtype=torch.long)

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.encode(t) for t in texts]) if texts else torch.zeros(0, self.max_len, dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        words = []
        for i in ids.tolist():
            if i == self.eos_id:
                break
            if i not in (self.bos_id, self.pad_id):
                words.append(self.vocab[i])
        return " ".join(words).replace(" ?", "?")

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "module": __name__, "vocab": list(self.vocab), "max_len": self.max_len}


register_tokenizer(QuestionTokenizer.kind, lambda s: QuestionTokenizer(s["vocab"], s["max_len"]))


def cogent_combos(condition: str) -> tuple[Combo, ...]:
    """The colour x shape combos of CoGenT condition A or B: each shape takes one half of the colours (the odd- or
    even-numbered ones), and B gives every shape the other half."""
    halves = (tuple(COLOURS)[0::2], tuple(COLOURS)[1::2])  # 5 and 4 colours
    first = {"circle": 0, "square": 1, "triangle": 0}
    swap = {"A": 0, "B": 1}[condition]
    return tuple((c, s) for c, s in ALL_COMBOS if c in halves[first[s] ^ swap])


def render_scenes(scenes: Sequence[Scene]) -> torch.Tensor:
    """[N, 3, 32, 32] uint8: each scene as the sum of the seed world's one-object images (cells never overlap and
    the background is 0, so a sum draws them all)."""
    sprites, _, _ = build_tensors()  # [243, 3, 32, 32] float, (colour, shape, position) order
    sprites = torch.cat(
        [sprites.mul(255).round().to(torch.uint8), torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)]
    )
    blank = len(sprites) - 1
    colours, n_pos = list(COLOURS), len(POSITIONS)
    index = torch.full((len(scenes), 4), blank, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for j, (c, s, cell) in enumerate(scene):
            index[i, j] = (colours.index(c) * len(SHAPES) + SHAPES.index(s)) * n_pos + cell
    return sprites[index].sum(dim=1, dtype=torch.uint8)


def distinct_within(values: Sequence[str], allowed: Sequence[str]) -> bool:
    """Whether `values` are distinct members of `allowed` (the families, spatial words a setting may name)."""
    return all(v in allowed for v in values) and len(set(values)) == len(values)


class VQADataModule(L.LightningDataModule):
    """The question world, generated in memory at start-up, served as tensor slices.
    `n_questions` x `val_fraction` are val (on CoGenT: that many of condition B and as many held-out A), the rest
    train; `split_seed` seeds the generation (train and val are drawn with seeds of their own); `families` asks
    only those question families (all six by default), to study one skill on its own; `relations` asks only those
    spatial words (all four by default) in the relation family and the query families' clauses.
    `curriculum_epochs` > 0 trains the first that many epochs on questions about scenes of `curriculum_combos` of
    the training combos only (a quarter as many as train, each asked four times an epoch; nanovlm.data.curriculum),
    then on the training questions; conf/data/vqa.yaml sets 3, a world constructed directly has none.
    `curriculum_relations` (null: `relations`) are the spatial words the curriculum's questions use, e.g. one
    word first, then all four."""

    def __init__(
        self,
        batch_size: int = 128,
        split: str = "random",
        n_questions: int = 27000,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        image_size: int = 32,
        families: list[str] | None = None,
        relations: list[str] | None = None,
        curriculum_epochs: int = 0,
        curriculum_combos: int = 4,
        curriculum_relations: list[str] | None = None,
    ) -> None:
        super().__init__()
        families = list(families or FAMILIES)
        if not families or not distinct_within(families, FAMILIES):
            raise ValueError(f"data.families must be distinct families of: {', '.join(FAMILIES)}; got {families}")
        if relations is not None and not relations:
            raise ValueError("data.relations must name at least one spatial word, or be null (all four)")
        relations = list(relations or RELATIONS)
        if not distinct_within(relations, RELATIONS):
            raise ValueError(f"data.relations must be distinct words of: {', '.join(RELATIONS)}; got {relations}")
        first_relations = list(curriculum_relations or relations)
        if not distinct_within(first_relations, relations):
            raise ValueError(
                f"data.curriculum_relations must be distinct words of data.relations ({', '.join(relations)}), or "
                f"null (the same); got {curriculum_relations}"
            )
        check_value("data.batch_size", batch_size)  # the ranges live in nanovlm.run.config.RULES
        check_value("data.val_fraction", val_fraction)
        n_val = round(n_questions * val_fraction)
        n_train = n_questions - n_val
        if split not in SPLITS:
            raise ValueError(f"data.split must be one of {', '.join(SPLITS)}, got {split!r}")
        if min(n_train, n_val) < len(families):
            raise ValueError(
                f"data.n_questions x data.val_fraction and the rest must each be >= {len(families)} (a question per "
                f"family), got {n_questions} x {val_fraction}"
            )
        if curriculum_epochs < 0:
            raise ValueError(f"data.curriculum_epochs must be >= 0 (0: no curriculum), got {curriculum_epochs}")
        if image_size < 8:
            raise ValueError(f"data.image_size must be >= 8 pixels, got {image_size}")
        self.batch_size, self.split, self.image_size = batch_size, split, image_size
        self.tokenizer = QuestionTokenizer()
        # Each part of the world: (questions, the combos its scenes use, its CoGenT condition, its spatial words).
        if split == "random":
            parts = [(n_train, ALL_COMBOS, 0, relations), (n_val, ALL_COMBOS, 0, relations)]
        else:  # train on A; validate on B and on held-out A images
            a, b = cogent_combos("A"), cogent_combos("B")
            parts = [(n_train, a, 0, relations), (n_val, b, 1, relations), (n_val, a, 0, relations)]
        n_split = sum(n for n, *_ in parts)
        self.curriculum_epochs = curriculum_epochs
        self.first_combos: tuple[Combo, ...] = ()
        if curriculum_epochs:  # generated last, so the train and val questions are the same with or without it
            self.first_combos = first_combos(parts[0][1], curriculum_combos, split_seed)
            parts.append((-(-n_train // 4), self.first_combos, 0, first_relations))  # a quarter: four combos need fewer
        items = [
            (*item, cond)
            for k, (n, combos, cond, spatial) in enumerate(parts)
            for item in generate(n, combos, split_seed * 10 + k, families, spatial)
        ]
        self.scenes: list[Scene] = [s for s, _, _, _ in items]
        self.questions: list[Question] = [q for _, q, _, _ in items]
        self.texts = [q.text for q in self.questions]
        self.answers = [a for _, _, a, _ in items]
        self.pixels = render_scenes(self.scenes)  # uint8: 24k float images would be 300 MB
        self.tokens = self.tokenizer.encode_batch(self.texts)
        self.answer = torch.tensor([ANSWERS.index(a) for a in self.answers])
        self.family = torch.tensor([FAMILIES.index(q.family) for q in self.questions])
        self.condition = torch.tensor([c for *_, c in items])
        self.train_idx = torch.arange(n_train)
        self.val_idx = torch.arange(n_train, n_split)
        self.first_idx = torch.arange(n_split, len(items))  # the curriculum's questions (empty without one)
        self.all_idx = torch.arange(len(items))

    @classmethod
    def world_tokenizer(cls) -> QuestionTokenizer:
        return QuestionTokenizer()

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] float in [0, 1] of the images `index`, at `image_size`."""
        images = self.pixels[index].float().div(255)
        if images.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return images

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "image": self.images(index),
            "tokens": self.tokens[index],
            "answer": self.answer[index],
            "family": self.family[index],
            "condition": self.condition[index],
            "index": index,
        }

    def setup(self, stage: str) -> None:
        """The whole world on the training device once: batches are slices of device tensors."""
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            tensors = ("pixels", "tokens", "answer", "family", "condition")
            for name in (*tensors, "train_idx", "val_idx", "first_idx", "all_idx"):
                setattr(self, name, getattr(self, name).to(device))

    def _loader(self, indices: torch.Tensor, shuffle: bool, sampler: StagedSampler | None = None) -> DataLoader:
        # Batches of indices; the batch dict is sliced from the device tensors in one go per batch.
        collate = lambda ix: self.batch(torch.stack(ix))  # noqa: E731
        return DataLoader(indices, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        if not self.curriculum_epochs:
            return self._loader(self.train_idx, shuffle=True)
        epoch = lambda: self.trainer.current_epoch if self.trainer is not None else 0  # noqa: E731
        max_epochs = self.trainer.max_epochs if self.trainer is not None else None
        if max_epochs is not None and 0 <= max_epochs <= self.curriculum_epochs:
            rank_zero_warn(
                f"data.curriculum_epochs={self.curriculum_epochs} >= trainer.max_epochs={max_epochs}: every epoch "
                f"trains on the curriculum's {len(self.first_combos)} combos only (data.curriculum_epochs=0: none)"
            )
        seed = torch.initial_seed()  # train()'s seed_everything(cfg.seed): the same on every rank
        sampler = StagedSampler(self.first_idx, self.train_idx, self.curriculum_epochs, epoch, seed)
        return self._loader(self.all_idx, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_idx, shuffle=False)
