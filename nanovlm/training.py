"""train(cfg): the one place that turns a composed config into objects and runs Trainer.fit."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from nanovlm.data import VOCAB, ShapesDataModule
from nanovlm.module import DualEncoder


def build_model(cfg: DictConfig) -> DualEncoder:
    """Instantiate the DualEncoder that `cfg` describes (also used to rebuild from a checkpoint)."""
    return DualEncoder(
        image_encoder=instantiate(cfg.encoder),
        text_encoder=instantiate(cfg.text_encoder, vocab_size=len(VOCAB)),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
    )


def _hydra_runtime() -> Any:
    """Hydra's runtime config when running under @hydra.main, else None (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def run_name(cfg: DictConfig) -> str:
    """The W&B run name: `logger.name`, else a sweep job's number and overrides, else the group choices."""
    if cfg.logger.get("name"):
        return str(cfg.logger.name)
    hydra_cfg = _hydra_runtime()
    if hydra_cfg is None:
        return "-".join(cfg[g]._target_.rsplit(".", 1)[-1] for g in ("encoder", "text_encoder", "loss"))
    if hydra_cfg.mode.name == "MULTIRUN":
        return f"{hydra_cfg.job.num}:{hydra_cfg.job.override_dirname or 'defaults'}"
    choices = hydra_cfg.runtime.choices
    return "-".join(str(choices.get(g)) for g in ("encoder", "text_encoder", "loss"))


def run_group(cfg: DictConfig) -> str | None:
    """The W&B group: `logger.group`, else one group per multirun sweep (named after its dir)."""
    if cfg.logger.get("group"):
        return str(cfg.logger.group)
    hydra_cfg = _hydra_runtime()
    if hydra_cfg is not None and hydra_cfg.mode.name == "MULTIRUN":
        return Path(hydra_cfg.sweep.dir).name
    return None


def torch_threads() -> int:
    """Threads for this job: all cores, or an equal share when a parallel launcher runs several jobs.

    Oversubscribing (2 jobs x 2 threads on 2 cores) is slower than either alone, so a joblib worker
    takes cores // n_jobs.
    """
    cores = os.cpu_count() or 1
    hydra_cfg = _hydra_runtime()
    launcher = hydra_cfg.launcher if hydra_cfg is not None else {}
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else 1
    if n_jobs is None or n_jobs < 1:
        n_jobs = cores  # joblib's -1: one worker per core
    return max(1, cores // n_jobs)


def build_logger(cfg: DictConfig, run_dir: Path) -> Any:
    """A WandbLogger writing into the run dir, offline by default; False when `logger=none`."""
    if not cfg.get("logger"):
        return False
    from lightning.pytorch.loggers import WandbLogger

    config = OmegaConf.to_container(cfg, resolve=True)
    logger_cfg = config["logger"]
    logger_cfg.update(name=run_name(cfg), group=run_group(cfg))  # the logged config shows what was used
    return WandbLogger(
        project=logger_cfg["project"],
        name=logger_cfg["name"],
        group=logger_cfg["group"],
        tags=logger_cfg.get("tags") or None,
        mode=logger_cfg["mode"],
        save_dir=str(run_dir),
        config=config,
    )


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the model `cfg` describes; returns the final epoch's metrics (val/R@1, ...).

    Writes `<run_dir>/result.json` either way: {"status": "ok", "metrics": ...} or
    {"status": "failed", "error": ...}, which is what sweeps collect.
    """
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch_threads())
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    logger: Any = False
    try:
        datamodule: ShapesDataModule = instantiate(cfg.data)
        model = build_model(cfg)
        logger = build_logger(cfg, run_dir)
        # Two callbacks: in Lightning 2.6 `save_last` only fires on epochs that improve the monitor,
        # so "last" gets its own unmonitored checkpoint, rewritten every epoch.
        checkpoints = [
            ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/R@1", mode="max"),
            ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None),
        ]
        trainer: L.Trainer = instantiate(
            cfg.trainer, logger=logger, callbacks=checkpoints, default_root_dir=str(run_dir)
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["time/fit_s"] = time.perf_counter() - start
        metrics["model/params"] = float(sum(p.numel() for p in model.parameters() if p.requires_grad))
        if logger:
            logger.experiment.summary.update(metrics)
    except BaseException as error:
        _write_result(run_dir, {"status": "failed", "error": f"{type(error).__name__}: {error}"})
        _finish_wandb(logger, exit_code=1)  # marks the W&B run failed; the next sweep job starts clean
        raise
    _finish_wandb(logger, exit_code=0)
    _write_result(run_dir, {"status": "ok", "metrics": metrics})
    _print_summary(metrics, run_dir, logger)
    return metrics


def _finish_wandb(logger: Any, exit_code: int) -> None:
    if logger:
        import wandb

        wandb.finish(exit_code=exit_code)


def _write_result(run_dir: Path, result: dict[str, Any]) -> None:
    """Write result.json atomically, so a reader never sees half a file."""
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(run_dir / "result.json")


def _print_summary(metrics: dict[str, float], run_dir: Path, logger: Any) -> None:
    i2t, t2i = metrics.get("val/i2t_R@1", float("nan")), metrics.get("val/t2i_R@1", float("nan"))
    lines = [f"final val R@1  image->text {i2t:.3f}  text->image {t2i:.3f}  (gallery: all 243 pairs)"]
    lines.append(f"run dir        {run_dir}")
    if logger:
        lines.append(f"W&B run        {_wandb_run_dir(run_dir)}")
    print("\n".join(lines))


def _wandb_run_dir(run_dir: Path) -> str:
    runs = sorted((run_dir / "wandb").glob("*run-*"))
    return str(runs[-1]) if runs else "(none)"
