"""train(cfg): the one place that turns a composed config into objects and runs Trainer.fit."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
import warnings
from netrc import netrc
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from nanovlm import checkpoints
from nanovlm.config import ConfigError, validate
from nanovlm.data import VOCAB, ShapesDataModule
from nanovlm.guards import NonFiniteLossGuard
from nanovlm.module import DualEncoder


def build_model(cfg: DictConfig) -> DualEncoder:
    """Instantiate the DualEncoder that `cfg` describes (also used to rebuild from a checkpoint)."""
    return DualEncoder(
        image_encoder=instantiate(cfg.encoder),
        text_encoder=instantiate(cfg.text_encoder, vocab_size=len(VOCAB)),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
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


def build_logger(cfg: DictConfig, run_dir: Path, run_id: str | None = None) -> Any:
    """A WandbLogger writing into the run dir, offline by default; False when `logger=none`.

    `run_id` (from a resumed checkpoint) makes W&B continue that run instead of starting a new one.
    """
    if not cfg.get("logger"):
        return False
    from lightning.pytorch.loggers import WandbLogger

    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True)
    return WandbLogger(
        project=logger_cfg["project"],
        name=run_name(cfg),
        group=logger_cfg.get("group"),
        tags=logger_cfg.get("tags") or None,
        mode=wandb_mode(logger_cfg["mode"]),
        save_dir=str(run_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
        id=run_id,
        resume="allow",
    )


# --- W&B online without a key or a network: fall back to offline, never hang ------------------------------------


def wandb_mode(requested: str) -> str:
    """`online` only when an API key is configured and the W&B server answers within a few seconds.

    Otherwise the run falls back to `offline` with a warning rather than failing: the run is not lost and
    `wandb sync` uploads it later. wandb.init itself would prompt for a key or retry for minutes.
    """
    if requested != "online":
        return requested
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(url).hostname or "api.wandb.ai"
    port = urlparse(url).port or (443 if url.startswith("https") else 80)
    if not (os.environ.get("WANDB_API_KEY") or _netrc_has(host)):
        reason = "no W&B API key (WANDB_API_KEY or ~/.netrc)"
    elif not _reachable(host, port):
        reason = f"the W&B server {host}:{port} is unreachable"
    else:
        return "online"
    message = f"logger.mode=online but {reason}: logging offline instead (upload later with `wandb sync`)"
    warnings.warn(message, stacklevel=2)
    return "offline"


def _netrc_has(host: str) -> bool:
    try:
        return netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except Exception:  # no ~/.netrc, or one that does not parse
        return False


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """TCP connect in a daemon thread: DNS lookups have no timeout of their own."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


# --- Everything that can fail on bad input, before any run dir, W&B run or Trainer exists ------------------------


def build(cfg: DictConfig) -> tuple[DualEncoder, ShapesDataModule, dict[str, Any] | None]:
    """Validate `cfg`, build the data and model, read the checkpoint to resume from (if any).

    Cheap (milliseconds): constructors' own range checks (temperature > 0, ...) surface here as ConfigError.
    """
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        datamodule: ShapesDataModule = instantiate(cfg.data)
        model = build_model(cfg)
    except InstantiationException as exc:
        raise _as_config_error(exc) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    checkpoint = None
    if cfg.get("ckpt_path"):
        path = checkpoints.resolve_ckpt_path(cfg.ckpt_path)
        checkpoint = checkpoints.load_checkpoint(path)
        checkpoints.check_compatible(checkpoint, model, model_config(cfg), path)
        checkpoint["path"] = str(path)
    return model, datamodule, checkpoint


def model_config(cfg: DictConfig) -> dict[str, Any]:
    """The config sections that decide the model's parameters, stored in checkpoints to catch mismatches."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in checkpoints.MODEL_SECTIONS if k in cfg}


def _as_config_error(exc: InstantiationException) -> ConfigError:
    """Hydra wraps a constructor's error in three lines; keep the constructor's own message."""
    cause = exc.__cause__
    key = re.search(r"full_key: (\S+)", str(exc))
    if isinstance(cause, ValueError):
        return ConfigError(str(cause))
    where = key.group(1) if key else "config"
    return ConfigError(f"{where}: {type(cause).__name__ if cause else 'error'}: {cause or exc}")


def _discard_unused_run_dir(run_dir: Path) -> None:
    """After a config error, remove the dir Hydra made for this run if it holds only Hydra's own files,
    so no run dir looks like a run."""
    if not (run_dir / ".hydra").is_dir():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the model `cfg` describes; returns the final epoch's metrics (val/R@1, ...).

    With `ckpt_path` set, training continues from that checkpoint (same W&B run, same batches as if never
    stopped). A bad config raises ConfigError before any run dir, W&B run or Trainer is made.
    """
    try:
        model, datamodule, resume_from = build(cfg)
    except ConfigError:
        if cfg.get("run_dir"):
            _discard_unused_run_dir(Path(cfg.run_dir))
        raise
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = build_logger(cfg, run_dir, checkpoints.wandb_run_id(resume_from) if resume_from else None)
    run_id = logger.experiment.id if logger else None
    # Two checkpoint callbacks: in Lightning 2.6 `save_last` only fires on epochs that improve the monitor,
    # so "last" gets its own unmonitored checkpoint, rewritten every epoch.
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/R@1", mode="max"),
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None),
        checkpoints.ResumableRun(cfg.seed, model_config(cfg), run_id),
        NonFiniteLossGuard(),
    ]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=callbacks,
        plugins=[checkpoints.AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    ok = False
    try:
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from["path"] if resume_from else None)
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
