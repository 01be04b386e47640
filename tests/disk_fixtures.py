"""Tiny datasets on disk for the disk-format tests, each built in a test's tmp dir from hand-chosen pictures.

Every image is a solid colour (its pixels say which image it is) with captions that name it, so a test can check
what was loaded without trusting the loader: image n is COLOURS[n % len(COLOURS)] at a size that varies with n.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch
from PIL import Image

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (200, 40, 200), (40, 200, 200)]
WORDS = ["red", "green", "blue", "yellow", "magenta", "cyan"]


def picture(n: int) -> Image.Image:
    """Image n: a solid colour, not square and not 32 px (the loader must resize and crop)."""
    return Image.new("RGB", (40 + 3 * (n % 4), 36 + 2 * (n % 3)), COLOURS[n % len(COLOURS)])


def captions_of(n: int) -> list[str]:
    """Two captions per image; the second is shared by every image of the same colour."""
    return [f"picture {n} is {WORDS[n % len(WORDS)]}", f"a {WORDS[n % len(WORDS)]} square"]


def expected_pixels(n: int, size: int = 32) -> torch.Tensor:
    """What image n must load as: its colour, everywhere."""
    return torch.tensor(COLOURS[n % len(COLOURS)], dtype=torch.float32).div(255)[:, None, None].expand(3, size, size)


def write_images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for n in range(count):
        name = f"{n:03d}.png"
        picture(n).save(folder / name)
        names.append(name)
    return names


def write_csv(root: Path, count: int = 12, name: str = "pairs.csv", delimiter: str = ",") -> Path:
    """root/name listing images/NNN.png with both captions each (two rows per image)."""
    names = write_images(root / "images", count)
    path = root / name
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["image", "caption"])
        for n, image in enumerate(names):
            writer.writerows([(f"images/{image}", c) for c in captions_of(n)])
    return path


def write_jsonl(root: Path, count: int = 12) -> Path:
    """The same pairs as JSON lines with open_clip-style keys `filepath` and `title`."""
    names = write_images(root / "images", count)
    path = root / "pairs.jsonl"
    rows = [{"filepath": f"images/{image}", "title": c} for n, image in enumerate(names) for c in captions_of(n)]
    lines = [json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_coco(root: Path, count: int = 12, first: int = 0, name: str = "train") -> Path:
    """root/annotations/captions_<name>.json in COCO's layout, images under root/<name>/ (COCO's own folders)."""
    names = write_images(root / name, first + count)[first:]
    annotations = {
        "images": [{"id": 100 + first + k, "file_name": image} for k, image in enumerate(names)],
        "annotations": [
            {"id": len(names) * j + k, "image_id": 100 + first + k, "caption": c}
            for k in range(len(names))
            for j, c in enumerate(captions_of(first + k))
        ],
    }
    path = root / "annotations" / f"captions_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(annotations))
    return path


def write_karpathy(root: Path, splits: list[str]) -> Path:
    """root/dataset_flickr30k.json: image n in split splits[n], files under root/images/."""
    names = write_images(root / "images", len(splits))
    images = [
        {"filename": image, "filepath": "images", "split": split, "sentences": [{"raw": c} for c in captions_of(n)]}
        for n, (image, split) in enumerate(zip(names, splits, strict=True))
    ]
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


def png(n: int) -> bytes:
    buffer = io.BytesIO()
    picture(n).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(root: Path, name: str, numbers: list[list[int]]) -> str:
    """root/<name>-00000k.tar, shard k holding images numbers[k] as <NNN>.png + <NNN>.txt (img2dataset's layout);
    returns the brace pattern."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    for k, shard in enumerate(numbers):
        with wds.TarWriter(str(root / f"{name}-{k:06d}.tar")) as sink:
            for n in shard:
                sink.write({"__key__": f"{n:03d}", "png": png(n), "txt": captions_of(n)[0]})
    return f"{root}/{name}-{{{0:06d}..{len(numbers) - 1:06d}}}.tar"
