"""What a default `python train.py` prints: progress, the final numbers and where the files are; each log line
once; none of the lines a user would learn to ignore (see nanovlm/run/console.py for where each one came from)."""

from __future__ import annotations

import logging
import re

import pytest

from nanovlm.run.console import NotFrom

UNWANTED = {
    "W&B's warning about a deprecated setting Lightning passes": "anonymous setting",
    "Lightning's advertisement": "💡 Tip",
    "torch's deprecation warning from Lightning's _pytree": "LeafSpec",
    "a FLOPs column that was never counted": "FLOPs",
    "Lightning's note on every save": "weights_only",
    "W&B's end-of-run history block (train.py prints the final numbers)": "Run history",
}


@pytest.mark.slow
def test_a_default_run_prints_each_line_once_and_nothing_to_ignore(default_cli_run) -> None:
    run_dir, result = default_cli_run
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    for what, text in UNWANTED.items():
        assert text not in printed, what
    # Lightning's INFO lines, in whichever format printed them ("INFO: msg" or Hydra's "[...][INFO] - msg").
    messages = [re.sub(r"^.*?INFO\]? ?[:-] ", "", line) for line in printed.splitlines() if "INFO" in line]
    assert sum("GPU available" in m for m in messages) == 1
    assert len(messages) == len(set(messages)), messages
    assert "Warning" not in printed and "warn(" not in printed
    # What the user came for: the model's size, the final numbers, where the files are.
    assert "trainable parameters" in printed
    assert re.search(r"final val R@1  image->text \d\.\d{3}  text->image \d\.\d{3}", result.stdout)
    assert f"run dir        {run_dir}" in result.stdout
    (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    assert f"upload: wandb sync {wandb_dir}" in result.stdout
    # Lightning's lines still reach the run's log file, once each.
    log = (run_dir / "train.log").read_text()
    assert log.count("GPU available") == 1


def _record(name: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, "m", None, None)


def test_not_from_drops_one_logger_and_its_children_only() -> None:
    keep = NotFrom("lightning")
    assert not keep.filter(_record("lightning")) and not keep.filter(_record("lightning.pytorch.trainer"))
    assert keep.filter(_record("lightning_fabric")) and keep.filter(_record("hydra")) and keep.filter(_record("root"))
