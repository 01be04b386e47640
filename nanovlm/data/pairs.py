"""What a disk dataset's index (nanovlm.data.index) becomes for training: the split by image, the caption table, the
gallery, and the map-style Dataset that decodes its images in DataLoader workers (nanovlm.data.disk serves them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from nanovlm.data.datamodule import Gallery
from nanovlm.data.images import BadImage, open_rgb
from nanovlm.data.index.samples import Pairs
from nanovlm.data.tokenizer import TextTokenizer


def split_by_image(pairs: Pairs, val_fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    """A seeded val_fraction of the images (with all their captions) is val, so no image straddles the split."""
    order = torch.randperm(len(pairs.images), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(order) * val_fraction))
    return pairs.take(sorted(order[n_val:])), pairs.take(sorted(order[:n_val]))


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
