"""The index of a disk dataset: its pairs, the split by image, image file checks, the caption table, and the
map-style Dataset that decodes its images in DataLoader workers (nanovlm.data.disk serves them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from nanovlm.data.datamodule import Gallery
from nanovlm.data.images import BadImage, open_rgb
from nanovlm.data.tokenizer import TextTokenizer
from nanovlm.run.config import ConfigError


class BadData(ConfigError):
    """A sample the run cannot use: the message names the file and the row or key, and what is wrong with it."""


@dataclass
class Pairs:
    """One split of an indexed dataset: image i is the file `images[i]` with captions `captions[i]`; `where[i]`
    says where it was read from ("pairs.csv row 7"), for the one line a bad sample gets."""

    images: list[Path] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)

    def add(self, image: Path, caption: str, where: str, index: dict[Path, int]) -> None:
        """Add a caption of `image` (a new image, or one already listed: its captions are grouped)."""
        if image not in index:
            index[image] = len(self.images)
            self.images.append(image), self.captions.append([]), self.where.append(where)
        self.captions[index[image]].append(caption)

    def take(self, keep: Sequence[int]) -> Pairs:
        return Pairs([self.images[i] for i in keep], [self.captions[i] for i in keep], [self.where[i] for i in keep])


def split_by_image(pairs: Pairs, val_fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    """A seeded val_fraction of the images (with all their captions) is val, so no image straddles the split."""
    order = torch.randperm(len(pairs.images), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(order) * val_fraction))
    return pairs.take(sorted(order[n_val:])), pairs.take(sorted(order[:n_val]))


def check_image_file(path: Path) -> str | None:
    """Why `path` is not a usable image, or None. Cheap enough for every file at start-up: the header is read
    (PIL's open) and a PNG or JPEG must end with its end marker, which catches a truncated download without
    decoding the pixels."""
    try:
        size = path.stat().st_size
    except OSError:
        return "missing (no such file)"
    if size == 0:
        return "an empty file"
    with path.open("rb") as f:
        head = f.read(8)
        f.seek(max(0, size - 12))
        tail = f.read()
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        return "a truncated PNG (no IEND chunk)"
    if head.startswith(b"\xff\xd8") and not tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "a truncated JPEG (no end-of-image marker)"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return None
    except (UnidentifiedImageError, OSError) as error:
        return f"not an image PIL can read ({type(error).__name__})"


class CaptionTable:
    """Every distinct caption of a dataset as token ids, and the caption ids of each image's captions.

    tokens [C, L]: caption id c's tokens; `ids[i]` the caption ids of image i (several for COCO)."""

    def __init__(self, tokenizer: TextTokenizer, captions: Sequence[Sequence[str]]) -> None:
        flat = [c for cs in captions for c in cs]
        encoded = tokenizer.encode_batch(flat) if flat else torch.zeros(0, tokenizer.max_len, dtype=torch.long)
        self.tokens, inverse = torch.unique(encoded, dim=0, return_inverse=True)  # [C, L], [sum of captions]
        counts = [len(cs) for cs in captions]
        self.ids: list[list[int]] = [chunk.tolist() for chunk in inverse.split(counts)] if flat else []
        self.lookup = {tuple(row): i for i, row in enumerate(self.tokens.tolist())}
        self.texts: list[str] = [""] * len(self.tokens)  # each caption id's text: the first that spells it
        for text, i in zip(reversed(flat), reversed(inverse.tolist()), strict=True):
            self.texts[i] = text

    def id_of(self, tokens: torch.Tensor) -> int:
        return self.lookup[tuple(tokens.tolist())]


def gallery_of(images: torch.Tensor, image_index: torch.Tensor, caption_ids: Sequence[Sequence[int]], tokens):
    """The Gallery of decoded `images` [N, 3, S, S] (batch ids `image_index`) whose captions are `caption_ids`."""
    columns = torch.tensor(sorted({c for cs in caption_ids for c in cs}), dtype=torch.long)
    position = {int(c): j for j, c in enumerate(columns)}
    truth = torch.zeros(len(images), len(columns), dtype=torch.bool)
    for row, cs in enumerate(caption_ids):
        truth[row, [position[c] for c in cs]] = True
    return Gallery(images, tokens[columns], truth, image_index, columns)


class PairDataset(Dataset):
    """Images `items` of an indexed dataset, decoded in the worker; one caption drawn per visit (`draw`), else
    the first. A file that fails to decode becomes {"bad": line} for the datamodule to fail on or skip."""

    def __init__(self, pairs: Pairs, ids: list[list[int]], first_index: int, tokens, transform, draw: bool) -> None:
        self.pairs, self.ids, self.first_index = pairs, ids, first_index
        self.tokens, self.transform, self.draw = tokens, transform, draw

    def __len__(self) -> int:
        return len(self.pairs.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            image = self.transform(open_rgb(self.pairs.images[i]))
        except BadImage as error:
            return {"bad": f"{self.pairs.where[i]}: image {str(self.pairs.images[i])!r} is {error}"}
        ids = self.ids[i]
        caption = ids[int(torch.randint(len(ids), ()))] if self.draw and len(ids) > 1 else ids[0]
        return {"image": image, "tokens": self.tokens[caption], "caption_id": caption, "index": self.first_index + i}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good samples; the bad ones' lines travel beside them as "bad" (checked in the main process)."""
    good = [s for s in samples if "bad" not in s]
    batch: dict[str, Any] = {"bad": [s["bad"] for s in samples if "bad" in s]}
    if good:
        batch["image"] = torch.stack([s["image"] for s in good])
        batch["tokens"] = torch.stack([s["tokens"] for s in good])
        batch["caption_id"] = torch.tensor([s["caption_id"] for s in good], dtype=torch.long)
        batch["index"] = torch.tensor([s["index"] for s in good], dtype=torch.long)
    return batch
