"""train(cfg): the one place that turns a composed config into objects and runs Trainer.fit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
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
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )


def run_name(cfg: DictConfig) -> str:
    """The W&B run name: the config-group choices, or the sweep job's overrides under multirun."""
    if cfg.logger.get("name"):
        return str(cfg.logger.name)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.overrides.task and hydra_cfg.job.get("num") is not None and hydra_cfg.mode.name == "MULTIRUN":
            return f"{hydra_cfg.job.num}:{hydra_cfg.job.override_dirname}"
        choices = hydra_cfg.runtime.choices
        return "-".join(str(choices.get(g)) for g in ("encoder", "text_encoder", "loss"))
    return "-".join(cfg[g]._target_.rsplit(".", 1)[-1] for g in ("encoder", "text_encoder", "loss"))


def build_logger(cfg: DictConfig, run_dir: Path) -> Any:
    """A WandbLogger writing into the run dir, offline by default; False when `logger=none`."""
    if not cfg.get("logger"):
        return False
    from lightning.pytorch.loggers import WandbLogger

    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True)
    return WandbLogger(
        project=logger_cfg["project"],
        name=run_name(cfg),
        group=logger_cfg.get("group"),
        tags=logger_cfg.get("tags") or None,
        mode=logger_cfg["mode"],
        save_dir=str(run_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the model `cfg` describes; returns the final epoch's metrics (val/R@1, ...)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: ShapesDataModule = instantiate(cfg.data)
    model = build_model(cfg)
    logger = build_logger(cfg, run_dir)
    # Two callbacks: in Lightning 2.6 `save_last` only fires on epochs that improve the monitor,
    # so "last" gets its own unmonitored checkpoint, rewritten every epoch.
    checkpoints = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/R@1", mode="max"),
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None),
    ]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=checkpoints, default_root_dir=str(run_dir))
    ok = False
    try:
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["time/fit_s"] = time.perf_counter() - start
        metrics["model/params"] = float(sum(p.numel() for p in model.parameters() if p.requires_grad))
        if logger:
            logger.experiment.summary.update(metrics)
        ok = True
    finally:
        if logger:
            import wandb

            wandb.finish(exit_code=0 if ok else 1)
    _print_summary(metrics, run_dir, logger)
    return metrics


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
