"""Loader speed: images per second that data=csv, coco and wds deliver, beside the worlds' in-memory tensors.

    python -m nanovlm.bench --loaders                  # 2,000 scenes images, 32 and 224 px, 0/1/2 workers
    python -m nanovlm.bench --loaders --images 500     # quicker

A seeded sample of the scenes world is exported once in each format (lossless PNG, nanovlm.export) to a temporary
directory, then each loader's training DataLoader is read for one epoch after a warm-up epoch (worker start-up is
paid once per run, not per epoch: the workers are persistent), batch size 128, no model. The in-memory row is the
synthetic worlds' path (TensorSliceDataset slices). A second table says where a disk image's time goes in one
process: decoding the PNG, resizing/cropping it, and the rest (reading the index, collating, the DataLoader).

    python -m nanovlm.bench --shard-epoch              # a training epoch from shards against in memory

times what the loader rates mean for training: `train()` on the scenes world in memory and on its export as shards,
alternated, so that the machine's load hits both alike.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from nanovlm.bench.table import cell, ratio_cell, steady
from nanovlm.data.datamodule import TensorSliceDataset, _keep_batch
from nanovlm.data.images import ImageTransform, open_rgb
from nanovlm.export.world import export

SIZES = (32, 224)
WORKERS = (0, 1, 2)
BATCH = 128


def scenes_sample(n: int, seed: int = 0) -> Any:
    """n seeded images of the scenes world, with their captions, as an exportable world (all of them train)."""
    from nanovlm.data.scenes import ScenesDataModule

    world = ScenesDataModule()
    keep = torch.randperm(len(world.images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return SimpleNamespace(
        images=world.images[keep],
        captions=world.captions,
        caption_of=world.caption_of[keep],
        train_idx=torch.arange(n - n // 10),
        val_idx=torch.arange(n - n // 10, n),
    )


def images_per_second(loader: DataLoader, prepare: Callable[[Any], Any] = lambda b: b) -> float:
    """Images per second over the second pass through `loader` (the first warms up workers and caches)."""
    for _ in loader:
        pass
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(prepare(batch)["image"])
    return count / (time.perf_counter() - start)


def in_memory(world: Any, size: int) -> float:
    images = world.images if size == world.images.shape[-1] else F.interpolate(world.images, size=(size, size))
    tokens = torch.zeros(len(world.captions), 8, dtype=torch.long)
    dataset = TensorSliceDataset(images, tokens, world.train_idx, world.caption_of)
    return images_per_second(DataLoader(dataset, batch_size=BATCH, shuffle=True, collate_fn=_keep_batch))


def disk_datamodule(fmt: str, root: Path, size: int, workers: int) -> Any:
    from nanovlm.data.coco import CocoDataModule
    from nanovlm.data.files import FilesDataModule
    from nanovlm.data.shards import ShardsDataModule

    common = {"batch_size": BATCH, "image_size": size, "num_workers": workers, "tokenizer": {"vocab_size": 500}}
    if fmt == "csv":
        return FilesDataModule(str(root / "train.csv"), str(root / "val.csv"), **common)
    if fmt == "coco":
        files = {"train": "annotations/captions_train.json", "val": "annotations/captions_val.json"}
        return CocoDataModule(str(root), **files, image_dir="images", **common)
    shards = {s: "::".join(str(p) for p in sorted(root.glob(f"{s}-*.tar"))) for s in ("train", "val")}
    return ShardsDataModule(shards["train"], shards["val"], **common)


def where_the_time_goes(root: Path, size: int, n: int = 300) -> dict[str, float]:
    """Milliseconds per image, in this process: decoding the PNG file, resizing and cropping it."""
    files = sorted((root / "images").glob("*.png"))[:n]
    transform = ImageTransform(size)
    start = time.perf_counter()
    pictures = [open_rgb(f) for f in files]
    decoded = time.perf_counter()
    for picture in pictures:
        transform(picture)
    done = time.perf_counter()
    return {"decode_ms": 1e3 * (decoded - start) / len(files), "transform_ms": 1e3 * (done - decoded) / len(files)}


def run(images: int = 2000, sizes: Sequence[int] = SIZES, workers: Sequence[int] = WORKERS) -> str:
    """Measure every (format, size, workers) and return the Markdown tables."""
    torch.set_num_threads(1)  # the loaders' own work; the main process does not compete with its workers
    world = scenes_sample(images)
    n_train = len(world.train_idx)
    rows = ["| loader | " + " | ".join(f"{s} px, {w} workers" for s in sizes for w in workers) + " |"]
    rows.append("|---|" + "---|" * (len(sizes) * len(workers)))
    memory = {s: in_memory(world, s) for s in sizes}
    rows.append("| in-memory tensors | " + " | ".join(f"{memory[s]:,.0f}" for s in sizes for _ in workers) + " |")
    breakdown: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="nanovlm-loaders-") as tmp:
        for fmt in ("csv", "coco", "wds"):
            root = Path(tmp) / fmt
            export(world, fmt, root, shard_size=500)
            cells = []
            for size in sizes:
                for w in workers:
                    datamodule = disk_datamodule(fmt, root, size, w)
                    prepare = lambda b, dm=datamodule: dm.on_before_batch_transfer(b, 0)  # noqa: E731
                    cells.append(f"{images_per_second(datamodule.train_dataloader(), prepare):,.0f}")
            rows.append(f"| data={fmt} | " + " | ".join(cells) + " |")
        for size in sizes:
            breakdown[size] = where_the_time_goes(Path(tmp) / "csv", size)
    table = "\n".join(rows)
    lines = ["| image size | decode PNG (ms/image) | resize + crop (ms/image) |", "|---|---|---|"]
    lines += [f"| {s} px | {b['decode_ms']:.3f} | {b['transform_ms']:.3f} |" for s, b in breakdown.items()]
    header = f"images/s over one epoch of {n_train:,} training images (batch {BATCH}), after a warm-up epoch"
    return f"{header}\n\n{table}\n\nWhere a disk image's time goes (one process, 32 px PNGs):\n\n" + "\n".join(lines)


def shard_epoch(repeats: int = 3, epochs: int = 4, workers: Sequence[int] = (1, 2)) -> str:
    """Train epochs of the scenes world (6,318 training images) in memory and from its export as webdataset shards
    with each number of `workers`: in-process `train()` (figure (a)'s EpochTimer), `epochs` epochs without
    validation, the steady epoch (table.steady) of all but the last (which holds the final validation), runs
    alternated `repeats` times. Returns a Markdown table in the benchmark's cells (median, range, n)."""
    from nanovlm.bench.loops import QUIET, compose_cfg, lightning_run
    from nanovlm.data.scenes import ScenesDataModule

    no_val = f"trainer.check_val_every_n_epoch={epochs + 1}"
    common = ["text_encoder=mha", "seed=0", f"trainer.max_epochs={epochs}", no_val, "logger=none", "plots=none", *QUIET]
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="nanovlm-shard-epoch-") as tmp:
        shards = shlex.split(export(ScenesDataModule(), "wds", Path(tmp) / "wds"))
        runs = {"in memory (data=scenes)": ["data=scenes"]}
        shards.append("data.batch_size=128")  # the scenes world's
        runs |= {f"data=wds data.num_workers={w}": [*shards, f"data.num_workers={w}"] for w in workers}
        for r in range(repeats):
            for name, overrides in runs.items():
                out = lightning_run(compose_cfg(*overrides, *common, f"run_dir={tmp}/run{r}"))
                times.setdefault(name, []).append(steady(out["epoch_s"][:-1]))  # the last holds the final val
    memory = times["in memory (data=scenes)"]
    rows = ["| data | epoch | against in memory |", "|---|---|---|"]
    rows += [f"| {name} | {cell(values)} | {ratio_cell(values, memory)[0]} |" for name, values in times.items()]
    return "\n".join(rows)
