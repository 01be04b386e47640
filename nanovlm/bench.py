"""Benchmark: what the Lightning training path costs over a minimal plain-PyTorch loop.

    python -m nanovlm.bench                 # all four figures, several repeats; writes outputs/bench.md
    python -m nanovlm.bench --quick         # seconds: (a) and (c) only, 2 repeats, few epochs

(a) steady-state seconds per epoch: `train()` exactly as train.py runs it (checkpoints, NaN guard, validation
    every epoch; W&B off) vs `plain_run` below: the same model classes (`build_model`), optimizer, batches (same
    DataLoader, same per-epoch seeds) and the same validation against the full 243 gallery;
(b) whole-process wall time to val R@1 >= 0.95: `python train.py stop_at_recall=0.95` vs `python -m nanovlm.bench
    --plain --stop-at 0.95`, imports included;
(c) process start to the first training step of `python train.py`;
(d) `python sweep.py sweep=temperature_dim`, serial vs `launcher=joblib`, and the ceiling that this machine's cores
    put on that speed-up: one plain fit on all threads vs two fits at once on half the threads each.
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
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def compose_cfg(*overrides: str) -> DictConfig:
    """The config train.py would compose, with `overrides`."""
    from hydra import compose, initialize_config_dir

    from nanovlm.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# --- Timers hooked into the Lightning path ------------------------------------------------------------------------


class EpochTimer(L.Callback):
    """Wall clock at each train epoch start, validation start and fit end: epoch and train-only times."""

    def __init__(self) -> None:
        self.epoch_start: list[float] = []
        self.val_start: list[float] = []
        self.fit_end = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start.append(time.perf_counter())

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_start.append(time.perf_counter())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_end = time.perf_counter()

    def times(self) -> tuple[list[float], list[float]]:
        """(train-only seconds, whole-epoch seconds incl. validation and checkpoints) per epoch."""
        ends = [*self.epoch_start[1:], self.fit_end]
        return [v - s for s, v in zip(self.epoch_start, self.val_start, strict=False)], [
            e - s for s, e in zip(self.epoch_start, ends, strict=True)
        ]


class FirstStepClock(L.Callback):
    """Writes the Unix time of the first training step to `path`: (c) in a train.py subprocess."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == 0 and batch_idx == 0:
            Path(self.path).write_text(repr(time.time()))


# --- The plain loop ----------------------------------------------------------------------------------------------


@torch.no_grad()
def plain_validate(model: torch.nn.Module, datamodule) -> float:
    """val R@1, mean of both directions, each val query ranked against all 243 items (as DualEncoder does)."""
    from nanovlm.metrics import true_item_rank

    model.eval()
    gallery = datamodule.gallery()
    gallery_images, gallery_texts = model(gallery["image"], gallery["tokens"])  # [243, D] each
    idx = datamodule.val_idx
    image_emb, text_emb = gallery_images[idx], gallery_texts[idx]  # [V, D] each: val items are gallery items
    i2t = (true_item_rank(image_emb @ gallery_texts.T, idx) <= 1).float().mean()
    t2i = (true_item_rank(text_emb @ gallery_images.T, idx) <= 1).float().mean()
    model.train()
    return float((i2t + t2i) / 2)


def plain_run(cfg: DictConfig, stop_at: float | None = None) -> dict[str, object]:
    """Train `cfg`'s model with a bare loop: same seeds, batches, optimizer and validation as `train()`."""
    from hydra.utils import instantiate

    from nanovlm.checkpoints import epoch_seed
    from nanovlm.training import build_model, torch_threads

    torch.set_num_threads(torch_threads(cfg.get("torch_threads")))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)  # same order of RNG draws as training.build()
    model = build_model(cfg)
    optimizer = model.configure_optimizers()
    loader = datamodule.train_dataloader()
    train_s: list[float] = []
    epoch_s: list[float] = []
    recall = 0.0
    torch.manual_seed(epoch_seed(cfg.seed, 0))
    for epoch in range(cfg.trainer.max_epochs):
        start = time.perf_counter()
        for batch in loader:
            image_emb, text_emb = model(batch["image"], batch["tokens"])
            loss = model.loss(image_emb, text_emb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        torch.manual_seed(epoch_seed(cfg.seed, epoch + 1))  # next epoch's shuffle, as ResumableRun does
        train_s.append(time.perf_counter() - start)
        recall = plain_validate(model, datamodule)
        epoch_s.append(time.perf_counter() - start)
        if stop_at is not None and recall >= stop_at:
            break
    return {"epochs": len(epoch_s), "val/R@1": recall, "train_s": train_s, "epoch_s": epoch_s}


def lightning_run(cfg: DictConfig) -> dict[str, object]:
    """`train(cfg)` with an EpochTimer appended."""
    from nanovlm.training import train

    timer = EpochTimer()
    metrics = train(cfg, extra_callbacks=[timer])
    train_s, epoch_s = timer.times()
    return {"epochs": len(epoch_s), "val/R@1": metrics["val/R@1"], "train_s": train_s, "epoch_s": epoch_s}


# --- Statistics and the table --------------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def cell(values: Sequence[float], unit: str = "s") -> str:
    med, lo, hi = summary(values)
    fmt = ".3f" if med < 1 else ".2f" if med < 10 else ".1f"
    return f"{med:{fmt}} {unit} ({lo:{fmt}}–{hi:{fmt}}, n={len(values)})"


def steady(per_epoch: Sequence[float]) -> float:
    """Median epoch time without the first epoch (warm-up: first-call allocations, lazy inits)."""
    return statistics.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)


Row = tuple[str, str, str, str, str]  # figure, Lightning, plain / parallel, ratio, target


def ratio_cell(a: Sequence[float], b: Sequence[float]) -> tuple[str, float]:
    ratio = statistics.median(a) / statistics.median(b)
    return f"{ratio:.2f}x", ratio


def markdown(rows: Sequence[Row], header: str) -> str:
    lines = [header, "", "| figure | nanovlm (Lightning) | reference | ratio | target |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# --- The four figures ----------------------------------------------------------------------------------------------


def bench_epochs(epochs: int, repeats: int, tmp: Path) -> tuple[list[Row], dict[str, float]]:
    """(a): in-process, alternating Lightning and plain runs so that background load hits both alike."""
    runs: dict[str, list[dict]] = {"lightning": [], "plain": []}
    for r in range(repeats):
        cfg = compose_cfg(f"run_dir={tmp / f'epochs{r}'}", "logger=none", f"trainer.max_epochs={epochs}", *QUIET)
        runs["lightning"].append(lightning_run(cfg))
        runs["plain"].append(plain_run(cfg))
    rows: list[Row] = []
    ratios: dict[str, float] = {}
    for key, label, target in (("train_s", "train epoch, s", 1.15), ("epoch_s", "train + val epoch, s", 1.15)):
        lit = [steady(run[key]) for run in runs["lightning"]]
        plain = [steady(run[key]) for run in runs["plain"]]
        text, ratio = ratio_cell(lit, plain)
        ratios[f"(a) {label}"] = ratio
        rows.append(
            (f"(a) {label} ({epochs} epochs, W&B off)", cell(lit), f"plain loop {cell(plain)}", text, f"<= {target}x")
        )
    same = all(abs(a["val/R@1"] - b["val/R@1"]) < 1e-6 for a, b in zip(runs["lightning"], runs["plain"], strict=True))
    ratios["same_result"] = float(same)  # same seeds, batches and maths: the two loops must agree
    rows.append(("(a) final val R@1 identical in both loops", "yes" if same else "NO", "", "", "yes"))
    return rows, ratios


def _timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
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
            elapsed, _ = _timed([sys.executable, str(REPO / "train.py"), *args], tmp)
            times[logger].append(elapsed)
        elapsed, _ = _timed([sys.executable, "-m", "nanovlm.bench", "--plain", "--stop-at", str(target)], tmp)
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
                "+callbacks.clock._target_=nanovlm.bench.FirstStepClock", f"+callbacks.clock.path={stamp}",
            ]  # fmt: skip
            start = time.time()
            _timed([sys.executable, str(REPO / "train.py"), *args], tmp)
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
        times[launcher] = [_timed([sys.executable, str(REPO / "sweep.py"), *args], tmp)[0]]
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


def bench_parallel_bound(epochs: int, repeats: int) -> tuple[list[Row], dict[str, float]]:
    """An estimate of (d)'s ceiling on this machine: the plain loop's fit (train + val) on all cores, what one
    serial job gets, vs two fits at once on cores // 2 threads each, what two parallel jobs get. Side by side,
    fitting runs about 2 x t(one fit, all threads) / t(two fits at once, half the threads each) faster; the
    single-threaded rest of a job (pictures, set-up, Lightning's Python) can gain up to 2x on 2 cores."""
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)
    plain = [sys.executable, "-m", "nanovlm.bench", "--plain", f"trainer.max_epochs={epochs}"]

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


def run_bench(quick: bool, out: Path | None, sweep_epochs: int = 30) -> tuple[str, dict[str, float]]:
    """Run the figures, return (Markdown table, headline numbers); write the table to `out`."""
    rows: list[Row] = []
    numbers: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="nanovlm-bench-") as tmpdir:
        tmp = Path(tmpdir)
        parts: list[Callable[[], tuple[list[Row], dict[str, float]]]] = (
            [lambda: bench_epochs(3, 2, tmp), lambda: bench_first_step(1, tmp, loggers=("none",))]
            if quick
            else [
                lambda: bench_epochs(20, 5, tmp),
                lambda: bench_time_to_target(0.95, 3, tmp),
                lambda: bench_first_step(3, tmp),
                lambda: bench_sweep(sweep_epochs, tmp),
                lambda: bench_parallel_bound(sweep_epochs, 3),
            ]
        )
        for part in parts:
            part_rows, part_numbers = part()
            rows += part_rows
            numbers.update(part_numbers)
            print("\n".join("| " + " | ".join(r) + " |" for r in part_rows), flush=True)
    command = f"python -m nanovlm.bench{' --quick' if quick else ''}"
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
    parser.add_argument("--plain", action="store_true", help="just run the plain loop (what (b) times)")
    parser.add_argument("--stop-at", type=float, default=None, help="with --plain: stop at this val R@1")
    parser.add_argument("overrides", nargs="*", help="with --plain: Hydra overrides, e.g. model.embed_dim=16")
    args = parser.parse_args(argv)
    if args.plain:
        result = plain_run(compose_cfg("run_dir=unused", *args.overrides), stop_at=args.stop_at)
        print(
            json.dumps({"epochs": result["epochs"], "val/R@1": result["val/R@1"], "time/fit_s": sum(result["epoch_s"])})
        )
        return 0
    table, _ = run_bench(args.quick, args.out, args.sweep_epochs)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
