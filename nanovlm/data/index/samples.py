"""What a disk dataset's index lists, and the checks every listed sample gets before training: `Pairs` (image files
and the captions of each), `BadData` (the one line a bad sample gets), `Rejects` (`data.on_bad_sample`: stop at
the first, or skip and count) and the image-file check.

The standard library and PIL only: train.py reads an index here before torch and Lightning load (nanovlm.data.index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanovlm.run.config import ConfigError

ON_BAD_SAMPLE = ("fail", "skip")


class BadData(ConfigError):
    """A sample the run cannot use: the message names the file and the row or key, and what is wrong with it."""


@dataclass
class Pairs:
    """One split of an indexed dataset: image i is `images[i]` (a file, or a shard's (path, key)) with captions
    `captions[i]`; `where[i]` says where it was read from ("pairs.csv row 7"), for the one line a bad sample gets."""

    images: list[Any] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)

    def add(self, image: Any, caption: str, where: str, index: dict[Any, int]) -> None:
        """Add a caption of `image` (a new image, or one already listed: its captions are grouped)."""
        if image not in index:
            index[image] = len(self.images)
            self.images.append(image), self.captions.append([]), self.where.append(where)
        self.captions[index[image]].append(caption)

    def take(self, keep: Sequence[int]) -> Pairs:
        return Pairs([self.images[i] for i in keep], [self.captions[i] for i in keep], [self.where[i] for i in keep])


def bad_sample(line: str) -> BadData:
    """The error a bad sample stops the run with (`data.on_bad_sample=fail`)."""
    return BadData(f"{line} (data.on_bad_sample=skip skips such samples)")


class Rejects:
    """`data.on_bad_sample` applied to each bad sample's line: `fail` raises BadData at the first, `skip` keeps
    the lines (`lines`) and goes on, so the run can say how many it dropped and which came first. The value is
    checked before any reading (`check_shared`)."""

    def __init__(self, on_bad_sample: str) -> None:
        self.on_bad_sample = on_bad_sample
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        if self.on_bad_sample == "fail":
            raise bad_sample(line)
        self.lines.append(line)


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


def checked_files(pairs: Pairs, reject: Rejects) -> Pairs:
    """`pairs` without the images whose file is unusable: every one is checked (the readers have already dropped
    malformed rows and empty captions, naming each row)."""
    keep: list[int] = []
    for i, path in enumerate(pairs.images):
        problem = check_image_file(path)
        if problem is None:
            keep.append(i)
        else:
            reject(f"{pairs.where[i]}: image {str(path)!r} is {problem}")
    return pairs.take(keep)
