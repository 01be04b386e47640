"""The coloured-shapes dataset: every (colour, shape, position) triple drawn once, captioned, tokenized.

The whole world is 9 colours x 3 shapes x 9 positions = 243 image/caption pairs, so the dataset is
generated in memory at start-up (a few milliseconds) and served as tensor slices: a model this small
is slowed down more by per-item collation and worker processes than by anything it computes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import lightning as L
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

from nanovlm.config import check_value

IMAGE_SIZE = 32
# RGB values picked to stay far apart at 32x32 on a black background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 170, 40),
    "blue": (40, 70, 240),
    "yellow": (245, 225, 30),
    "pink": (255, 130, 200),
    "brown": (130, 75, 25),
    "purple": (140, 40, 180),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Row-major 3x3 grid: index // 3 is the row, index % 3 the column.
POSITIONS: tuple[str, ...] = (
    "top-left", "top", "top-right",
    "left", "centre", "right",
    "bottom-left", "bottom", "bottom-right",
)  # fmt: skip
BACKGROUND = (0, 0, 0)
# The canvas is split into 3x3 cells of CELL pixels starting at BORDER; a shape fills its cell minus
# MARGIN on every side, so shapes never touch each other's cells or the image border.
BORDER, CELL, MARGIN = 1, 10, 1

CLS = "[CLS]"
VOCAB: tuple[str, ...] = (CLS, *COLOURS, *SHAPES, *POSITIONS)
SEQ_LEN = 4  # [CLS] + colour + shape + position


def cell_box(position: str) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), inclusive, that a shape at `position` is drawn in."""
    row, col = divmod(POSITIONS.index(position), 3)
    x0, y0 = BORDER + col * CELL + MARGIN, BORDER + row * CELL + MARGIN
    size = CELL - 2 * MARGIN
    return x0, y0, x0 + size - 1, y0 + size - 1


def render(colour: str, shape: str, position: str) -> Image.Image:
    """Draw one 32x32 RGB image: a `colour` `shape` inside the `position` cell, on black."""
    given = {"colour": (colour, COLOURS), "shape": (shape, SHAPES), "position": (position, POSITIONS)}
    for name, (value, allowed) in given.items():
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = cell_box(position)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:  # triangle: apex at the top centre, base along the bottom edge
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def caption(colour: str, shape: str, position: str) -> str:
    return f"{colour} {shape} {position}"


def all_triples() -> list[tuple[str, str, str]]:
    """Every (colour, shape, position) in a fixed order: the item index used everywhere."""
    return list(itertools.product(COLOURS, SHAPES, POSITIONS))


class Tokenizer:
    """Word-level tokenizer over a world's closed vocabulary: a caption of `seq_len - 1` words becomes
    [CLS] + one id per word. Each world passes its own vocabulary, length and caption form (for the error)."""

    def __init__(
        self, vocab: Sequence[str] = VOCAB, seq_len: int = SEQ_LEN, form: str = "<colour> <shape> <position>"
    ) -> None:
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


def build_tensors() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All 243 pairs as (images [N,3,32,32] float in [0,1], tokens [N,4] long, captions)."""
    triples = all_triples()
    pixels = torch.stack([torch.frombuffer(bytearray(render(*t).tobytes()), dtype=torch.uint8) for t in triples])
    images = pixels.view(len(triples), IMAGE_SIZE, IMAGE_SIZE, 3).permute(0, 3, 1, 2).float().div(255)
    captions = [caption(*t) for t in triples]
    return images.contiguous(), Tokenizer().encode_batch(captions), captions


SPLITS: tuple[str, ...] = ("random", "compositional")


def parse_holdout(holdout: Sequence[str]) -> set[tuple[str, str]]:
    """{(colour, shape)} from data.holdout's "<colour> <shape>" strings, checked against the vocabulary.

    Holding out every shape of a colour (or every colour of a shape) would leave that word unseen in
    training, which tests vocabulary coverage rather than composition, so it is refused.
    """
    if isinstance(holdout, str) or not holdout:
        raise ValueError(f'data.holdout must be a non-empty list of "<colour> <shape>" strings, got {holdout!r}')
    combos: set[tuple[str, str]] = set()
    for item in holdout:
        words = str(item).split()
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
            raise ValueError(
                f'data.holdout entries are "<colour> <shape>" with colour in {", ".join(COLOURS)} and shape in '
                f"{', '.join(SHAPES)}, got {item!r}"
            )
        combos.add((words[0], words[1]))
    for colour in COLOURS:
        if all((colour, shape) in combos for shape in SHAPES):
            raise ValueError(f"data.holdout holds out every shape of {colour!r}, so the word is never trained on")
    for shape in SHAPES:
        if all((colour, shape) in combos for colour in COLOURS):
            raise ValueError(f"data.holdout holds out every colour of {shape!r}, so the word is never trained on")
    return combos


class TensorSliceDataset(Dataset):
    """A view of some images of a world's in-memory tensors. `__getitems__` lets the DataLoader fetch a
    whole batch with a few indexing ops instead of collating items one by one.

    Image i's caption is `caption_of[i]` (a world may show one caption in several images); `caption_extras`
    are further per-caption tensors served beside it (a world's hard negatives), indexed the same way.
    """

    def __init__(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        indices: torch.Tensor,
        caption_of: torch.Tensor | None = None,
        caption_extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.images, self.tokens, self.indices = images, tokens, indices
        self.caption_of = torch.arange(len(images), device=images.device) if caption_of is None else caption_of
        self.caption_extras = caption_extras or {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        index = self.indices[positions]
        caption = self.caption_of[index]
        batch = {"image": self.images[index], "tokens": self.tokens[caption], "caption_id": caption, "index": index}
        batch.update({name: values[caption] for name, values in self.caption_extras.items()})
        return batch


ShapesDataset = TensorSliceDataset  # the seed world's name for it


def _keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """collate_fn for batches that `__getitems__` already built."""
    return batch


class WorldDataModule(L.LightningDataModule):
    """What every world shares: in-memory tensors served as slices, a train/val split of the images, the
    gallery validation ranks against, the world's tokenizer. A world subclass fills in, in its __init__:

    - `images` [N, 3, 32, 32] float in [0, 1]; `tokens` [C, L] the token ids of its C distinct captions, whose
      texts are `captions`; `caption_of` [N] the caption of each image (C = N and identity for shapes);
    - `train_idx`, `val_idx`: image indices;
    - optionally `caption_extras` ({"negatives": [C, K, L], "negative_valid": [C, K], "negative_id": [C, K] the
      caption each negative spells, -1 if none} for a world with hard negatives of the kinds `negative_kinds`),
      served in every batch beside the tokens.

    A batch is {"image", "tokens", "caption_id" (the caption of each image: equal ids are the same caption, so
    the losses count every such pair as true), "index" (the image), and the caption extras}.

    Class attributes `vocab`, `seq_len` and `caption_form` describe its captions; the model's text encoder takes
    its vocabulary size and caption length from them (training.build_model), so no code names a world.
    """

    vocab: tuple[str, ...] = ()
    seq_len: int = 0
    caption_form: str = ""
    negative_kinds: tuple[str, ...] = ()

    images: torch.Tensor
    tokens: torch.Tensor
    captions: list[str]
    caption_of: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        check_value("data.batch_size", batch_size)  # the ranges live in nanovlm.config.RULES
        self.batch_size = batch_size
        self.caption_extras: dict[str, torch.Tensor] = {}

    @classmethod
    def tokenizer(cls) -> Tokenizer:
        return Tokenizer(cls.vocab, cls.seq_len, cls.caption_form)

    def setup(self, stage: str) -> None:
        """Move the whole dataset to the training device once: batches are then slices of device tensors,
        with no per-step host-to-device copy."""
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.images, self.tokens, self.caption_of = (
                t.to(device) for t in (self.images, self.tokens, self.caption_of)
            )
            self.train_idx, self.val_idx = self.train_idx.to(device), self.val_idx.to(device)
            self.caption_extras = {k: v.to(device) for k, v in self.caption_extras.items()}

    def gallery(self) -> dict[str, torch.Tensor]:
        """What retrieval ranks against: every image and every distinct caption of the world (not only val's).

        "image" [N, ...], "tokens" [C, L], "caption" [N] (the true gallery caption of each image), "index" [N].
        """
        index = torch.arange(len(self.images), device=self.images.device)
        return {"image": self.images, "tokens": self.tokens, "caption": self.caption_of, "index": index}

    def attributes(self) -> dict[str, tuple[tuple[str, ...], torch.Tensor]]:
        """{attribute: (its values, the value id of each gallery caption [C])}: what zero-shot classification
        and the pictures colour by."""
        raise NotImplementedError

    def hard_negatives(self, index: int) -> dict[str, torch.Tensor]:
        """Image `index`'s generated negative captions as token ids, by kind; a kind that would equal the truth
        is left out. Empty for a world without negatives."""
        if not self.negative_kinds:
            return {}
        caption = int(self.caption_of[index])
        negatives, valid = self.caption_extras["negatives"][caption], self.caption_extras["negative_valid"][caption]
        return {kind: negatives[k] for k, kind in enumerate(self.negative_kinds) if valid[k]}

    def _dataset(self, indices: torch.Tensor) -> TensorSliceDataset:
        return TensorSliceDataset(self.images, self.tokens, indices, self.caption_of, self.caption_extras)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.train_idx)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, collate_fn=_keep_batch)

    def val_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.val_idx)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=_keep_batch)


class ShapesDataModule(WorldDataModule):
    """Generates all 243 pairs once, splits them, serves tensor batches.

    `split="random"`: a seeded random val_fraction of the pairs is val. `split="compositional"`: val is
    every pair of the `holdout` colour x shape combos (val_fraction and split_seed are unused).

    `gallery()` gives all 243 items: retrieval is ranked against the whole caption/image space,
    since a val-only gallery of 49 would make the task easier than it is.
    """

    vocab, seq_len, caption_form = VOCAB, SEQ_LEN, "<colour> <shape> <position>"

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        split: str = "random",
        holdout: Sequence[str] = ("yellow triangle", "blue circle"),
    ) -> None:
        super().__init__(batch_size)
        check_value("data.val_fraction", val_fraction)  # the ranges live in nanovlm.config.RULES
        if split not in SPLITS:
            raise ValueError(f"data.split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.images, self.tokens, self.captions = build_tensors()
        self.caption_of = torch.arange(len(self.captions))  # one image per caption
        if split == "compositional":
            self.train_idx, self.val_idx = self.compositional_split(holdout)
        else:
            self.train_idx, self.val_idx = self.split(len(self.captions), val_fraction, split_seed)

    @staticmethod
    def split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded random split of item indices into (train, val); val gets round(n * val_fraction)."""
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_val = round(n * val_fraction)
        return perm[n_val:].sort().values, perm[:n_val].sort().values

    @staticmethod
    def compositional_split(holdout: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) where val is every item of the held-out "<colour> <shape>" combos, all 9
        positions, and train is the rest: each held-out colour and shape is still seen in training,
        only never together, so val measures whether the model composes them."""
        combos = parse_holdout(holdout)
        in_val = torch.tensor([(c, s) in combos for c, s, _ in all_triples()])
        return torch.nonzero(~in_val).flatten(), torch.nonzero(in_val).flatten()

    def attributes(self) -> dict[str, tuple[tuple[str, ...], torch.Tensor]]:
        triples = all_triples()
        return {
            name: (tuple(values), torch.tensor([list(values).index(t[slot]) for t in triples]))
            for slot, (name, values) in enumerate((("colour", COLOURS), ("shape", SHAPES), ("position", POSITIONS)))
        }
