"""The benchmark's whole-process figures: `python train.py` timed as a user runs it, beside the plain loop's script.

(b) times both to a target recall; (f) times the default run as typed (100 epochs, W&B offline, the pictures)
against the plain loop over the same 100 epochs, validating every epoch. Pairs alternate (train.py, plain,
train.py, ...) so that whatever else the machine does hits both alike; the ratio of medians is the figure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from nanovlm.bench.table import Row, cell, ratio_cell

REPO = Path(__file__).resolve().parents[2]


def timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed, proc


def bench_time_to_target(target: float, repeats: int, tmp: Path) -> tuple[list[Row], dict[str, float]]:
    """(b): whole processes, imports included; train.py with W&B off and with W&B offline."""
    times: dict[str, list[float]] = {"none": [], "wandb": [], "plain": []}
    for r in range(repeats):
        for logger in ("none", "wandb"):
            run_dir = tmp / f"ttt_{logger}{r}"
            args = [f"run_dir={run_dir}", f"logger={logger}", f"stop_at_recall={target}", "trainer.max_epochs=300"]
            elapsed, _ = timed([sys.executable, str(REPO / "train.py"), *args], tmp)
            times[logger].append(elapsed)
        elapsed, _ = timed([sys.executable, "-m", "nanovlm.bench", "--plain", "--stop-at", str(target)], tmp)
        times["plain"].append(elapsed)
    rows, ratios = [], {}
    for logger, label in (("none", "W&B off"), ("wandb", "W&B offline")):
        text, ratio = ratio_cell(times[logger], times["plain"])
        ratios[f"(b) time to target, {label}"] = ratio
        rows.append(
            (
                f"(b) `train.py` to val R@1 >= {target}, {label}",
                cell(times[logger]),
                f"plain script {cell(times['plain'])}",
                text,
                "<= 1.5x",
            )
        )
    return rows, ratios


def bench_default_run(epochs: int, repeats: int, tmp: Path) -> tuple[list[Row], dict[str, float]]:
    """(f): `python train.py` with every default (W&B offline, pictures, checkpoints) against the plain loop's whole
    process over the same epochs, alternating."""
    times: dict[str, list[float]] = {"train": [], "plain": []}
    for r in range(repeats):
        args = [f"run_dir={tmp / f'default{r}'}", f"trainer.max_epochs={epochs}"]
        times["train"].append(timed([sys.executable, str(REPO / "train.py"), *args], tmp)[0])
        plain = [sys.executable, "-m", "nanovlm.bench", "--plain", f"trainer.max_epochs={epochs}"]
        times["plain"].append(timed(plain, tmp)[0])
    text, ratio = ratio_cell(times["train"], times["plain"])
    row = (
        f"(f) `python train.py` as typed ({epochs} epochs, W&B offline, pictures), whole process",
        cell(times["train"]),
        f"plain script {cell(times['plain'])}",
        text,
        "<= 1.3x",
    )
    return [row], {"(f) default run, whole process": ratio}
