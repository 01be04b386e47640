"""The index of `data=coco`: COCO's captions_*.json, or a Karpathy split file of COCO or Flickr30k
(nanovlm.data.coco has the layouts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nanovlm.data.index.samples import BadData, Pairs, Rejects, checked_files

SPLITS = ("coco", "karpathy")
KARPATHY_TRAIN = ("train", "restval")


def read(
    reject: Rejects,
    root: str,
    train: str,
    val: str | None = None,
    split: str = "coco",
    image_dir: str | None = None,
) -> tuple[Pairs, Pairs | None]:
    """(train, val) as CocoDataModule's keys name them; val None: split train by image. Every image file checked."""
    if split not in SPLITS:
        raise BadData(f"data.split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not root or not train:
        raise BadData("data.root (the dataset's directory) and data.train (a captions json under it) must be set")
    folder = Path(root) / image_dir if image_dir else None
    if split == "karpathy":
        pairs, val_pairs = karpathy_pairs(Path(root) / train, Path(root), folder, reject)
        return checked_files(pairs, reject), checked_files(val_pairs, reject)
    files = [Path(root) / train] + ([Path(root) / val] if val else [])
    found = [coco_pairs(f, folder or images_of(Path(root), f), reject) for f in files]  # both indexes, then files
    return checked_files(found[0], reject), checked_files(found[1], reject) if val else None


def images_of(root: Path, annotations: Path) -> Path:
    """Where the images of a COCO captions file are without data.image_dir: captions_train2017.json ->
    root/train2017/ when that directory exists, else the root."""
    guess = root / annotations.stem.removeprefix("captions_")
    return guess if guess.is_dir() else root


def load_json(path: Path, key: str) -> dict[str, Any]:
    if not path.is_file():
        raise BadData(f"{key}: no such file {str(path)!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadData(f"{path}: not a JSON file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BadData(f"{path}: a captions file is an object with an 'images' list (COCO or Karpathy layout)")
    return data


def coco_pairs(path: Path, image_dir: Path, reject: Rejects) -> Pairs:
    """COCO's captions_*.json: images by id, annotations (several per image) pointing at them."""
    data = load_json(path, "data.train/data.val")
    files: dict[Any, str] = {}
    for n, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            reject(f"{path} images[{n}]: needs 'id' and 'file_name', got {str(image)[:80]}")
            continue
        files[image["id"]] = image["file_name"]
    pairs: Pairs = Pairs()
    index: dict[Any, int] = {}
    for n, note in enumerate(data.get("annotations") or []):
        where = f"{path} annotations[{n}]"
        if not isinstance(note, dict) or not isinstance(note.get("caption"), str):
            reject(f"{where}: needs 'image_id' and a 'caption' string, got {str(note)[:80]}")
            continue
        if note.get("image_id") not in files:
            reject(f"{where}: image_id {note.get('image_id')!r} is not in 'images'")
            continue
        if not note["caption"].strip():
            reject(f"{where}: an empty caption")
            continue
        pairs.add(image_dir / files[note["image_id"]], note["caption"], where, index)
    return pairs


def karpathy_pairs(path: Path, root: Path, image_dir: Path | None, reject: Rejects) -> tuple[Pairs, Pairs]:
    """dataset_coco.json / dataset_flickr30k.json: (train + restval, val); test is held out for evaluation."""
    data = load_json(path, "data.train")
    train, val = Pairs(), Pairs()
    index: dict[Any, int] = {}
    for n, image in enumerate(data["images"]):
        where = f"{path} images[{n}]"
        sentences = image.get("sentences") if isinstance(image, dict) else None
        if not isinstance(sentences, list) or not isinstance(image.get("filename"), str) or "split" not in image:
            reject(f"{where}: needs 'filename', 'split' and a 'sentences' list, got {str(image)[:80]}")
            continue
        split = train if image["split"] in KARPATHY_TRAIN else val if image["split"] == "val" else None
        if split is None:
            continue
        folder = image_dir if image_dir is not None else root / image.get("filepath", "")
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                reject(f"{where} sentences[{k}]: needs a non-empty 'raw' caption string")
                continue
            split.add(folder / image["filename"], raw, where, index)
    return train, val
