"""Collecting a sweep: its jobs' result.json files, compared in a table, a heatmap and a W&B summary run.

Collecting only reads the job dirs, so a finished (or half finished) sweep can be tabulated again at any time with
`python sweep.py --collect <sweep dir>`.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nanovlm.run.config import ConfigError
from nanovlm.sweeps.spec import SweepSpec


@dataclass
class Job:
    """One finished (or failed) job of a sweep."""

    num: int
    dir: Path
    overrides: dict[str, str]
    status: str  # ok | failed | missing
    metrics: dict[str, float]
    error: str = ""


def collect(sweep_dir: Path) -> list[Job]:
    """Read every job dir (0/, 1/, ...) of a multirun dir."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"--collect {sweep_dir}: no such directory (a sweep dir is multirun/<name>_<time>)")
    jobs = []
    for job_dir in sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
        result_file = job_dir / "result.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else {"status": "missing"}
        jobs.append(
            Job(
                num=int(job_dir.name),
                dir=job_dir,
                overrides=dict(o.split("=", 1) for o in overrides if "=" in o),
                status=result["status"],
                metrics=result.get("metrics", {}),
                error=result.get("error", "no result.json: the job did not finish"),
            )
        )
    if not jobs:
        raise ConfigError(f"--collect {sweep_dir}: holds no job dirs (0/, 1/, ...); is it a sweep dir?")
    return jobs


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs, in first-seen order."""
    keys: dict[str, set[str]] = defaultdict(set)
    for job in jobs:
        for key, value in job.overrides.items():
            keys[key].add(value)
    return [k for k, values in keys.items() if len(values) > 1]


def summarise(jobs: list[Job], spec: SweepSpec) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per setting of the swept keys (averaging over `spec.average_over`): (header, rows)."""
    keys = [k for k in swept_keys(jobs) if k not in spec.average_over]
    metric_cols = list(dict.fromkeys([spec.metric, *spec.columns]))
    groups: dict[tuple[str, ...], list[Job]] = defaultdict(list)
    for job in jobs:
        groups[tuple(job.overrides.get(k, "") for k in keys)].append(job)
    rows = []
    for setting, members in groups.items():
        ok = [j for j in members if j.status == "ok"]
        row: dict[str, Any] = dict(zip(keys, setting, strict=True))
        for col in metric_cols:
            values = [j.metrics[col] for j in ok if col in j.metrics]
            row[col] = sum(values) / len(values) if values else math.nan
            if spec.average_over:  # the spread over seeds belongs beside every mean (shown as mean ± std)
                row[f"{col}{STD_SUFFIX}"] = _std(values)
                row.setdefault(RUN_VALUES, {})[col] = values  # for the heatmap, whose cells may merge rows
        for col in spec.min_columns:
            values = [j.metrics[col] for j in ok if col in j.metrics]
            row[f"min {col}"] = min(values) if values else math.nan
        row["runs"] = len(members)
        row["failed"] = len(members) - len(ok)
        row["jobs"] = " ".join(str(j.num) for j in members)
        rows.append(row)
    return [*keys, *metric_cols, *(f"min {c}" for c in spec.min_columns), "runs", "failed", "jobs"], rows


STD_SUFFIX = " std"
RUN_VALUES = "_run_values"  # a row's per-run values of each metric: not a column


def _std(values: list[float]) -> float:
    """Sample standard deviation (n - 1); nan for fewer than two values."""
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(row: dict[str, Any], key: str) -> str:
    """A table cell: the value, and "± std" where the row has a finite spread for it."""
    std = row.get(f"{key}{STD_SUFFIX}")
    if isinstance(std, float) and not math.isnan(std) and not math.isnan(row[key]):
        return f"{_fmt(row[key])} ± {std:.3f}"
    return _fmt(row[key], failed=_all_failed(row))


def _all_failed(row: dict[str, Any]) -> bool:
    """Whether no run of the row finished: then its metrics are NaN because there are none ("failed"). A run
    that finished may still report NaN (val/R@1 of a captioner with loss.retrieval=false): that shows as "nan"."""
    return row.get("runs", 0) > 0 and row.get("failed") == row["runs"]


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    scored = [r for r in rows if not math.isnan(r[metric])]
    return max(scored, key=lambda r: r[metric]) if scored else None


def _fmt(value: Any, failed: bool = False) -> str:
    """A value for the table; NaN is "failed" where the row's runs all failed, else "nan" (see `_all_failed`)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "failed" if failed else "nan"
        return f"{value:.4g}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def write_table(sweep_dir: Path, header: list[str], rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """results.csv (full precision) and results.md (rounded) in the sweep dir."""
    csv_path, md_path = sweep_dir / "results.csv", sweep_dir / "results.md"
    stds = [k for k in (rows[0] if rows else {}) if k.endswith(STD_SUFFIX) and k not in header]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*header, *stds], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(r, h) for h in header) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def print_table(title: str, header: list[str], rows: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right" if h not in ("jobs",) else "left")
    for r in rows:
        table.add_row(*(_cell(r, h) for h in header), style="bold green" if r is best else None)
    console = Console()
    if not console.is_terminal:  # logs and pipes: don't squeeze the columns to 80 characters
        console = Console(width=200)
    console.print(table)


def plot_heatmap(path: Path, rows: list[dict[str, Any]], x: str, y: str, metric: str, title: str) -> Path:
    """A y-by-x grid of the metric (mean over whatever else varied), cells with no finished run marked
    "failed", cells whose finished runs reported NaN marked "nan"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def order(values: set[str]) -> list[str]:
        try:
            return sorted(values, key=float)
        except ValueError:
            return sorted(values)

    xs, ys = order({r[x] for r in rows}), order({r[y] for r in rows})
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        cells[(r[y], r[x])].append(r)
    grid = np.full((len(ys), len(xs)), np.nan)
    spread = np.full((len(ys), len(xs)), np.nan)  # std over the runs of a cell, where rows averaged runs
    failed = np.ones((len(ys), len(xs)), dtype=bool)  # no run of the cell finished (or the cell has no job)
    for (yv, xv), members in cells.items():
        failed[ys.index(yv), xs.index(xv)] = all(_all_failed(r) for r in members)
        finite = [r[metric] for r in members if not math.isnan(r[metric])]
        if finite:
            grid[ys.index(yv), xs.index(xv)] = sum(finite) / len(finite)
        runs = [v for r in members for v in r.get(RUN_VALUES, {}).get(metric, [])]
        if runs:
            grid[ys.index(yv), xs.index(xv)] = sum(runs) / len(runs)  # the mean over runs, as the spread is
            spread[ys.index(yv), xs.index(xv)] = _std(runs)
    fig, ax = plt.subplots(figsize=(1.4 * len(xs) + 2.5, 0.8 * len(ys) + 1.8))
    image = ax.imshow(grid, cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0, vmax=1.0)
    for i in range(len(ys)):
        for j in range(len(xs)):
            v = grid[i, j]
            if math.isnan(v):
                text, colour = ("failed" if failed[i, j] else "nan"), "red"
            else:
                text, colour = f"{v:.3f}", "white" if v < 0.8 else "black"
            if not math.isnan(v) and not math.isnan(spread[i, j]):
                text += f"\n± {spread[i, j]:.3f}"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=10)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_yticks(range(len(ys)), ys)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def jobs_logger(jobs: list[Job]) -> dict[str, Any] | None:
    """The W&B settings (logger.project, logger.mode, ...) the sweep's jobs ran with, read from the first job's
    saved config, so the summary lands beside its runs; None when they ran with logger=none."""
    for job in jobs:
        saved = job.dir / ".hydra" / "config.yaml"
        if saved.is_file():
            logger = OmegaConf.load(saved).get("logger")  # mode: ${oc.env:WANDB_MODE,offline} resolves as in the job
            return OmegaConf.to_container(logger, resolve=True) if logger and logger.get("project") else None
    return None


def log_summary_to_wandb(
    sweep_dir: Path, group: str, header: list[str], rows: list[dict[str, Any]], images: list[Path], logger: dict
) -> None:
    """One extra W&B run per sweep (job_type sweep-summary) holding the table and the heatmap, in the project and
    mode of the sweep's jobs (`logger` is their logger config)."""
    import wandb

    from nanovlm.run.tracking import wandb_mode

    run = wandb.init(
        project=str(logger["project"]),
        group=group,
        name=f"{group}-summary",
        job_type="sweep-summary",
        dir=str(sweep_dir),
        mode=wandb_mode(str(logger.get("mode") or "offline")),
        settings=wandb.Settings(silent=True),
    )
    try:
        data = [[r[h] if not isinstance(r[h], float) or not math.isnan(r[h]) else None for h in header] for r in rows]
        run.log({"results": wandb.Table(columns=header, data=data), **{p.stem: wandb.Image(str(p)) for p in images}})
    finally:
        wandb.finish()


def report(sweep_dir: Path, spec: SweepSpec | None = None, use_wandb: bool = True) -> dict[str, Any]:
    """Collect a sweep dir and write the table, CSV, Markdown, heatmap and best-config line."""
    sweep_dir = Path(sweep_dir)
    if spec is None:
        saved = sweep_dir / "sweep.json"
        spec = (
            SweepSpec(**json.loads(saved.read_text())) if saved.is_file() else SweepSpec(name=sweep_dir.name, params={})
        )
    jobs = collect(sweep_dir)
    header, rows = summarise(jobs, spec)
    best = best_row(rows, spec.metric)
    write_table(sweep_dir, header, rows)
    print_table(f"sweep {spec.name}: {sweep_dir}", header, rows, best)
    keys = [k for k in swept_keys(jobs) if k not in spec.average_over]
    heat_keys = spec.heatmap or (keys if len(keys) == 2 else [])
    images = []
    missing = [k for k in heat_keys if any(k not in r for r in rows)]
    if len(heat_keys) == 2 and missing:  # a one-job sweep, or one collected after its first job: no grid to draw
        print(f"heatmap skipped: {', '.join(missing)} not varied among the {len(jobs)} job(s) found")
    elif len(heat_keys) == 2:
        title = f"{spec.name}: {spec.metric} ({len(jobs)} jobs)"
        if spec.average_over:
            title += f"\nmean ± std over the runs in a cell ({', '.join(spec.average_over)}"
            title += ")" if set(heat_keys) | set(spec.average_over) >= set(swept_keys(jobs)) else ", other keys)"
        images.append(plot_heatmap(sweep_dir / "heatmap.png", rows, heat_keys[0], heat_keys[1], spec.metric, title))
    failed = [j for j in jobs if j.status != "ok"]
    for job in failed:
        setting = " ".join(f"{k}={job.overrides.get(k)}" for k in swept_keys(jobs))
        print(f"job {job.num} FAILED ({setting}): {job.error.splitlines()[0] if job.error else ''}")
    if best is not None:
        setting = " ".join(f"{k}={best[k]}" for k in keys) or "(single setting)"
        print(f"best {spec.metric} = {best[spec.metric]:.3f}: {setting}")
    logger = jobs_logger(jobs)
    if use_wandb and logger is not None:
        log_summary_to_wandb(sweep_dir, sweep_dir.name, header, rows, images, logger)
    return {"jobs": jobs, "header": header, "rows": rows, "best": best, "failed": failed}
