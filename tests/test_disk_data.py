"""data=csv, coco and wds: each format loads the batches the synthetic worlds give, splits by image, serves several
captions per image as the contract says, and builds the val gallery. Each test writes its own tiny dataset
(tests/disk_fixtures.py), whose pictures say which image they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nanovlm.data.coco import CocoDataModule
from nanovlm.data.files import FilesDataModule
from nanovlm.data.shards import ShardsDataModule
from tests.disk_fixtures import (
    captions_of,
    expected_pixels,
    write_coco,
    write_csv,
    write_jsonl,
    write_karpathy,
    write_shards,
)

SMALL = {"batch_size": 4, "tokenizer": {"kind": "bpe", "vocab_size": 200}, "max_tokens": 12}


def number_of(datamodule, index: int) -> int:
    """The fixture's image number behind a batch `index` (its file name, or its shard key)."""
    pairs = datamodule.train_pairs if index < datamodule.n_train else datamodule.val_pairs
    image = pairs.images[index - (0 if index < datamodule.n_train else datamodule.n_train)]
    return int(Path(image).stem if not isinstance(image, tuple) else image[1])


def epoch(datamodule, loader) -> list[dict[str, torch.Tensor]]:
    return [datamodule.on_before_batch_transfer(batch, 0) for batch in loader]


def check_batches(datamodule, batches: list[dict[str, torch.Tensor]], expected_images: set[int]) -> None:
    """Every image once, its pixels its colour, its tokens one of its own captions, caption ids by text."""
    seen = [number_of(datamodule, int(i)) for b in batches for i in b["index"]]
    assert sorted(seen) == sorted(expected_images)
    for batch in batches:
        assert batch["image"].dtype == torch.float32 and batch["tokens"].dtype == torch.long
        assert batch["image"].shape[1:] == (3, 32, 32) and batch["tokens"].shape[1] == datamodule.tokenizer.max_len
        for image, tokens, caption_id, index in zip(
            batch["image"], batch["tokens"], batch["caption_id"], batch["index"], strict=True
        ):
            n = number_of(datamodule, int(index))
            assert torch.allclose(image, expected_pixels(n), atol=1 / 255)
            assert datamodule.tokenizer.decode(tokens) in captions_of(n)
            assert torch.equal(datamodule.tokens[caption_id], tokens)


def test_csv_loads_every_image_once_with_one_of_its_captions(tmp_path: Path) -> None:
    train, val = write_csv(tmp_path / "a", 12), write_csv(tmp_path / "b", 6, name="val.csv")
    datamodule = FilesDataModule(str(train), str(val), **SMALL)
    assert (datamodule.n_train, len(datamodule.val_pairs.images)) == (12, 6)
    check_batches(datamodule, epoch(datamodule, datamodule.train_dataloader()), set(range(12)))
    check_batches(datamodule, epoch(datamodule, datamodule.val_dataloader()), set(range(6)))


@pytest.mark.parametrize("kind", ["tsv", "jsonl"])
def test_tsv_and_jsonl_with_other_keys(tmp_path: Path, kind: str) -> None:
    if kind == "tsv":
        path, keys = write_csv(tmp_path, 10, name="pairs.tsv", delimiter="\t"), {}
    else:
        path, keys = write_jsonl(tmp_path, 10), {"image_key": "filepath", "caption_key": "title"}
    datamodule = FilesDataModule(str(path), val_fraction=0.3, **keys, **SMALL)
    train = set(range(10)) - val_numbers(datamodule)
    check_batches(datamodule, epoch(datamodule, datamodule.train_dataloader()), train)


def val_numbers(datamodule) -> set[int]:
    return {number_of(datamodule, int(i)) for i in datamodule.val_idx}


def test_split_by_image_is_seeded_and_keeps_each_image_on_one_side(tmp_path: Path) -> None:
    path = write_csv(tmp_path, 20)  # two captions per image: a split by row would put some images on both sides
    splits = [val_numbers(FilesDataModule(str(path), val_fraction=0.25, split_seed=s, **SMALL)) for s in (0, 0, 1)]
    assert len(splits[0]) == 5 and splits[0] == splits[1] and splits[0] != splits[2]
    datamodule = FilesDataModule(str(path), val_fraction=0.25, **SMALL)
    train = {number_of(datamodule, i) for i in range(datamodule.n_train)}
    assert train.isdisjoint(splits[0]) and train | splits[0] == set(range(20))
    assert all(len(cs) == 2 for cs in datamodule.train_pairs.captions + datamodule.val_pairs.captions)


def test_several_captions_drawn_per_visit_and_caption_ids_by_text(tmp_path: Path) -> None:
    datamodule = FilesDataModule(str(write_csv(tmp_path, 12)), val_fraction=0.25, **SMALL)
    drawn: dict[int, set[int]] = {}
    torch.manual_seed(0)  # the draws come from torch's generator: seeded, whatever ran before
    for _ in range(16):
        for batch in epoch(datamodule, datamodule.train_dataloader()):
            assert len(set(batch["index"].tolist())) == len(batch["index"])  # an image never twice in a batch
            for index, caption in zip(batch["index"].tolist(), batch["caption_id"].tolist(), strict=True):
                drawn.setdefault(index, set()).add(caption)
    assert all(len(c) == 2 for c in drawn.values())  # both captions of every image came up in 16 epochs
    # "a red square" is the second caption of images 0, 6, 12, ...: one caption id for all of them.
    shared = {datamodule.table.ids[i][1] for i in range(len(datamodule.table.ids)) if number_of(datamodule, i) % 6 == 0}
    assert len(shared) == 1 and datamodule.repeats_captions


def test_gallery_is_the_val_split_with_every_caption_of_each_image(tmp_path: Path) -> None:
    datamodule = FilesDataModule(str(write_csv(tmp_path, 12)), val_fraction=0.5, **SMALL)
    gallery = datamodule.gallery()
    numbers = [number_of(datamodule, int(i)) for i in gallery.image_index]
    assert sorted(numbers) == sorted(val_numbers(datamodule)) and len(numbers) == 6
    texts = [datamodule.captions[int(c)] for c in gallery.caption_index]  # val has words training never saw
    assert torch.equal(gallery.tokens, datamodule.tokenizer.encode_batch(texts))
    expected = torch.tensor([[t in captions_of(n) for t in texts] for n in numbers])
    assert torch.equal(gallery.truth, expected) and bool((gallery.truth.sum(1) == 2).all())
    for row, n in enumerate(numbers):
        assert torch.allclose(gallery.images[row], expected_pixels(n), atol=1 / 255)
    assert len(set(texts)) == len(texts)  # distinct captions, one column each
    world = FilesDataModule(str(write_csv(tmp_path, 12)), val_fraction=0.5, gallery="world", **SMALL).gallery()
    assert len(world.image_index) == 12


def test_coco_layout_with_several_captions_per_image(tmp_path: Path) -> None:
    write_coco(tmp_path, 8, name="train2017"), write_coco(tmp_path, 4, first=8, name="val2017")
    datamodule = CocoDataModule(
        str(tmp_path), "annotations/captions_train2017.json", "annotations/captions_val2017.json", **SMALL
    )  # images found in train2017/ and val2017/ from the json names, as COCO lays them out
    assert datamodule.n_train == 8 and sorted(val_numbers(datamodule)) == [8, 9, 10, 11]
    check_batches(datamodule, epoch(datamodule, datamodule.train_dataloader()), set(range(8)))
    assert bool((datamodule.gallery().truth.sum(1) == 2).all())


def test_karpathy_split_file(tmp_path: Path) -> None:
    splits = ["train", "restval", "val", "test", "train", "val", "train", "test"]
    path = write_karpathy(tmp_path, splits)
    datamodule = CocoDataModule(str(tmp_path), path.name, split="karpathy", **SMALL)
    train = {number_of(datamodule, i) for i in range(datamodule.n_train)}
    assert train == {0, 1, 4, 6} and val_numbers(datamodule) == {2, 5}  # test images are left out
    check_batches(datamodule, epoch(datamodule, datamodule.train_dataloader()), train)


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_every_sample_once_per_epoch_whatever_the_workers(tmp_path: Path, workers: int) -> None:
    train = write_shards(tmp_path, "train", [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12, 13]])
    val = write_shards(tmp_path, "val", [[14, 15, 16], [17, 18]])
    datamodule = ShardsDataModule(train, val, num_workers=workers, shuffle_buffer=4, **SMALL)
    loader = datamodule.train_dataloader()
    first, second = epoch(datamodule, loader), epoch(datamodule, loader)
    check_batches(datamodule, first, set(range(14)))
    check_batches(datamodule, second, set(range(14)))
    order = [[int(i) for b in batches for i in b["index"]] for batches in (first, second)]
    assert order[0] != order[1]  # reshuffled each epoch
    assert len(loader) == len(first)  # the epoch length the trainer is told is the one it gets
    assert sorted(number_of(datamodule, int(i)) for i in datamodule.gallery().image_index) == list(range(14, 19))


def test_shards_split_by_process_disjoint_and_complete(tmp_path: Path, monkeypatch) -> None:
    """Under DDP each process streams its own shards (webdataset reads RANK/WORLD_SIZE as torchrun sets them)."""
    train = write_shards(tmp_path, "train", [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9, 10]])
    val = write_shards(tmp_path, "val", [[11, 12]])
    datamodule = ShardsDataModule(train, val, shuffle_buffer=0, **SMALL)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank)), monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({number_of(datamodule, int(i)) for b in datamodule.stream(train=True) for i in b["index"]})
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(11))


def test_shards_without_val_split_by_sample(tmp_path: Path) -> None:
    train = write_shards(tmp_path, "train", [list(range(10)), list(range(10, 20))])
    datamodule = ShardsDataModule(train, val_fraction=0.2, **SMALL)
    val = val_numbers(datamodule)
    assert len(val) == 4
    check_batches(datamodule, epoch(datamodule, datamodule.train_dataloader()), set(range(20)) - val)
    check_batches(datamodule, epoch(datamodule, datamodule.val_dataloader()), val)


def test_augment_crops_training_images_only(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    for n in range(6):  # left half black, right half white: a centre crop is half and half, random crops are not
        image = Image.new("RGB", (64, 64), (0, 0, 0))
        image.paste((255, 255, 255), (32, 0, 64, 64))
        image.save(tmp_path / "images" / f"{n}.png")
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"images/{n}.png,half {n}\n" for n in range(6)))
    datamodule = FilesDataModule(str(tmp_path / "pairs.csv"), val_fraction=0.5, augment=True, **SMALL)
    val = torch.cat([b["image"] for b in epoch(datamodule, datamodule.val_dataloader())])
    assert torch.allclose(val.mean(), torch.tensor(0.5), atol=0.01)  # centre crop, deterministic
    train = torch.cat([b["image"] for _ in range(3) for b in epoch(datamodule, datamodule.train_dataloader())])
    assert train.shape[1:] == (3, 32, 32) and len({round(float(m), 3) for m in train.mean((1, 2, 3))}) > 1
