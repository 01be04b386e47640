"""Write a synthetic world, with its train/val split, in one of the disk formats nanovlm reads (data=csv|coco|wds).

    python -m nanovlm.export data=scenes format=wds out=exported/scenes
    python -m nanovlm.export data=shapes data.split=compositional format=csv out=exported/shapes

Images are lossless PNGs named by the world's image index (000042.png), so a batch read back from disk is the
in-memory batch pixel for pixel (at the world's 32 px) and the same images are val: the disk formats can then be
checked against the in-memory run they must reproduce. What is written, under `out`:

- csv: train.csv and val.csv (columns image, caption) and images/;
- coco: annotations/captions_train.json and captions_val.json (COCO's layout) and images/;
- wds: train-000000.tar ... and val-000000.tar ... of `shard_size` samples each (<index>.png + <index>.txt).

It prints the training command that reads the export back.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

FORMATS = ("csv", "coco", "wds")


def png_bytes(image: torch.Tensor) -> bytes:
    """[3, H, W] in [0, 1] -> PNG bytes; the worlds' pixels are whole multiples of 1/255, so this is exact."""
    pixels = image.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy(), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def split_items(world: Any) -> dict[str, list[tuple[int, str]]]:
    """{"train": [(image index, caption)], "val": [...]} in index order."""
    captions = [world.captions[int(c)] for c in world.caption_of]
    return {
        name: [(int(i), captions[int(i)]) for i in sorted(index.tolist())]
        for name, index in (("train", world.train_idx), ("val", world.val_idx))
    }


def write_images(world: Any, items: Sequence[tuple[int, str]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, _ in items:
        (folder / f"{i:06d}.png").write_bytes(png_bytes(world.images[i]))


def export_csv(world: Any, out: Path) -> str:
    for name, items in split_items(world).items():
        write_images(world, items, out / "images")
        with (out / f"{name}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            writer.writerows([(f"images/{i:06d}.png", caption) for i, caption in items])
    return f"data=csv data.path={out}/train.csv data.val_path={out}/val.csv"


def export_coco(world: Any, out: Path) -> str:
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for name, items in split_items(world).items():
        write_images(world, items, out / "images")
        annotations = {
            "images": [{"id": i, "file_name": f"{i:06d}.png"} for i, _ in items],
            "annotations": [{"id": n, "image_id": i, "caption": c} for n, (i, c) in enumerate(items)],
        }
        (out / "annotations" / f"captions_{name}.json").write_text(json.dumps(annotations))
    files = "data.train=annotations/captions_train.json data.val=annotations/captions_val.json"
    return f"data=coco data.root={out} {files} data.image_dir=images"


def export_wds(world: Any, out: Path, shard_size: int) -> str:
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    patterns = {}
    for name, items in split_items(world).items():
        shards = [items[k : k + shard_size] for k in range(0, len(items), shard_size)]
        for n, shard in enumerate(shards):
            with wds.TarWriter(str(out / f"{name}-{n:06d}.tar")) as sink:
                for i, caption in shard:
                    sink.write({"__key__": f"{i:06d}", "png": png_bytes(world.images[i]), "txt": caption})
        patterns[name] = f"{out}/{name}-{{{0:06d}..{len(shards) - 1:06d}}}.tar"
    # Hydra reads braces as a dict unless the value is quoted: the shell must pass the single quotes through.
    return f"data=wds \"data.train_shards='{patterns['train']}'\" \"data.val_shards='{patterns['val']}'\""


def export(world: Any, fmt: str, out: Path, shard_size: int = 1000) -> str:
    """Write `world` to `out` in `fmt`; returns the data overrides that train on it."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 samples, got {shard_size}")
    if fmt == "csv":
        return export_csv(world, out)
    if fmt == "coco":
        return export_coco(world, out)
    return export_wds(world, out, shard_size)
