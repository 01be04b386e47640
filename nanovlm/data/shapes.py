"""The seed world, coloured shapes: every (colour, shape, position) triple drawn once, captioned, tokenized.

The whole world is 9 colours x 3 shapes x 9 positions = 243 image/caption pairs, generated in memory at start-up
(a few milliseconds). Its colours, shapes, cells and `render` are also what the other worlds draw with
(nanovlm.data.scenes puts two of its objects in one image).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

from nanovlm.data.datamodule import TensorSliceDataset, WorldDataModule
from nanovlm.data.tokenizer import CLS, Tokenizer
from nanovlm.run.config import check_value

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

VOCAB: tuple[str, ...] = (CLS, *COLOURS, *SHAPES, *POSITIONS)
SEQ_LEN = 4  # [CLS] + colour + shape + position
CAPTION_FORM = "<colour> <shape> <position>"
# Zero-shot's classes and the pictures' colouring: each attribute of a caption, in caption order, and its values.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "shape": SHAPES, "position": POSITIONS}


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


def build_tensors() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All 243 pairs as (images [N,3,32,32] float in [0,1], tokens [N,4] long, captions)."""
    triples = all_triples()
    pixels = torch.stack([torch.frombuffer(bytearray(render(*t).tobytes()), dtype=torch.uint8) for t in triples])
    images = pixels.view(len(triples), IMAGE_SIZE, IMAGE_SIZE, 3).permute(0, 3, 1, 2).float().div(255)
    captions = [caption(*t) for t in triples]
    return images.contiguous(), Tokenizer(VOCAB, SEQ_LEN, CAPTION_FORM).encode_batch(captions), captions


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


ShapesDataset = TensorSliceDataset  # the seed world's name for it


class ShapesDataModule(WorldDataModule):
    """Generates all 243 pairs once, splits them, serves tensor batches.

    `split="random"`: a seeded random val_fraction of the pairs is val. `split="compositional"`: val is
    every pair of the `holdout` colour x shape combos (val_fraction and split_seed are unused).

    `gallery()` gives all 243 items by default: retrieval is ranked against the whole caption/image space,
    since a val-only gallery of 49 would make the task easier than it is (`data.gallery=val` asks for that).
    """

    vocab, seq_len, caption_form = VOCAB, SEQ_LEN, CAPTION_FORM

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        split: str = "random",
        holdout: Sequence[str] = ("yellow triangle", "blue circle"),
        image_size: int = IMAGE_SIZE,
        gallery: str = "world",
    ) -> None:
        super().__init__(batch_size, image_size, gallery)
        check_value("data.val_fraction", val_fraction)  # the ranges live in nanovlm.run.config.RULES
        if split not in SPLITS:
            raise ValueError(f"data.split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.val_fraction, self.split_seed = val_fraction, split_seed
        images, self.tokens, self.captions = build_tensors()
        self.images = self.sized(images)
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
            name: (values, torch.tensor([values.index(t[slot]) for t in triples]))
            for slot, (name, values) in enumerate(ATTRIBUTE_VALUES.items())
        }
