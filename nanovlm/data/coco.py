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

Every image of the index is checked before training starts (nanovlm.data.index).
"""

from __future__ import annotations

from typing import Any

from nanovlm.data.disk import DiskDataModule
from nanovlm.data.index.coco import read as read_index


class CocoDataModule(DiskDataModule):
    """COCO captions (or a Karpathy split file) under `root`, read by nanovlm.data.index.coco; the other keys are
    DiskDataModule's."""

    reader = staticmethod(read_index)

    def __init__(
        self,
        root: str,
        train: str,
        val: str | None = None,
        split: str = "coco",
        image_dir: str | None = None,
        **common: Any,
    ) -> None:
        self.keys = {"root": root, "train": train, "val": val, "split": split, "image_dir": image_dir}
        super().__init__(**common)
