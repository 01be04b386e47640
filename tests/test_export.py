"""`python -m nanovlm.export`: a world written in each disk format reads back as the in-memory world, pixel for
pixel, caption for caption, with the same split."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nanovlm.data.shapes import ShapesDataModule
from nanovlm.export.__main__ import main
from nanovlm.export.world import export
from tests.conftest import REPO


def world_id(datamodule, index: int) -> int:
    """The world image a loaded batch row came from: the export names every file by it (000042.png)."""
    pairs = datamodule.train_pairs if index < datamodule.n_train else datamodule.val_pairs
    image = pairs.images[index if index < datamodule.n_train else index - datamodule.n_train]
    return int(image[1] if isinstance(image, tuple) else Path(image).stem)


def load_export(command: str):
    """The datamodule that `python train.py <command>` builds, from the overrides the export printed."""
    overrides = re.findall(r"data\.(\w+)='?([^'\s\"]+)'?", command)
    target = {"csv": "files.FilesDataModule", "coco": "coco.CocoDataModule", "wds": "shards.ShardsDataModule"}
    fmt = re.match(r"data=(\w+)", command).group(1)
    node = {"_target_": f"nanovlm.data.{target[fmt]}", **dict(overrides), "batch_size": 50}
    return instantiate(OmegaConf.create(node))


@pytest.mark.parametrize("fmt", ["csv", "coco", "wds"])
def test_an_exported_world_loads_back_pixel_for_pixel(tmp_path: Path, fmt: str) -> None:
    world = ShapesDataModule(split="compositional")
    datamodule = load_export(export(world, fmt, tmp_path, shard_size=64))
    assert sorted(world_id(datamodule, int(i)) for i in datamodule.val_idx) == world.val_idx.tolist()
    seen = []
    for batch in (datamodule.on_before_batch_transfer(b, 0) for b in datamodule.train_dataloader()):
        ids = [world_id(datamodule, int(i)) for i in batch["index"]]
        assert torch.equal(batch["image"], world.images[ids])  # exact: lossless PNG, no resampling at 32 px
        texts = [datamodule.captions[int(c)] for c in batch["caption_id"]]
        assert texts == [world.captions[int(world.caption_of[i])] for i in ids]
        seen += ids
    assert sorted(seen) == world.train_idx.tolist()
    gallery = datamodule.gallery()
    ids = [world_id(datamodule, int(i)) for i in gallery.image_index]
    assert torch.equal(gallery.images, world.images[ids]) and bool(gallery.truth.sum(1).eq(1).all())


def test_export_command_prints_how_to_train_and_refuses_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["data=shapes", "format=csv", f"out={tmp_path}"]) == 0
    assert f"python train.py data=csv data.path={tmp_path}/train.csv" in capsys.readouterr().out
    assert (tmp_path / "images" / "000242.png").is_file()
    for argv, line in [
        (["data=shapes", "format=zip", f"out={tmp_path}"], "error: format must be one of csv, coco, wds, got 'zip'"),
        (["data=nosuch", "format=csv", f"out={tmp_path}"], "error: unknown option data=nosuch; allowed data options"),
        (["data=shapes"], "error: usage: python -m nanovlm.export data=<world> format=csv|coco|wds out=DIR"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(line) and "\n" not in err, err


@pytest.mark.slow
def test_export_then_train_on_it_from_the_printed_command(tmp_path: Path) -> None:
    """The export's printed command, run as printed (its quoting through the shell included), trains."""
    run = subprocess.run(
        [sys.executable, "-m", "nanovlm.export", "data=shapes", "format=wds", f"out={tmp_path}/d", "shard_size=100"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    command = run.stdout.splitlines()[-1].strip().replace("python train.py", f"{sys.executable} {REPO / 'train.py'}")
    extra = "logger=none plots=none trainer.max_epochs=1 trainer.enable_progress_bar=false"
    result = subprocess.run(
        f"{command} {extra} hydra.run.dir={tmp_path}/run", shell=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "final val R@1" in result.stdout


def test_csv_and_coco_of_one_export_serve_identical_batches(tmp_path: Path) -> None:
    """The two indexed formats differ only in how the index is written: the same seed gives the same batches
    (and so the same training run); data=wds streams, so its order differs and only its contents match."""
    world = ShapesDataModule()
    loaded = [load_export(export(world, fmt, tmp_path / fmt)) for fmt in ("csv", "coco")]
    assert loaded[0].tokenizer.state() == loaded[1].tokenizer.state()
    epochs = []
    for datamodule in loaded:
        torch.manual_seed(7)
        epochs.append([datamodule.on_before_batch_transfer(b, 0) for b in datamodule.train_dataloader()])
    for a, b in zip(*epochs, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in ("image", "tokens", "caption_id", "index"))


def test_emoji_export_needs_its_font(tmp_path: Path, monkeypatch, capsys) -> None:
    from nanovlm.export import emoji

    monkeypatch.setattr(emoji, "FONT", tmp_path / "no-such-font.ttf")
    assert emoji.main([f"out={tmp_path}"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: no colour emoji font at {tmp_path}/no-such-font.ttf: apt-get install fonts-noto-color-emoji"
    )
