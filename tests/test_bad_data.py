"""Bad data never costs a run silently: each case is one line naming the file and row (or shard and key), exit 2,
no traceback; found in the index (rows, image files, shard headers) before torch loads, or for a picture in a
shard that does not decode, when it is streamed.
`data.on_bad_sample=skip` drops such samples and counts them instead (`data/skipped`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nanovlm.data import index
from nanovlm.data.index import BadData, samples
from nanovlm.run import cli
from nanovlm.run.config import ConfigError
from nanovlm.run.training import build
from tests.conftest import QUIET, REPO, user_env
from tests.disk_fixtures import captions_of, png, write_coco, write_csv, write_jsonl, write_shards

SMALL = ["data.batch_size=4", "data.tokenizer.vocab_size=200", "data.max_tokens=12"]


def csv_with(tmp_path: Path, edit: Callable[[Path], None]) -> list[str]:
    path = write_csv(tmp_path, 12)
    edit(tmp_path)
    return ["data=csv", f"data.path={path}", "data.val_fraction=0.25"]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def append_row(tmp_path: Path, row: str) -> None:
    with (tmp_path / "pairs.csv").open("a") as f:
        f.write(row + "\n")


# (what is wrong, how to make it, what the line must say) -- every line also names the file
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "missing image": (
        lambda t: csv_with(t, lambda r: (r / "images" / "003.png").unlink()),
        r"pairs.csv row 8: image '.*003.png' is missing \(no such file\)",
    ),
    "truncated png": (
        lambda t: csv_with(t, lambda r: truncate(r / "images" / "005.png")),
        r"pairs.csv row 12: image '.*005.png' is a truncated PNG",
    ),
    "not an image": (
        lambda t: csv_with(t, lambda r: (r / "images" / "002.png").write_text("hello")),
        r"pairs.csv row 6: image '.*002.png' is not an image PIL can read",
    ),
    "empty caption": (
        lambda t: csv_with(t, lambda r: append_row(r, "images/001.png,   ")),
        r"pairs.csv row 26: an empty caption for image 'images/001.png'",
    ),
    "malformed row": (
        lambda t: csv_with(t, lambda r: append_row(r, "images/001.png,a caption,an extra field")),
        r"pairs.csv row 26: a malformed row \(needs 'image' and 'caption'\)",
    ),
    "missing column": (
        lambda t: [*csv_with(t, lambda r: None), "data.caption_key=text"],
        r"pairs.csv: no column 'text' \(data.image_key / data.caption_key\); it has: image, caption",
    ),
    "bad json line": (
        lambda t: ["data=csv", f"data.path={bad_jsonl(t)}", "data.image_key=filepath", "data.caption_key=title"],
        r"pairs.jsonl row 25: not JSON",
    ),
    "coco unknown image id": (
        lambda t: ["data=coco", f"data.root={t}", f"data.train={coco_with_unknown_id(t)}"],
        r"captions_train.json annotations\[24\]: image_id 999 is not in 'images'",
    ),
    "truncated shard": (
        lambda t: ["data=wds", f"data.train_shards='{truncated_shards(t)}'"],
        r"train-000001.tar: not a readable tar shard \(truncated (inside|after) ",
    ),
    "shard sample without caption": (
        lambda t: ["data=wds", f"data.train_shards='{shards_with(t, {'003': {'png': png(3)}})}'"],
        r"train-000000.tar sample '003': no caption \(.txt\)",
    ),
}


def bad_jsonl(tmp_path: Path) -> Path:
    path = write_jsonl(tmp_path, 12)
    with path.open("a") as f:
        f.write('{"filepath": "images/001.png", "title": \n')
    return path


def coco_with_unknown_id(tmp_path: Path) -> str:
    path = write_coco(tmp_path, 12)
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 77, "image_id": 999, "caption": "nothing"})
    path.write_text(json.dumps(data))
    return str(path.relative_to(tmp_path))


def shards_with(tmp_path: Path, replace: dict[str, dict[str, bytes]]) -> str:
    """Two shards of images 0-9, with the samples of `replace` written as given instead."""
    import webdataset as wds

    pattern = write_shards(tmp_path, "train", [list(range(5)), list(range(5, 10))])
    with wds.TarWriter(str(tmp_path / "train-000000.tar")) as sink:
        for n in range(5):
            sink.write({"__key__": f"{n:03d}", **replace.get(f"{n:03d}", {"png": png(n), "txt": captions_of(n)[0]})})
    return pattern


def truncated_shards(tmp_path: Path) -> str:
    pattern = write_shards(tmp_path, "train", [list(range(5)), list(range(5, 10))])
    truncate(tmp_path / "train-000001.tar", 0.6)
    return pattern


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: c.replace(" ", "_"))
def test_bad_data_is_one_line_naming_the_file_before_any_run_dir(make_cfg, tmp_path: Path, case: str) -> None:
    make, line = CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    cfg = make_cfg(*make(data), *SMALL, f"run_dir={tmp_path / 'run'}")
    with pytest.raises(ConfigError) as caught:
        build(cfg)
    message = cli.one_line(caught.value)
    assert "\n" not in message and str(data) in message, message
    assert re.search(line, message), f"{message!r} does not match {line!r}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: c.replace(" ", "_"))
def test_train_py_finds_bad_data_before_torch(make_cfg, tmp_path: Path, case: str) -> None:
    """train.py's first read of the index (`preread`, before torch and Lightning load) stops at the same line."""
    make, line = CASES[case]
    (tmp_path / "data").mkdir()
    cfg = make_cfg(*make(tmp_path / "data"), *SMALL)
    with pytest.raises(BadData, match=line):
        index.preread(cfg.data)


@pytest.mark.slow
def test_train_py_stops_on_bad_data_without_importing_torch(tmp_path: Path) -> None:
    """train.py as a user runs it, in a Python where importing torch fails: bad data is still its one line."""
    args = csv_with(tmp_path, lambda r: (r / "images" / "003.png").unlink())
    code = (
        "import runpy, sys; sys.modules['torch'] = sys.modules['lightning'] = None; "
        f"sys.argv = ['train.py', *{args!r}, 'hydra.run.dir={tmp_path / 'run'}']; "
        f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=user_env(), capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.fullmatch(r"error: .*pairs.csv row 8: image '.*003.png' is missing .*\n", result.stderr), result.stderr


def test_values_preread_cannot_judge_are_left_to_the_one_line_checks(make_cfg, tmp_path: Path) -> None:
    """A brace pattern braceexpand refuses, a list for a path: preread returns, and building says it in one line.
    A shared key's typo is found before any image file is checked."""
    for bad in ("data.train_shards='/nowhere/{a'", "data.val_shards=[a,b]"):
        cfg = make_cfg("data=wds", f"data.train_shards='{write_shards(tmp_path, 'train', [list(range(4))])}'", bad)
        index.preread(cfg.data)
        with pytest.raises(ConfigError):
            build(cfg)
    cfg = make_cfg(*csv_with(tmp_path, lambda r: (r / "images" / "003.png").unlink()), "data.gallery=nope")
    with pytest.raises(ConfigError, match=r"data\.gallery must be one of val, world, got 'nope'"):
        index.preread(cfg.data)


def test_the_datamodule_takes_the_index_train_py_read(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """Read once: every image file is checked once across preread and the datamodule, and handed over once (the
    next job of a sweep reads the files again)."""
    checks: list[Path] = []
    real = samples.check_image_file
    monkeypatch.setattr(samples, "check_image_file", lambda path: checks.append(path) or real(path))
    cfg = make_cfg(*csv_with(tmp_path, lambda r: None), *SMALL)
    index.preread(cfg.data)
    assert len(checks) == 12
    build(cfg)
    assert len(checks) == 12
    build(cfg)
    assert len(checks) == 24


def test_skip_drops_bad_rows_and_counts_them(make_cfg, tmp_path: Path) -> None:
    def damage(root: Path) -> None:
        (root / "images" / "003.png").unlink()  # image 3 has two rows: one image skipped
        append_row(root, "images/001.png,")  # an empty caption: skipped, image 1 keeps its other two

    cfg = make_cfg(*csv_with(tmp_path, damage), *SMALL, "data.on_bad_sample=skip")
    first = r"skipping bad samples .* the first: .*pairs.csv row 26: an empty caption for image 'images/001.png'"
    with pytest.warns(UserWarning, match=first):
        _, datamodule, _ = build(cfg)
    assert datamodule.skipped == 2
    assert datamodule.n_train + len(datamodule.val_pairs.images) == 11

    logged: list[dict[str, float]] = []

    class Logger:
        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            logged.append(metrics)

    datamodule.trainer = type("T", (), {"loggers": [Logger()], "global_step": 0})()
    datamodule.on_before_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    assert logged == [{"data/skipped": 2.0}]


def test_a_bad_picture_in_a_shard_fails_when_streamed_or_is_skipped(tmp_path: Path) -> None:
    from nanovlm.data.shards import ShardsDataModule

    pattern = shards_with(tmp_path, {"002": {"png": b"garbage", "txt": b"a broken picture"}})
    options = {"batch_size": 4, "tokenizer": {"vocab_size": 100}, "val_fraction": 0.2, "split_seed": 3}
    failing = ShardsDataModule(pattern, **options)
    assert 2 not in {int(k) for _, k in failing.val_pairs.images}  # the seed keeps it in training
    with pytest.raises(BadData, match=r"train-000000.tar sample '002': its image is not an image PIL can read"):
        [failing.on_before_batch_transfer(b, 0) for b in failing.train_dataloader()]
    skipping = ShardsDataModule(pattern, on_bad_sample="skip", **options)
    with pytest.warns(UserWarning, match="sample '002'"):
        batches = [skipping.on_before_batch_transfer(b, 0) for b in skipping.train_dataloader()]
    assert sum(len(b["index"]) for b in batches) == skipping.n_train - 1 and skipping.skipped == 1


def run_train(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**user_env(), "WANDB_MODE": "offline"}
    command = [sys.executable, str(REPO / "train.py"), *QUIET, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    start = time.perf_counter()
    result = subprocess.run([*command, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return result, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing image", "truncated shard"], ids=lambda c: c.replace(" ", "_"))
def test_cli_bad_data_one_line_exit_2(tmp_path: Path, case: str) -> None:
    """As a user runs it: Hydra's start-up and the index's checks, before torch and Lightning load (about 1 s on a
    2-core machine; docs/data.md)."""
    make, line = CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    result, seconds = run_train(tmp_path, *make(data), *SMALL)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(line, lines[0]), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout, f"{seconds:.1f} s"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_bad_picture_mid_epoch_stops_with_one_line_and_exit_2(tmp_path: Path) -> None:
    pattern = shards_with(tmp_path, {"004": {"png": b"garbage", "txt": b"a broken picture"}})
    split = ["data.split_seed=3", "data.val_fraction=0.2"]  # sample 004 trains
    result, _ = run_train(tmp_path, "data=wds", f"data.train_shards='{pattern}'", *split, *SMALL)
    errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    assert len(errors) == 1 and "train-000000.tar sample '004': its image is not an image" in errors[0]
