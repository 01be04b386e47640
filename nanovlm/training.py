"""train(cfg): the one place that turns a composed config into objects and runs Trainer.fit."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nanovlm import checkpoints, tracking
from nanovlm.callbacks import StopAtRecall
from nanovlm.captioner import build_captioner, is_captioning
from nanovlm.config import ConfigError, validate
from nanovlm.data import WorldDataModule
from nanovlm.guards import NonFiniteLossGuard
from nanovlm.module import DualEncoder


def build_model(cfg: DictConfig) -> DualEncoder:
    """Instantiate the DualEncoder that `cfg` describes (also used to rebuild from a checkpoint).

    The text encoder's vocabulary size, and its number of positions where it has a `max_len` the config leaves
    unset, come from the world (`data._target_`'s class attributes), so every world fits every encoder. A
    captioning objective (loss=cap, loss=coca) gets the DualEncoder's subclass, the Captioner, whose decoder is
    sized by the world and the image encoder.
    """
    world: type[WorldDataModule] = get_class(cfg.data._target_)
    text_sizes = {"vocab_size": len(world.vocab)}
    takes_max_len = "max_len" in inspect.signature(get_class(cfg.text_encoder._target_)).parameters
    if takes_max_len and cfg.text_encoder.get("max_len") is None:
        text_sizes["max_len"] = world.seq_len
    image_encoder = instantiate(cfg.encoder)
    text_encoder = instantiate(cfg.text_encoder, **text_sizes)
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    if is_captioning(cfg.loss):
        return build_captioner(cfg.loss, image_encoder, text_encoder, world, optimizer, scheduler)
    return DualEncoder(image_encoder, text_encoder, instantiate(cfg.loss), optimizer, scheduler)


# --- Everything that can fail on bad input, before any run dir, W&B run or Trainer exists ------------------------


def build(cfg: DictConfig) -> tuple[DualEncoder, WorldDataModule, dict[str, Any] | None]:
    """Validate `cfg`, build the data and model, read the checkpoint to resume from (if any).

    Cheap (milliseconds): constructors' own range checks (temperature > 0, ...) surface here as ConfigError.
    """
    validate(cfg)
    _check_launch(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        datamodule: WorldDataModule = instantiate(cfg.data)
        model = build_model(cfg)
        if getattr(model.loss, "hard_negatives", False) and not datamodule.negative_kinds:
            raise ConfigError(
                f"loss.hard_negatives=true needs a world with hard negatives (data=scenes), got {cfg.data._target_}"
            )
    except InstantiationException as exc:
        raise _as_config_error(exc) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    checkpoint = None
    if cfg.get("ckpt_path"):
        path = checkpoints.resolve_ckpt_path(cfg.ckpt_path)
        checkpoint = checkpoints.load_checkpoint(path)
        checkpoints.check_compatible(checkpoint, model, OmegaConf.to_container(cfg, resolve=True), path)
        checkpoint["path"] = str(path)
    return model, datamodule, checkpoint


def _check_launch(cfg: DictConfig) -> None:
    """Lightning's `ddp` strategy re-runs train.py with the same arguments for every extra device; under
    Hydra's -m each copy would run the whole sweep again. SLURM (one task per rank) and torchrun start the
    ranks themselves, and `ddp_spawn` forks from inside the job, so those are fine."""
    hydra_cfg = tracking.hydra_runtime()
    strategy = str(cfg.trainer.get("strategy", "auto"))
    launched_per_rank = any(k in os.environ for k in ("SLURM_NTASKS", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"))
    multirun = hydra_cfg is not None and hydra_cfg.mode.name == "MULTIRUN"
    if multirun and strategy.startswith("ddp") and "spawn" not in strategy and not launched_per_rank:
        raise ConfigError(
            f"trainer.strategy={strategy} re-launches train.py per device, which under -m re-runs the sweep; "
            "in a multirun use trainer.strategy=ddp_spawn or hydra/launcher=slurm"
        )


def _as_config_error(exc: InstantiationException) -> ConfigError:
    """Hydra wraps a constructor's error in three lines; keep the constructor's own message."""
    cause = exc.__cause__
    key = re.search(r"full_key: (\S+)", str(exc))
    if isinstance(cause, ValueError):
        return ConfigError(str(cause))
    where = key.group(1) if key else "config"
    return ConfigError(f"{where}: {type(cause).__name__ if cause else 'error'}: {cause or exc}")


def _discard_unused_run_dir(run_dir: Path, error: ConfigError) -> None:
    """After a config error, remove the dir Hydra made for this run if it holds only Hydra's own files,
    so no run dir looks like a run. A sweep job's dir stays, with a failed result.json, so the sweep's
    table can report the failure."""
    hydra_cfg = tracking.hydra_runtime()
    if hydra_cfg is not None and hydra_cfg.mode.name == "MULTIRUN":
        _write_result(run_dir, {"status": "failed", "error": f"ConfigError: {error}"})
        return
    if not (run_dir / ".hydra").is_dir():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Callbacks the config asks for: `stop_at_recall`, and every `_target_` entry under `callbacks`."""
    callbacks: list[L.Callback] = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    if cfg.get("stop_at_recall") is not None:
        callbacks.append(StopAtRecall(cfg.stop_at_recall))
    return callbacks


def torch_threads(requested: int | None = None) -> int:
    """Threads for this job: `requested` (the `torch_threads` key), else all cores, or an equal share when a
    parallel launcher runs several jobs.

    Oversubscribing (2 jobs x 2 threads on 2 cores) is slower than either alone, so a joblib worker
    takes cores // n_jobs. On a quiet 2-core machine the default run takes 10.5 s on 2 threads, 13.1 s on 1;
    on cores shared with other work, 1 thread can be faster (torch_threads=1).
    """
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    hydra_cfg = tracking.hydra_runtime()
    launcher = hydra_cfg.launcher if hydra_cfg is not None else {}
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else 1
    if n_jobs is None or n_jobs < 1:
        n_jobs = cores  # joblib's -1: one worker per core
    return max(1, cores // n_jobs)


def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict[str, float]:
    """Train the model `cfg` describes; returns the final epoch's metrics (val/R@1, ...).

    With `ckpt_path` set, training continues from that checkpoint (same W&B run, same batches as if never
    stopped). A bad config raises ConfigError before any W&B run or Trainer is made. Writes
    `<run_dir>/result.json` either way, {"status": "ok", "metrics": ...} or {"status": "failed", "error": ...}:
    what sweeps collect. `extra_callbacks` are appended to the Trainer's (the benchmark's timers use it).
    """
    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else None
    try:
        if run_dir is None:
            raise ConfigError("run_dir must be a directory path (train.py sets it to Hydra's output dir)")
        model, datamodule, resume_from = build(cfg)
    except ConfigError as error:
        if run_dir is not None:
            _discard_unused_run_dir(run_dir, error)
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch_threads(cfg.get("torch_threads")))
    logger: Any = False
    try:
        logger = tracking.build_logger(cfg, run_dir, checkpoints.wandb_run_id(resume_from) if resume_from else None)
        run_id = tracking.start_run(logger)
        every_s = cfg.get("checkpoint_every_s", 0)
        callbacks = [
            checkpoints.BestCheckpoint(run_dir / "checkpoints", "val/R@1", every_s=every_s),
            checkpoints.LastCheckpoint(run_dir / "checkpoints", every_s=every_s),
            checkpoints.ResumableRun(cfg.seed, OmegaConf.to_container(cfg, resolve=True), run_id),
            NonFiniteLossGuard(),
            *build_callbacks(cfg),
            *extra_callbacks,
        ]
        if cfg.get("plots") and model.text_encoder is not None:  # pictures of both embeddings; loss=cap has one
            callbacks.append(instantiate(cfg.plots))
        trainer: L.Trainer = instantiate(
            cfg.trainer,
            logger=logger,
            callbacks=callbacks,
            plugins=[checkpoints.AtomicCheckpointIO()],
            default_root_dir=str(run_dir),
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from["path"] if resume_from else None)
        if "val/R@1" not in trainer.callback_metrics:  # resumed a finished run, or the last epoch skipped val
            trainer.validate(model, datamodule=datamodule, verbose=False)
        metrics = {**model.logged, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        metrics["time/fit_s"] = time.perf_counter() - start
        metrics["model/params"] = float(sum(p.numel() for p in model.parameters() if p.requires_grad))
        if logger:
            logger.experiment.summary.update(metrics)
    except BaseException as error:
        _write_result(run_dir, {"status": "failed", "error": f"{type(error).__name__}: {error}"})
        tracking.finish(logger, exit_code=1)  # marks the W&B run failed; the next sweep job starts clean
        raise
    tracking.finish(logger, exit_code=0)
    _write_result(run_dir, {"status": "ok", "metrics": metrics})
    _print_summary(metrics, run_dir, logger)
    return metrics


@rank_zero_only
def _write_result(run_dir: Path, result: dict[str, Any]) -> None:
    """Write result.json atomically, so a reader never sees half a file."""
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(run_dir / "result.json")


@rank_zero_only
def _print_summary(metrics: dict[str, float], run_dir: Path, logger: Any) -> None:
    i2t, t2i = metrics.get("val/i2t_R@1", float("nan")), metrics.get("val/t2i_R@1", float("nan"))
    lines = [f"final val R@1  image->text {i2t:.3f}  text->image {t2i:.3f}  (gallery: the whole world)"]
    hard = {k.removeprefix("val/hn_"): v for k, v in metrics.items() if k.startswith("val/hn_")}
    if hard:
        lines.append("hard negatives " + "  ".join(f"{kind} {v:.3f}" for kind, v in hard.items()))
    lines.append(f"run dir        {run_dir}")
    if logger:
        lines.append(f"W&B run        {tracking.wandb_run_dir(run_dir)}")
    print("\n".join(lines))
