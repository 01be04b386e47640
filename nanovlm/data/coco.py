"""`data=coco`: MS COCO's caption annotations, or the Karpathy split files of COCO and Flickr30k.

    python train.py data=coco data.root=DIR data.train=annotations/captions_train2017.json \
        data.val=annotations/captions_val2017.json
    python train.py data=coco data.root=DIR data.split=karpathy data.train=dataset_flickr30k.json

- COCO layout (`data.split=coco`): `images: [{id, file_name}]` and `annotations: [{image_id, caption}]`, about five
  captions per image; files are looked up in `data.root/data.image_dir/` (COCO's own layout puts train2017/ and
  val2017/ under the root: set `data.image_dir=train2017`, or leave it empty and the json's directory name
  `captions_train2017.json` -> `train2017/` is tried).
- Karpathy split files (`data.split=karpathy`): one json whose `images: [{filename, filepath?, split,
  sentences: [{raw}]}]` carry their split; `train` (and `restval`) train, `val` validates (`data.val` unused; `test`
  is left for evaluation). Files are `data.root/[filepath/]filename`, or under `data.image_dir` when it is set.

Every image of the index is checked when the datamodule is built (nanovlm.data.disk).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nanovlm.data.disk import DiskDataModule
from nanovlm.data.pairs import BadData, Pairs

SPLITS = ("coco", "karpathy")
KARPATHY_TRAIN = ("train", "restval")


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


def coco_pairs(path: Path, image_dir: Path, check: Any) -> Pairs:
    """COCO's captions_*.json: images by id, annotations (several per image) pointing at them."""
    data = load_json(path, "data.train/data.val")
    files: dict[Any, str] = {}
    for n, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            check(f"{path} images[{n}]: needs 'id' and 'file_name', got {str(image)[:80]}")
            continue
        files[image["id"]] = image["file_name"]
    pairs, index = Pairs(), {}
    for n, note in enumerate(data.get("annotations") or []):
        where = f"{path} annotations[{n}]"
        if not isinstance(note, dict) or not isinstance(note.get("caption"), str):
            check(f"{where}: needs 'image_id' and a 'caption' string, got {str(note)[:80]}")
            continue
        if note.get("image_id") not in files:
            check(f"{where}: image_id {note.get('image_id')!r} is not in 'images'")
            continue
        if not note["caption"].strip():
            check(f"{where}: an empty caption")
            continue
        pairs.add(image_dir / files[note["image_id"]], note["caption"], where, index)
    return pairs


def karpathy_pairs(path: Path, root: Path, image_dir: Path | None, check: Any) -> tuple[Pairs, Pairs]:
    """dataset_coco.json / dataset_flickr30k.json: (train + restval, val)."""
    data = load_json(path, "data.train")
    train, val, index = Pairs(), Pairs(), {}
    for n, image in enumerate(data["images"]):
        where = f"{path} images[{n}]"
        sentences = image.get("sentences") if isinstance(image, dict) else None
        if not isinstance(sentences, list) or not isinstance(image.get("filename"), str) or "split" not in image:
            check(f"{where}: needs 'filename', 'split' and a 'sentences' list, got {str(image)[:80]}")
            continue
        split = train if image["split"] in KARPATHY_TRAIN else val if image["split"] == "val" else None
        if split is None:
            continue  # test: held out for evaluation
        folder = image_dir if image_dir is not None else root / image.get("filepath", "")
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                check(f"{where} sentences[{k}]: needs a non-empty 'raw' caption string")
                continue
            split.add(folder / image["filename"], raw, where, index)
    return train, val


class CocoDataModule(DiskDataModule):
    """COCO captions (or a Karpathy split file) under `root`; the other keys are DiskDataModule's."""

    def __init__(
        self,
        root: str,
        train: str,
        val: str | None = None,
        split: str = "coco",
        image_dir: str | None = None,
        **common: Any,
    ) -> None:
        if split not in SPLITS:
            raise BadData(f"data.split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not root or not train:
            raise BadData("data.root (the dataset's directory) and data.train (a captions json under it) must be set")
        self.root, self.split = Path(root), split
        self.train_file, self.val_file = self.root / train, self.root / val if val else None
        self.image_dir = self.root / image_dir if image_dir else None
        super().__init__(**common)

    def images_of(self, annotations: Path) -> Path:
        """Where the images of a COCO captions file are: data.image_dir, else captions_train2017.json ->
        root/train2017/ when that directory exists, else the root."""
        if self.image_dir is not None:
            return self.image_dir
        guess = self.root / annotations.stem.removeprefix("captions_")
        return guess if guess.is_dir() else self.root

    def read(self) -> tuple[Pairs, Pairs | None]:
        if self.split == "karpathy":
            return karpathy_pairs(self.train_file, self.root, self.image_dir, self.reject)
        train = coco_pairs(self.train_file, self.images_of(self.train_file), self.reject)
        val = coco_pairs(self.val_file, self.images_of(self.val_file), self.reject) if self.val_file else None
        return train, val
