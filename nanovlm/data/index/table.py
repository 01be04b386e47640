"""The index of `data=csv`: image-caption pairs listed in a .csv, .tsv or .jsonl file (nanovlm.data.files)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nanovlm.data.index.samples import BadData, Pairs, Rejects, checked_files

SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}


def read(
    reject: Rejects,
    path: str,
    val_path: str | None = None,
    image_key: str = "image",
    caption_key: str = "caption",
) -> tuple[Pairs, Pairs | None]:
    """(train, val) as FilesDataModule's keys name them; val None without `val_path`. Every image file checked."""
    if not path:
        raise BadData("data.path must name a .csv, .tsv or .jsonl file of image-caption pairs")
    train = read_rows(Path(path), image_key, caption_key, reject)
    val = read_rows(Path(val_path), image_key, caption_key, reject) if val_path else None  # both rows, then files
    return checked_files(train, reject), checked_files(val, reject) if val is not None else None


def read_rows(path: Path, image_key: str, caption_key: str, reject: Rejects) -> Pairs:
    """The pairs listed in `path`. Each malformed row goes to `reject` (which raises, or keeps its line so the row
    is skipped); a file that cannot be read at all always raises."""
    if path.suffix not in SUFFIXES:
        raise BadData(f"{path}: a pairs file is {', '.join(SUFFIXES)} (by its suffix), got {path.suffix or 'none'!r}")
    if not path.is_file():
        raise BadData(f"{path}: no such file")
    pairs: Pairs = Pairs()
    index: dict[Any, int] = {}
    with path.open(newline="", encoding="utf-8") as f:
        if SUFFIXES[path.suffix] is None:
            rows = _jsonl_rows(f, path, reject)
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
                reject(f"{where}: a malformed row (needs {image_key!r} and {caption_key!r}): {_short(row)}")
                continue
            if not caption.strip():
                reject(f"{where}: an empty caption for image {image!r}")
                continue
            pairs.add((path.parent / image).resolve(), caption, where, index)
    return pairs


def _jsonl_rows(f: Any, path: Path, reject: Rejects) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            reject(f"{path} row {n}: not JSON ({error.msg})")
            continue
        if not isinstance(row, dict):
            reject(f"{path} row {n}: a JSON object per line, got {type(row).__name__}")
            continue
        yield n, row


def _short(row: Any) -> str:
    text = str(row)
    return text if len(text) <= 80 else text[:77] + "..."
