"""`data=csv`: image-caption pairs listed in a .csv, .tsv or .jsonl file, as open_clip's `--train-data` reads them.

    python train.py data=csv data.path=pairs.csv data.val_path=val.csv
    python train.py data=csv data.path=pairs.tsv data.image_key=filepath data.caption_key=title

One row per (image, caption): columns `image` and `caption` by default (`data.image_key`, `data.caption_key`);
image paths are relative to the file they are listed in (or absolute). An image listed on several rows is one image
with several captions. Without `data.val_path`, a seeded `data.val_fraction` of the images is val (split by image).
The format is chosen by the file's suffix. Every row and image file is checked before training starts
(nanovlm.data.index): a malformed row, a missing column, an empty caption or a missing or broken image stops the run
with one line naming the file and row.
"""

from __future__ import annotations

from typing import Any

from nanovlm.data.disk import DiskDataModule
from nanovlm.data.index.table import read as read_index


class FilesDataModule(DiskDataModule):
    """Pairs from a .csv/.tsv/.jsonl file (train) and optionally a second one (val), read by nanovlm.data.index.table.
    See the module docstring; the other keys are DiskDataModule's (batch_size, image_size, augment, num_workers,
    max_tokens, tokenizer, ...)."""

    reader = staticmethod(read_index)

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        image_key: str = "image",
        caption_key: str = "caption",
        **common: Any,
    ) -> None:
        self.keys = {"path": path, "val_path": val_path, "image_key": image_key, "caption_key": caption_key}
        super().__init__(**common)
