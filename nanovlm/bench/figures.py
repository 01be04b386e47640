"""Benchmark: what the Lightning training path costs over a minimal plain-PyTorch loop.

    python -m nanovlm.bench                 # all six figures, several repeats; writes outputs/bench.md
    python -m nanovlm.bench --only e        # one figure: (e), the scenes epoch
    python -m nanovlm.bench --quick         # seconds: (a) and (c) only, 2 repeats, few epochs
    python -m nanovlm.bench --loaders       # the disk loaders' images/s beside the in-memory path (loaders.py)

(a) steady-state seconds per epoch of the default model: `train()` exactly as train.py runs it (checkpoints, NaN
    guard, validation every epoch; W&B off) vs `plain_run` below, the loop a researcher would write: the same model
    classes (`build_model`), optimizer and schedule, the world's tensors indexed directly in the same shuffled
    order (same per-epoch seeds), and its own validation against the whole gallery;
(b) whole-process wall time to val R@1 >= 0.95: `python train.py stop_at_recall=0.95` vs `python -m nanovlm.bench
    --plain --stop-at 0.95`, imports included;
(c) process start to the first training step of `python train.py`;
(d) `python sweep.py sweep=temperature_dim`, serial vs `launcher=joblib`, and the ceiling that this machine's cores
    put on that speed-up: one plain fit on all threads vs two fits at once on half the threads each;
(e) as (a), on the scenes world with its headline model (mha text encoder, hard negatives, order held out);
(f) whole-process wall time of the default run as a user types it (`python train.py`: 100 epochs, W&B offline,
    pictures) vs `python -m nanovlm.bench --plain trainer.max_epochs=100` (nanovlm.bench.processes).
Machines are noisy, so every figure is a median with its range, and the ratios are the headline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch

from nanovlm.bench.loops import QUIET, compose_cfg, lightning_run, plain_run
from nanovlm.bench.processes import REPO, bench_default_run, bench_time_to_target, timed
from nanovlm.bench.table import Row, cell, markdown, ratio_cell, steady

# --- The four figures ----------------------------------------------------------------------------------------------


# The worlds (a) and (e) time: the default model on the seed world; the scenes headline model (docs/scenes.md),
# validating every epoch so that each timed epoch holds a validation.
EPOCH_BENCH = {
    "(a)": ("shapes", []),
    "(e)": (
        "scenes",
        ["data=scenes", "data.split=order_holdout", "text_encoder=mha", "loss.hard_negatives=true",
         "trainer.check_val_every_n_epoch=1", "plots=none"],
    ),
}  # fmt: skip


def bench_epochs(epochs: int, repeats: int, tmp: Path, figure: str = "(a)") -> tuple[list[Row], dict[str, float]]:
    """(a) or (e): in-process, alternating Lightning and plain runs so that background load hits both alike."""
    world, overrides = EPOCH_BENCH[figure]
    runs: dict[str, list[dict]] = {"lightning": [], "plain": []}
    for r in range(repeats):
        run_dir = f"run_dir={tmp / f'{world}{r}'}"
        cfg = compose_cfg(run_dir, "logger=none", f"trainer.max_epochs={epochs}", *overrides, *QUIET)
        runs["lightning"].append(lightning_run(cfg))
        runs["plain"].append(plain_run(cfg))
    rows: list[Row] = []
    ratios: dict[str, float] = {}
    for key, label, target in (("train_s", "train epoch, s", 1.15), ("epoch_s", "train + val epoch, s", 1.15)):
        lit = [steady(run[key]) for run in runs["lightning"]]
        plain = [steady(run[key]) for run in runs["plain"]]
        text, ratio = ratio_cell(lit, plain)
        ratios[f"{figure} {label}"] = ratio
        rows.append(
            (
                f"{figure} {world}: {label} ({epochs} epochs, W&B off)",
                cell(lit),
                f"plain loop {cell(plain)}",
                text,
                f"<= {target}x",
            )
        )
    same = all(abs(a["val/R@1"] - b["val/R@1"]) < 1e-6 for a, b in zip(runs["lightning"], runs["plain"], strict=True))
    ratios[f"{figure} same_result"] = float(same)  # same seeds, batches and maths: the two loops must agree
    rows.append((f"{figure} {world}: final val R@1 identical in both loops", "yes" if same else "NO", "", "", "yes"))
    return rows, ratios


def bench_first_step(
    repeats: int, tmp: Path, loggers: Sequence[str] = ("none", "wandb")
) -> tuple[list[Row], dict[str, float]]:
    """(c): from launching `python train.py` to its first training step (interpreter, imports, config, set-up)."""
    times: dict[str, list[float]] = {logger: [] for logger in loggers}
    for r in range(repeats):
        for logger in times:
            stamp = tmp / f"first_step_{logger}{r}"
            args = [
                f"run_dir={tmp / f'fs_{logger}{r}'}", f"logger={logger}", "trainer.max_epochs=1",
                "+callbacks.clock._target_=nanovlm.bench.loops.FirstStepClock", f"+callbacks.clock.path={stamp}",
            ]  # fmt: skip
            start = time.time()
            timed([sys.executable, str(REPO / "train.py"), *args], tmp)
            times[logger].append(float(stamp.read_text()) - start)
    rows = [
        (f"(c) import to first step, {label}", cell(times[logger]), "", "", "<= 5 s")
        for logger, label in (("none", "W&B off"), ("wandb", "W&B offline"))
        if logger in times
    ]
    return rows, {f"(c) first step {k}": statistics.median(v) for k, v in times.items()}


def bench_sweep(epochs: int, tmp: Path) -> tuple[list[Row], dict[str, float]]:
    """(d): the 12-job sweep once each way (a sweep is minutes: one repeat, reduced epochs).

    Each way pays fixed costs (sweep.py and train.py start-up, the joblib workers' imports, the table and heatmap)
    that parallel jobs cannot shorten, so the speed-up grows with the epochs per job."""
    times = {}
    for launcher in ("basic", "joblib"):
        args = ["sweep=temperature_dim", f"trainer.max_epochs={epochs}", "logger=none"]
        if launcher == "joblib":
            args.append("launcher=joblib")
        times[launcher] = [timed([sys.executable, str(REPO / "sweep.py"), *args], tmp)[0]]
    text, _ = ratio_cell(times["basic"], times["joblib"])
    speedup = statistics.median(times["basic"]) / statistics.median(times["joblib"])
    row = (
        f"(d) 12-job sweep, {epochs} epochs, serial vs joblib",
        cell(times["basic"]),
        f"joblib {cell(times['joblib'])}",
        f"{text} speed-up",
        ">= 1.5x",
    )
    return [row], {"(d) sweep speedup": speedup}


def bench_parallel_bound(
    epochs: int, repeats: int, command: Sequence[str] | None = None
) -> tuple[list[Row], dict[str, float]]:
    """An estimate of (d)'s ceiling on this machine: the plain loop's fit (train + val) on all cores, what one
    serial job gets, vs two fits at once on cores // 2 threads each, what two parallel jobs get. Side by side,
    fitting runs about 2 x t(one fit, all threads) / t(two fits at once, half the threads each) faster; the
    single-threaded rest of a job (pictures, set-up, Lightning's Python) can gain up to 2x on 2 cores."""
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)
    # `command` (the plain loop's by default) prints a JSON line with "time/fit_s" and takes torch_threads=N last.
    plain = list(command or [sys.executable, "-m", "nanovlm.bench", "--plain", f"trainer.max_epochs={epochs}"])

    def fit_seconds(*procs: subprocess.Popen) -> list[float]:
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"{' '.join(plain)} failed")
        return [json.loads(out.strip().splitlines()[-1])["time/fit_s"] for out in outs]

    def start(threads: int) -> subprocess.Popen:
        return subprocess.Popen([*plain, f"torch_threads={threads}"], stdout=subprocess.PIPE, text=True, cwd=REPO)

    alone, pair = [], []
    for _ in range(repeats):
        alone += fit_seconds(start(cores))
        pair.append(max(fit_seconds(start(half), start(half))))
    bound = 2 * statistics.median(alone) / statistics.median(pair)
    row = (
        f"(d) plain-loop fits (train + val, {epochs} epochs): 1 on {cores} threads vs 2 at once on {half} each",
        cell(alone),
        f"2 at once {cell(pair)}",
        f"{bound:.2f}x speed-up for fits",
        "",
    )
    return [row], {"(d) parallel ceiling": bound}


def both(*parts: tuple[list[Row], dict[str, float]]) -> tuple[list[Row], dict[str, float]]:
    """Several figures' (rows, numbers) as one."""
    return [row for rows, _ in parts for row in rows], {k: v for _, numbers in parts for k, v in numbers.items()}


def run_bench(
    quick: bool, out: Path | None, sweep_epochs: int = 30, only: str | None = None
) -> tuple[str, dict[str, float]]:
    """Run the figures (those of `only`, e.g. "ae", if given), return (Markdown table, headline numbers); write the
    table to `out`."""
    rows: list[Row] = []
    numbers: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="nanovlm-bench-") as tmpdir:
        tmp = Path(tmpdir)
        parts: dict[str, Callable[[], tuple[list[Row], dict[str, float]]]] = (
            {"a": lambda: bench_epochs(3, 2, tmp), "c": lambda: bench_first_step(1, tmp, loggers=("none",))}
            if quick
            else {
                "a": lambda: bench_epochs(20, 5, tmp),
                "b": lambda: bench_time_to_target(0.95, 3, tmp),
                "c": lambda: bench_first_step(3, tmp),
                "d": lambda: both(bench_sweep(sweep_epochs, tmp), bench_parallel_bound(sweep_epochs, 3)),
                "e": lambda: bench_epochs(3, 3, tmp, "(e)"),
                "f": lambda: bench_default_run(100, 3, tmp),
            }
        )
        for letter, part in parts.items():
            if only is not None and letter not in only:
                continue
            part_rows, part_numbers = part()
            rows += part_rows
            numbers.update(part_numbers)
            print("\n".join("| " + " | ".join(r) + " |" for r in part_rows), flush=True)
    command = f"python -m nanovlm.bench{' --quick' if quick else ''}{f' --only {only}' if only else ''}"
    header = f"`{command}` on {os.cpu_count()} CPU cores, torch {torch.__version__}, Lightning {L.__version__}"
    table = markdown(rows, header)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
    return table, numbers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats, few epochs: (a) and (c) only")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/bench.md"), help="Markdown table (default outputs/bench.md)"
    )
    parser.add_argument("--sweep-epochs", type=int, default=30, help="trainer.max_epochs of each sweep job in (d)")
    parser.add_argument("--only", default=None, help="the figures to run, e.g. --only e (the scenes epoch)")
    parser.add_argument("--plain", action="store_true", help="just run the plain loop (what (b) times)")
    parser.add_argument("--stop-at", type=float, default=None, help="with --plain: stop at this val R@1")
    parser.add_argument("overrides", nargs="*", help="with --plain: Hydra overrides, e.g. model.embed_dim=16")
    parser.add_argument("--loaders", action="store_true", help="the disk loaders' images/s (nanovlm/bench/loaders.py)")
    parser.add_argument("--images", type=int, default=2000, help="with --loaders: scenes images exported and read")
    parser.add_argument("--shard-epoch", action="store_true", help="a training epoch from shards against in memory")
    args = parser.parse_args(argv)
    if args.shard_epoch:
        from nanovlm.bench.loaders import shard_epoch

        print(shard_epoch())
        return 0
    if args.loaders:
        from nanovlm.bench.loaders import run

        print(run(args.images))
        return 0
    if args.plain:
        result = plain_run(compose_cfg("run_dir=unused", *args.overrides), stop_at=args.stop_at)
        print(
            json.dumps({"epochs": result["epochs"], "val/R@1": result["val/R@1"], "time/fit_s": sum(result["epoch_s"])})
        )
        return 0
    table, _ = run_bench(args.quick, args.out, args.sweep_epochs, args.only)
    print(table)
    return 0
