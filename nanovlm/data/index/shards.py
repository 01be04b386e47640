"""The index of `data=wds`: every shard's tar headers and captions, read without decoding an image
(nanovlm.data.shards streams the samples)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from braceexpand import braceexpand

from nanovlm.data.index.samples import BadData, Pairs, Rejects

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def read(reject: Rejects, train_shards: str, val_shards: str | None = None) -> tuple[Pairs, Pairs | None]:
    """(train, val) as ShardsDataModule's keys name them; val None without `val_shards`."""
    if not train_shards:
        raise BadData("data.train_shards must be a brace pattern of .tar shards, e.g. 'DIR/train-{000..007}.tar'")
    splits = [expand(train_shards, "data.train_shards")]
    if val_shards:
        splits.append(expand(val_shards, "data.val_shards"))
    found = []
    for shards in splits:
        pairs = Pairs()
        for shard in shards:
            scan(shard, pairs, reject)
        found.append(pairs)
    return found[0], found[1] if val_shards else None


def expand(pattern: str, key: str) -> list[str]:
    """'DIR/train-{000000..000007}.tar' -> the shard paths (brace expansion, as webdataset and img2dataset write
    it; several patterns may be joined with '::'), each of which must exist."""
    shards = [s for part in pattern.split("::") for s in braceexpand(part)]
    missing = [s for s in shards if not Path(s).is_file()]
    if not shards or missing:
        raise BadData(f"{key}: no shard file {missing[0] if missing else pattern!r} (a brace pattern of .tar files)")
    return shards


def split_key(name: str) -> tuple[str, str]:
    """A tar member's (sample key, extension) by webdataset's rule: the extension starts at the basename's first
    dot, so 'dir/000012.jpg' -> ('dir/000012', 'jpg')."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def scan(shard: str, pairs: Pairs, reject: Rejects) -> None:
    """Add the samples of one shard to `pairs` (image = (shard, key), its caption), reading only tar headers and
    captions. A sample without an image or a caption, and a shard cut short, go to `reject`."""
    size = Path(shard).stat().st_size
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    raise tarfile.ReadError(f"truncated inside {member.name}")
                key, extension = split_key(member.name)
                sample = samples.setdefault(key, {})
                if extension == "txt":
                    sample["caption"] = tar.extractfile(member).read().decode("utf-8", errors="replace")
                elif extension in IMAGE_EXTENSIONS:
                    sample["image"] = True
            end = tar.offset  # where the end-of-archive marker (two zero blocks) must begin
        with open(shard, "rb") as f:
            f.seek(end)
            rest = f.read()
        if len(rest) < 1024 or rest.strip(b"\0"):  # tarfile reads a cut-off archive as a shorter one
            last = f"after sample {next(reversed(samples))!r}" if samples else "in its first sample"
            raise tarfile.ReadError(f"truncated {last}")
    except (tarfile.TarError, OSError) as error:
        reject(f"{shard}: not a readable tar shard ({error})")
    index: dict[Any, int] = {}
    for key, sample in samples.items():
        where = f"{shard} sample {key!r}"
        if "image" not in sample or "caption" not in sample:
            missing = "image (.jpg/.png/.webp)" if "image" not in sample else "caption (.txt)"
            reject(f"{where}: no {missing}")
            continue
        if not sample["caption"].strip():
            reject(f"{where}: an empty caption")
            continue
        pairs.add((shard, key), sample["caption"], where, index)
