"""Sweep specs (conf/sweep/<name>.yaml) and running one through `train.py -m` (Hydra multirun).

There is no second training loop here: every job is an ordinary train.py run in its own dir, which leaves a
result.json behind; nanovlm.sweeps.report reads those.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from nanovlm.run.config import CONFIG_DIR, ConfigError

SPEC_DIR = CONFIG_DIR / "sweep"
DEFAULT_COLUMNS = ["val/i2t_R@1", "val/t2i_R@1", "time/fit_s"]


@dataclass
class SweepSpec:
    """A sweep as conf/sweep/<name>.yaml describes it."""

    name: str
    params: dict[str, str]  # key -> Hydra sweep values, e.g. "0.03,0.05,0.07"
    overrides: list[str] = field(default_factory=list)  # applied to every job
    metric: str = "val/R@1"  # what "best" means (higher is better)
    columns: list[str] = field(default_factory=lambda: list(DEFAULT_COLUMNS))
    average_over: list[str] = field(default_factory=list)  # e.g. [seed]: one row per other setting
    min_columns: list[str] = field(default_factory=list)  # also show the worst run of the row for these
    heatmap: list[str] = field(default_factory=list)  # [x key, y key]
    launcher: str = "basic"  # basic (serial) or joblib (parallel, one worker per core)
    sweeper: str = "basic"  # basic (every combination of params) or optuna (n_trials, TPE over params)
    n_trials: int = 12  # optuna only
    description: str = ""


def available_specs() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def load_spec(name: str) -> SweepSpec:
    """A spec by name (conf/sweep/<name>.yaml) or by path to a YAML file of the same form."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SPEC_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown sweep sweep={name}; available: {', '.join(available_specs())} (in {SPEC_DIR})")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    fields = set(SweepSpec.__dataclass_fields__)
    unknown = set(raw) - fields
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(fields))}")
    if not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise ConfigError(f"{path}: params must map each swept key to its values, e.g. loss.temperature: [0.05, 0.1]")
    raw["params"] = {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in raw["params"].items()}
    return SweepSpec(name=path.stem, **{k: v for k, v in raw.items() if k != "name"})


def multirun_command(spec: SweepSpec, train_py: Path, sweep_dir: Path, extra: list[str], launcher: str) -> list[str]:
    """The `train.py -m ...` command line that runs the sweep."""
    fixed = [*spec.overrides, *extra]
    # The W&B run name is the job's overrides; keep only the swept ones in it.
    fixed_keys = ",".join(o.split("=", 1)[0].lstrip("+~") for o in fixed)
    if spec.sweeper == "optuna":  # maximises train.py's return value, val/R@1
        sweeper = [
            "hydra/sweeper=optuna",
            f"hydra.sweeper.n_trials={spec.n_trials}",
            "hydra.sweeper.direction=maximize",
        ]
        sweeper.append("hydra.sweeper.sampler.seed=0")
    elif spec.sweeper == "basic":
        sweeper = []
    else:
        raise ConfigError(f"sweeper must be basic or optuna, got {spec.sweeper!r}")
    return [
        sys.executable,
        str(train_py),
        "--multirun",
        *(f"{key}={values}" for key, values in spec.params.items()),
        *fixed,
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.job.config.override_dirname.exclude_keys=[{fixed_keys}]",
        *sweeper,
        *([f"hydra/launcher={launcher}"] if launcher != "basic" else []),
    ]


def wandb_sweep_config(spec: SweepSpec, train_py: Path) -> dict[str, Any]:
    """A W&B sweep (grid) whose agent runs train.py with Hydra `key=value` overrides, for online users."""
    if spec.sweeper != "basic":
        raise ConfigError(f"--wandb-sweep writes grid sweeps; sweep {spec.name!r} uses sweeper={spec.sweeper}")

    return {
        "program": str(train_py),
        "name": spec.name,
        "method": "grid",
        "metric": {"name": spec.metric, "goal": "maximize"},
        "parameters": {k: {"values": [yaml.safe_load(v) for v in vals.split(",")]} for k, vals in spec.params.items()},
        # ${args_no_hyphens} expands to key=value pairs: exactly Hydra's override syntax.
        "command": ["${env}", "${interpreter}", "${program}", *spec.overrides, "${args_no_hyphens}"],
    }


def run(spec: SweepSpec, train_py: Path, extra: list[str], launcher: str | None = None) -> tuple[Path, int, float]:
    """Run the sweep; returns (sweep dir, train.py's exit code, wall seconds). Failed jobs don't stop it."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + f"-{time.time_ns() % 1_000_000:06d}"
    sweep_dir = Path("multirun") / f"{spec.name}_{stamp}"  # the dir name is the W&B group
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps(spec.__dict__, indent=2))
    command = multirun_command(spec, train_py, sweep_dir, extra, launcher or spec.launcher)
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    code = subprocess.run(command, env={**os.environ, "HYDRA_FULL_ERROR": "0"}).returncode
    return sweep_dir, code, time.perf_counter() - start
