"""Two-object scenes: a world whose captions need word order, attribute binding and a spatial relation.

Each image holds two objects (colour x shape, the seed world's 9 x 3) in two cells of the 3x3 grid, and its
caption names both and how they stand, e.g. `red circle left-of blue square`, `green triangle above white
circle`. Captions are 5 words: <colour> <shape> <relation> <colour> <shape>.

- Relations are canonical: only `left-of` and `above` are written. "A right-of B" is the scene "B left-of A"
  and "A below B" is "B above A", so every scene has exactly one caption and every caption one meaning.
- The picture makes the relation unambiguous: `left-of` objects share a row, `above` objects share a column,
  so the other relation never holds at the same time. The two objects always differ (colour or shape), so the
  word-order swap is always a different caption.
- 27 objects x 26 others x 2 relations = 1,404 captions, each drawn at all 9 cell pairs of its relation
  (3 rows or columns x 3 ordered cell pairs) = 12,636 images, built in well under a second by adding two of the
  seed world's one-object images (the cells never overlap and the background is 0).

Hard negatives (ARO's order and binding tests, plus the relation), per caption (c1 s1) REL (c2 s2):
- order:    (c2 s2) REL (c1 s1)   the objects swapped: the same words, another scene;
- binding:  (c2 s1) REL (c1 s2)   the colours swapped between the objects. When c1 == c2 this is the truth
                                   itself, so that negative does not exist (masked: 108 of the 1,404 captions);
- relation: (c1 s1) REL' (c2 s2)  the other relation. (The *opposite* relation, "A right-of B", is by
                                   canonicalisation the order swap, so the other relation is the distinct test.)
Each negative is the caption of another scene of this world, never the truth.
"""

from __future__ import annotations

import functools
import itertools

import torch

from nanovlm.data.datamodule import WorldDataModule
from nanovlm.data.shapes import COLOURS, POSITIONS, SHAPES, build_tensors
from nanovlm.data.tokenizer import CLS, Tokenizer
from nanovlm.run.config import check_value

RELATIONS: tuple[str, ...] = ("left-of", "above")
OBJECTS: tuple[tuple[str, str], ...] = tuple(itertools.product(COLOURS, SHAPES))  # 27, colour-major
VOCAB: tuple[str, ...] = (CLS, *COLOURS, *SHAPES, *RELATIONS)
SEQ_LEN = 6  # [CLS] + colour shape relation colour shape
CAPTION_FORM = "<colour> <shape> <relation> <colour> <shape>"
NEGATIVE_KINDS: tuple[str, ...] = ("order", "binding", "relation")
# Grid cells (row-major 0..8) of the first- and second-named object. left-of: the same row, first column lower;
# above: the same column, first row lower. 9 placements per relation.
_ORDERED_PAIRS = ((0, 1), (0, 2), (1, 2))
PLACEMENTS: dict[str, tuple[tuple[int, int], ...]] = {
    "left-of": tuple((r * 3 + a, r * 3 + b) for r in range(3) for a, b in _ORDERED_PAIRS),
    "above": tuple((a * 3 + c, b * 3 + c) for c in range(3) for a, b in _ORDERED_PAIRS),
}
N_PLACEMENTS = 9
SPLITS: tuple[str, ...] = ("random", "placement", "combination", "order_holdout")

Scene = tuple[tuple[str, str], str, tuple[str, str]]  # (first object, relation, second object)


def all_scenes() -> list[Scene]:
    """Every caption's scene in a fixed order (its caption index): first object, relation, second object."""
    return [(a, rel, b) for a in OBJECTS for rel in RELATIONS for b in OBJECTS if a != b]


def caption(scene: Scene) -> str:
    (c1, s1), rel, (c2, s2) = scene
    return f"{c1} {s1} {rel} {c2} {s2}"


def negative_scenes(scene: Scene) -> dict[str, Scene | None]:
    """The scene of each hard negative of `scene`'s caption; None where the negative would be the truth."""
    (c1, s1), rel, (c2, s2) = scene
    other = RELATIONS[1 - RELATIONS.index(rel)]
    return {
        "order": ((c2, s2), rel, (c1, s1)),
        "binding": ((c2, s1), rel, (c1, s2)) if c1 != c2 else None,
        "relation": ((c1, s1), other, (c2, s2)),
    }


@functools.cache
def build_world() -> dict[str, torch.Tensor | list[str] | list[Scene]]:
    """Every image, caption and negative of the world, built once per process: every split and every datamodule
    of it (a test session's, a joblib worker's sweep jobs, evaluation beside training) reads the same tensors,
    which nothing writes to.

    images [N, 3, 32, 32] float in [0, 1] with N = 1,404 x 9, image i showing caption i // 9 at placement i % 9;
    tokens [C, 6]; negatives [C, 3, 6] (a missing negative holds the caption's own tokens as a placeholder);
    negative_valid [C, 3] bool.
    """
    scenes = all_scenes()
    index = {s: i for i, s in enumerate(scenes)}
    sprites, _, _ = build_tensors()  # [243, 3, 32, 32]: the seed world's one object at one cell, black elsewhere
    sprite = {(c, s, cell): (OBJECTS.index((c, s)) * len(POSITIONS) + cell) for c, s in OBJECTS for cell in range(9)}
    first, second = [], []
    for o1, rel, o2 in scenes:
        for cell1, cell2 in PLACEMENTS[rel]:
            first.append(sprite[(*o1, cell1)])
            second.append(sprite[(*o2, cell2)])
    images = sprites[torch.tensor(first)] + sprites[torch.tensor(second)]  # cells never overlap: a plain sum
    captions = [caption(s) for s in scenes]
    tokens = Tokenizer(VOCAB, SEQ_LEN, CAPTION_FORM).encode_batch(captions)
    negative_ids = torch.tensor(
        [[index[n] if n is not None else -1 for n in negative_scenes(s).values()] for s in scenes]
    )  # [C, 3]
    valid = negative_ids >= 0
    own = torch.arange(len(scenes))[:, None].expand_as(negative_ids)
    negatives = tokens[torch.where(valid, negative_ids, own)]  # [C, 3, 6]
    return {
        "images": images,
        "tokens": tokens,
        "captions": captions,
        "scenes": scenes,
        "negatives": negatives,
        "negative_valid": valid,
        "negative_ids": negative_ids,
    }


class ScenesDataModule(WorldDataModule):
    """The two-object world, split four ways (all splits are of images; the gallery is the whole world unless
    data.gallery=val):

    - `random`: a seeded `val_fraction` of the 12,636 images;
    - `placement`: per relation, a seeded round(9 x val_fraction) of its 9 cell pairs are val: those two cells
      are never seen together in training;
    - `combination`: a seeded `val_fraction` of the 351 unordered object pairs are val (both orders, both
      relations, every placement): each object is trained on, never with that partner;
    - `order_holdout` (the headline, ARO's mechanism): for every unordered object pair and relation, a seeded
      coin picks one word order for training; the other order's images are val. Training never needs word
      order to tell its captions apart unless hard negatives ask for it. Val is half the world by construction
      (val_fraction is unused).
    """

    vocab, seq_len, caption_form = VOCAB, SEQ_LEN, CAPTION_FORM
    negative_kinds = NEGATIVE_KINDS

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        split: str = "order_holdout",
        image_size: int = 32,
        gallery: str = "world",
    ) -> None:
        super().__init__(batch_size, image_size, gallery)
        check_value("data.val_fraction", val_fraction)  # the ranges live in nanovlm.run.config.RULES
        if split not in SPLITS:
            raise ValueError(f"data.split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split_name, self.val_fraction, self.split_seed = split, val_fraction, split_seed
        world = build_world()
        self.images, self.tokens, self.captions = self.sized(world["images"]), world["tokens"], world["captions"]
        self.scenes: list[Scene] = world["scenes"]
        self.caption_of = torch.arange(len(self.captions)).repeat_interleave(N_PLACEMENTS)  # [N]
        self.placement_of = torch.arange(N_PLACEMENTS).repeat(len(self.captions))  # [N]
        self.caption_extras = {
            "negatives": world["negatives"],
            "negative_valid": world["negative_valid"],
            "negative_id": world["negative_ids"],
        }
        self.negative_ids = world["negative_ids"]
        in_val = self._val_mask(split, val_fraction, torch.Generator().manual_seed(split_seed))
        self.train_idx, self.val_idx = torch.nonzero(~in_val).flatten(), torch.nonzero(in_val).flatten()

    def _val_mask(self, split: str, val_fraction: float, gen: torch.Generator) -> torch.Tensor:
        """[N] bool: which images are val."""
        n = len(self.images)
        if split == "random":
            mask = torch.zeros(n, dtype=torch.bool)
            mask[torch.randperm(n, generator=gen)[: round(n * val_fraction)]] = True
            return mask
        relation_of = torch.tensor([RELATIONS.index(rel) for _, rel, _ in self.scenes])[self.caption_of]  # [N]
        if split == "placement":
            k = max(1, round(N_PLACEMENTS * val_fraction))
            held = torch.zeros(len(RELATIONS), N_PLACEMENTS, dtype=torch.bool)
            for r in range(len(RELATIONS)):
                held[r, torch.randperm(N_PLACEMENTS, generator=gen)[:k]] = True
            return held[relation_of, self.placement_of]
        pairs = sorted({frozenset((a, b)) for a, _, b in self.scenes}, key=sorted)  # 351 unordered object pairs
        pair_of = {p: i for i, p in enumerate(pairs)}
        caption_pair = torch.tensor([pair_of[frozenset((a, b))] for a, _, b in self.scenes])  # [C]
        if split == "combination":
            held = torch.zeros(len(pairs), dtype=torch.bool)
            held[torch.randperm(len(pairs), generator=gen)[: round(len(pairs) * val_fraction)]] = True
            return held[caption_pair][self.caption_of]
        # order_holdout: per (pair, relation) a coin says whether its sorted order (first object earlier in
        # OBJECTS) is the val one; the other order is trained.
        coin = torch.rand(len(pairs), len(RELATIONS), generator=gen) < 0.5
        first_is_lower = torch.tensor([OBJECTS.index(a) < OBJECTS.index(b) for a, _, b in self.scenes])
        relation = torch.tensor([RELATIONS.index(rel) for _, rel, _ in self.scenes])
        caption_in_val = coin[caption_pair, relation] == first_is_lower  # [C]
        return caption_in_val[self.caption_of]

    def attributes(self) -> dict[str, tuple[tuple[str, ...], torch.Tensor]]:
        """Zero-shot attributes of a caption: its relation, and the colour and shape of the first-named object
        (the left or upper one). Each is a property of the picture, not of the word order alone."""
        colours, shapes = tuple(COLOURS), SHAPES
        return {
            "relation": (RELATIONS, torch.tensor([RELATIONS.index(r) for _, r, _ in self.scenes])),
            "first colour": (colours, torch.tensor([colours.index(a[0]) for a, _, _ in self.scenes])),
            "first shape": (shapes, torch.tensor([shapes.index(a[1]) for a, _, _ in self.scenes])),
        }

    def picture_items(self) -> torch.Tensor:
        """One image per caption (its first placement), aligned with the captions: what the pictures draw."""
        return torch.arange(len(self.captions)) * N_PLACEMENTS
