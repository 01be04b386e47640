"""What every disk format shares: the caption table, the split by image, bad data, and `DiskDataModule`.

A format module (nanovlm.data.files, nanovlm.data.coco) only names the reader of its index (nanovlm.data.index: image
files and the captions of each, checked); everything else is here, so csv and COCO serve the same batches
(nanovlm.data.datamodule's contract) and fail the same way. Webdataset shards (nanovlm.data.shards) are streamed
instead of decoded by index and share the caption table, the bad-data rules and the gallery.

- Captions: a subword tokenizer is trained on the training captions (nanovlm.data.subword); a caption's id is the
  id of its token sequence, so two texts the model cannot tell apart are the same caption (a true pair for the
  losses, one column of the gallery), never two that would tie forever.
- Several captions per image: each image is one item per epoch, with one of its captions drawn at each visit
  (seeded through torch's generator, per DataLoader worker), so an image is never two rows of a batch.
- Gallery (`data.gallery=val`, the default here): the val images and every caption of theirs, the Karpathy-split
  protocol: image->text is a hit when any of the image's captions is in the top k, text->image asks each caption once.
- Bad data (`data.on_bad_sample`): `fail` stops with one line naming the file and row, exit 2 (a BadData is a
  ConfigError); `skip` drops the sample and counts it (`data/skipped`). Every row and image file of an index is
  checked before training (nanovlm.data.index: train.py does it before torch and Lightning load).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from nanovlm.data.datamodule import Gallery
from nanovlm.data.images import ImageTransform, open_rgb
from nanovlm.data.index import Index, check_shared, load
from nanovlm.data.index.samples import BadData, Pairs, bad_sample
from nanovlm.data.pairs import CaptionTable, PairDataset, collate, gallery_of, split_by_image
from nanovlm.data.subword import SubwordTokenizer
from nanovlm.data.tokenizer import TextTokenizer, tokenizer_from_state
from nanovlm.run.config import ConfigError


def build_tokenizer(
    tokenizer: dict[str, Any], captions: Sequence[str], max_tokens: int, tokenizer_path: str | None
) -> TextTokenizer:
    """The subword tokenizer `tokenizer` ({kind, vocab_size}) describes, trained on `captions`; or the one saved at
    `tokenizer_path` (a run dir's tokenizer.json), so a new run can read text exactly as an earlier one did."""
    if tokenizer_path:
        import json

        path = Path(tokenizer_path)
        if not path.is_file():
            raise ConfigError(f"data.tokenizer_path: no such file {str(path)!r} (a run dir's tokenizer.json)")
        return tokenizer_from_state(json.loads(path.read_text()))
    unknown = set(tokenizer) - {"kind", "vocab_size"}
    if unknown:
        raise ConfigError(f"unknown key(s) data.tokenizer.{', '.join(sorted(unknown))}; allowed: kind, vocab_size")
    return SubwordTokenizer.train(captions, tokenizer.get("kind", "bpe"), tokenizer.get("vocab_size", 4096), max_tokens)


class LazyImages:
    """`datamodule.images` of a disk dataset: indexed like the worlds' [N, 3, S, S] tensor, decoded on access."""

    def __init__(self, datamodule: DiskDataModule, n: int) -> None:
        self.datamodule, self.n = datamodule, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> torch.Tensor:
        transform = self.datamodule.transform(train=False)
        if isinstance(index, int | torch.Tensor) and torch.as_tensor(index).ndim == 0:
            return transform(self.datamodule.open_image(int(index)))
        ids = range(self.n)[index] if isinstance(index, slice) else torch.as_tensor(index).flatten().tolist()
        return torch.stack([transform(self.datamodule.open_image(int(i))) for i in ids])


class DiskDataModule(L.LightningDataModule):
    """Pairs on disk served on the synthetic worlds' batch contract. A format fills in `read()`.

    What the rest of nanovlm asks of a datamodule is here too: `tokenizer`, `gallery()`, `repeats_captions`,
    `attributes()` (none: zero-shot on attributes and the attribute pictures skip), `negative_kinds` (none)."""

    negative_kinds: tuple[str, ...] = ()
    reader: Callable[..., tuple[Pairs, Pairs | None]]  # a format's: set with its `keys` (its own constructor args)
    keys: dict[str, Any]

    def __init__(
        self,
        batch_size: int = 64,
        image_size: int = 32,
        augment: bool = False,
        num_workers: int = 0,
        max_tokens: int = 32,
        tokenizer: dict[str, Any] | None = None,
        tokenizer_path: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        gallery: str = "val",
        on_bad_sample: str = "fail",
    ) -> None:
        super().__init__()
        check_shared(
            {"batch_size": batch_size, "image_size": image_size, "num_workers": num_workers,
             "val_fraction": val_fraction, "gallery": gallery, "on_bad_sample": on_bad_sample}
        )  # fmt: skip
        self.batch_size, self.image_size, self.augment, self.num_workers = batch_size, image_size, augment, num_workers
        self.gallery_choice, self.on_bad_sample, self.split_seed = gallery, on_bad_sample, split_seed
        self.skipped, self._logged_skipped = 0, 0
        found = self.read()
        for line in found.skipped:
            self.reject(line)
        train, val = found.train, found.val
        if val is None:
            train, val = split_by_image(train, val_fraction, split_seed)
        self.train_pairs, self.val_pairs = train, val
        for name, split in (("training", self.train_pairs), ("validation", self.val_pairs)):
            if len(split.images) < 2:
                raise BadData(f"the {name} split has {len(split.images)} usable image(s); it needs at least 2")
        train_captions = [c for cs in self.train_pairs.captions for c in cs]
        self.tokenizer: TextTokenizer = build_tokenizer(tokenizer or {}, train_captions, max_tokens, tokenizer_path)
        self.table = CaptionTable(self.tokenizer, self.train_pairs.captions + self.val_pairs.captions)
        self.tokens = self.table.tokens
        self.n_train = len(self.train_pairs.images)
        self._gallery: Gallery | None = None
        # What evaluation reads of any datamodule: image ids of each split, each caption id's text, each image's
        # (first) caption, and the images by id (decoded when asked for: a real dataset is not held in memory).
        n_images = self.n_train + len(self.val_pairs.images)
        self.train_idx, self.val_idx = torch.arange(self.n_train), torch.arange(self.n_train, n_images)
        self.captions = self.table.texts
        self.caption_of = torch.tensor([ids[0] for ids in self.table.ids], dtype=torch.long)
        self.images = LazyImages(self, n_images)

    def read(self) -> Index:
        """The format's index, checked: its `reader` (in nanovlm.data.index) called with its own `keys`, or what
        train.py's `preread` read with them. Its val None: split train by image (`data.val_fraction`)."""
        return load(self.reader, self.on_bad_sample, **self.keys)

    # --- Bad data ------------------------------------------------------------------------------------------------

    def reject(self, line: str) -> None:
        """A bad sample: stop (`on_bad_sample=fail`) or count it (`skip`), warning once."""
        if self.on_bad_sample == "fail":
            raise bad_sample(line)
        if self.skipped == 0:
            warnings.warn(f"skipping bad samples (data.on_bad_sample=skip), the first: {line}", stacklevel=2)
        self.skipped += 1

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """In the main process, before the batch reaches the model: a sample that failed in a worker fails the run
        here, with its one line, or is counted and logged as `data/skipped`."""
        for line in batch.pop("bad", []):
            self.reject(line)
        if self.skipped != self._logged_skipped and self.trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_metrics({"data/skipped": float(self.skipped)}, step=self.trainer.global_step)
            self._logged_skipped = self.skipped
        if "image" not in batch:
            raise BadData("a whole batch of bad samples: nothing left to train on")
        return batch

    # --- What the model and validation ask for ------------------------------------------------------------------

    @property
    def repeats_captions(self) -> bool:
        """Whether some caption is shown by several images: then a batch can hold several true pairs."""
        owners = [c for ids in self.table.ids for c in set(ids)]
        return len(set(owners)) < len(owners)

    def attributes(self) -> dict[str, tuple[tuple[str, ...], torch.Tensor]]:
        return {}

    def hard_negatives(self, index: int) -> dict[str, torch.Tensor]:
        return {}

    def open_image(self, index: int):
        """Image `index` (of train then val) as a PIL image."""
        pairs, i = (self.train_pairs, index) if index < self.n_train else (self.val_pairs, index - self.n_train)
        return open_rgb(pairs.images[i])

    def transform(self, train: bool) -> ImageTransform:
        return ImageTransform(self.image_size, augment=self.augment and train)

    def dataset(self, train: bool, draw: bool | None = None) -> PairDataset:
        pairs, ids, first = (
            (self.train_pairs, self.table.ids[: self.n_train], 0)
            if train
            else (self.val_pairs, self.table.ids[self.n_train :], self.n_train)
        )
        return PairDataset(pairs, ids, first, self.tokens, self.transform(train), train if draw is None else draw)

    def loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,  # workers live across epochs: starting them costs seconds
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.dataset(train=True), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.dataset(train=False), shuffle=False)

    def gallery(self) -> Gallery:
        """The val images (`data.gallery=val`) or every image (`world`), decoded once, and all their captions; on
        the training device."""
        if self._gallery is None:
            parts = [self.dataset(train=False)]
            if self.gallery_choice == "world":
                parts.insert(0, self.dataset(train=True, draw=False))
                parts[0].transform = self.transform(train=False)
            batches = [self.on_before_batch_transfer(b, 0) for b in self.loader(ConcatDataset(parts), shuffle=False)]
            images = torch.cat([b["image"] for b in batches])
            index = torch.cat([b["index"] for b in batches])
            ids = [self.table.ids[int(i)] for i in index]
            self._gallery = gallery_of(images, index, ids, self.tokens)
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            self._gallery = Gallery(*(getattr(self._gallery, f.name).to(device) for f in fields(Gallery)))
        return self._gallery
