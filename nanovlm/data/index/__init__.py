"""The index of a disk dataset, read and checked with the standard library only, so that bad data costs seconds.

A disk dataset's index (the pairs file, the captions json, the shards' headers) lists its samples; reading it and
checking every image file finds a missing column, a malformed row, a missing or truncated image or a cut-off shard.
`train.py` does that first (`preread`, right after Hydra's own checks), before torch and Lightning load (about 10 s
on a 2-core machine), and hands what it read to the datamodule (`load`), which therefore reads it once.

- `samples`: `Pairs`, `BadData`, `Rejects` (`data.on_bad_sample`) and the image-file check;
- `table` (data=csv), `coco` (data=coco), `shards` (data=wds): one `read(reject, <the format's own keys>)` each.

A new disk format adds its reader here and its `_target_` to FORMATS; its datamodule calls `load` with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nanovlm.data.index import coco, shards, table
from nanovlm.data.index.samples import ON_BAD_SAMPLE, BadData, Pairs, Rejects
from nanovlm.run.config import ConfigError, check_value

__all__ = ["FORMATS", "BadData", "Index", "Pairs", "check_shared", "load", "preread"]

GALLERIES = ("val", "world")

Reader = Callable[..., tuple[Pairs, Pairs | None]]

# A datamodule's `_target_` -> the reader of its index.
FORMATS: dict[str, Reader] = {
    "nanovlm.data.files.FilesDataModule": table.read,
    "nanovlm.data.coco.CocoDataModule": coco.read,
    "nanovlm.data.shards.ShardsDataModule": shards.read,
}


@dataclass
class Index:
    """What a reader found: the train pairs, the val pairs (None: split train by image), and the line of each bad
    sample skipped (`data.on_bad_sample=skip`; with `fail` the first one raised)."""

    train: Pairs
    val: Pairs | None
    skipped: list[str]


_handed: dict[str, Index] = {}  # preread's result, waiting for the datamodule of the same job


def _key(reader: Reader, on_bad_sample: str, keys: dict[str, Any]) -> str:
    bound = inspect.signature(reader).bind_partial(**keys)
    bound.apply_defaults()
    return repr((reader.__module__, on_bad_sample, sorted(bound.arguments.items())))


def read(reader: Reader, on_bad_sample: str, **keys: Any) -> Index:
    """Read and check an index now."""
    reject = Rejects(on_bad_sample)
    train, val = reader(reject, **keys)
    return Index(train, val, reject.lines)


def load(reader: Reader, on_bad_sample: str, **keys: Any) -> Index:
    """The index `reader` reads from `keys`: the one `preread` read in this job if its keys are these, else read now.
    Handed over once: a later datamodule (the next job of a sweep) reads again, so it sees the files as they are."""
    found = _handed.pop(_key(reader, on_bad_sample, keys), None)
    return found if found is not None else read(reader, on_bad_sample, **keys)


def check_shared(keys: dict[str, Any]) -> None:
    """The keys every disk format shares, those of `keys` present: checked before an index is read (by `preread`
    and by DiskDataModule), so that a typo does not wait for every image file to be checked."""
    for name in ("batch_size", "val_fraction"):
        if name in keys:
            check_value(f"data.{name}", keys[name])
    for name, allowed in (("gallery", GALLERIES), ("on_bad_sample", ON_BAD_SAMPLE)):
        if name in keys and keys[name] not in allowed:
            raise ConfigError(f"data.{name} must be one of {', '.join(allowed)}, got {keys[name]!r}")
    if isinstance(keys.get("image_size"), int) and keys["image_size"] < 8:
        raise ConfigError(f"data.image_size must be >= 8 pixels, got {keys['image_size']}")
    if isinstance(keys.get("num_workers"), int) and keys["num_workers"] < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {keys['num_workers']}")


def preread(data: DictConfig) -> None:
    """Read and check the index `data` (the run's data config) names, if it is a disk format: BadData at the first
    bad sample (`on_bad_sample=fail`). What is not a ConfigError here (a key left unset, a value of the wrong type,
    a brace pattern braceexpand refuses) is left to the config's validation and the datamodule, which say it in
    one line; so are the trainer's settings, which need torch and are checked after this."""
    _handed.clear()
    reader = FORMATS.get(str(data.get("_target_", "")))
    if reader is None or any(OmegaConf.is_missing(data, n) for n in data):
        return
    values = OmegaConf.to_container(data, resolve=True)
    names = [n for n in inspect.signature(reader).parameters if n != "reject"]
    keys = {n: values[n] for n in names if n in values}
    on_bad_sample = values.get("on_bad_sample", "fail")
    try:
        check_shared(values)
        found = read(reader, on_bad_sample, **keys)
    except ConfigError:
        raise
    except Exception:  # reported in one line by the checks that know the key
        return
    _handed[_key(reader, on_bad_sample, keys)] = found
