"""`data=csv`: image-caption pairs listed in a .csv, .tsv or .jsonl file, as open_clip's `--train-data` reads them.

    python train.py data=csv data.path=pairs.csv data.val_path=val.csv
    python train.py data=csv data.path=pairs.tsv data.image_key=filepath data.caption_key=title

One row per (image, caption): columns `image` and `caption` by default (`data.image_key`, `data.caption_key`);
image paths are relative to the file they are listed in (or absolute). An image listed on several rows is one image
with several captions. Without `data.val_path`, a seeded `data.val_fraction` of the images is val (split by image).
The format is chosen by the file's suffix. Every row and image file is checked when the datamodule is built
(nanovlm.data.disk): a malformed row, a missing column, an empty caption or a missing or broken image stops the run
with one line naming the file and row.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from nanovlm.data.disk import DiskDataModule
from nanovlm.data.pairs import BadData, Pairs

SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}


def read_rows(path: Path, image_key: str, caption_key: str, check: Any) -> Pairs:
    """The pairs listed in `path`. `check(line)` is called with the one line of each malformed row (it raises, or
    counts and returns so the row is skipped); a file that cannot be read at all always raises."""
    if path.suffix not in SUFFIXES:
        raise BadData(f"{path}: a pairs file is {', '.join(SUFFIXES)} (by its suffix), got {path.suffix or 'none'!r}")
    if not path.is_file():
        raise BadData(f"{path}: no such file")
    pairs, index = Pairs(), {}
    with path.open(newline="", encoding="utf-8") as f:
        if SUFFIXES[path.suffix] is None:
            rows = _jsonl_rows(f, path, check)
        else:
            reader = csv.DictReader(f, delimiter=SUFFIXES[path.suffix])
            missing = [k for k in (image_key, caption_key) if k not in (reader.fieldnames or [])]
            if missing:
                columns = ", ".join(reader.fieldnames or []) or "none"
                keys = "data.image_key / data.caption_key"
                raise BadData(f"{path}: no column {missing[0]!r} ({keys}); it has: {columns}")
            rows = ((n, row) for n, row in enumerate(reader, start=2))  # line 1 is the header
        for line, row in rows:
            where = f"{path} row {line}"
            image, caption = row.get(image_key), row.get(caption_key)
            if None in row or not isinstance(image, str) or not image or not isinstance(caption, str):
                check(f"{where}: a malformed row (needs {image_key!r} and {caption_key!r}): {_short(row)}")
                continue
            if not caption.strip():
                check(f"{where}: an empty caption for image {image!r}")
                continue
            pairs.add((path.parent / image).resolve(), caption, where, index)
    return pairs


def _jsonl_rows(f: Any, path: Path, check: Any):
    for n, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            check(f"{path} row {n}: not JSON ({error.msg})")
            continue
        if not isinstance(row, dict):
            check(f"{path} row {n}: a JSON object per line, got {type(row).__name__}")
            continue
        yield n, row


def _short(row: Any) -> str:
    text = str(row)
    return text if len(text) <= 80 else text[:77] + "..."


class FilesDataModule(DiskDataModule):
    """Pairs from a .csv/.tsv/.jsonl file (train) and optionally a second one (val). See the module docstring; the
    other keys are DiskDataModule's (batch_size, image_size, augment, num_workers, max_tokens, tokenizer, ...)."""

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        image_key: str = "image",
        caption_key: str = "caption",
        **common: Any,
    ) -> None:
        if not path:
            raise BadData("data.path must name a .csv, .tsv or .jsonl file of image-caption pairs")
        self.path, self.val_path = Path(path), Path(val_path) if val_path else None
        self.image_key, self.caption_key = image_key, caption_key
        super().__init__(**common)

    def read(self) -> tuple[Pairs, Pairs | None]:
        train = read_rows(self.path, self.image_key, self.caption_key, self.reject)
        val = read_rows(self.val_path, self.image_key, self.caption_key, self.reject) if self.val_path else None
        return train, val
