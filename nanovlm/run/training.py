"""train(cfg): the one place that turns a composed config into objects and runs Trainer.fit."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nanovlm.data.datamodule import WorldDataModule
from nanovlm.data.tokenizer import TextTokenizer
from nanovlm.run import checkpoints, console, preflight, saved, tracking
from nanovlm.run.callbacks import ParamSummary, StopAtRecall, ValidateLastEpoch
from nanovlm.run.cli import write_result
from nanovlm.run.config import ConfigError, hydra_runtime, validate
from nanovlm.run.guards import NonFiniteLossGuard, Preempted, Preemption
from nanovlm.tasks.dual_encoder import DualEncoder, check_hard_negatives


def build_model(cfg: DictConfig, tokenizer: TextTokenizer | None = None) -> DualEncoder:
    """Instantiate the task that `cfg` describes (also used to rebuild from a checkpoint).

    The text side is sized by the tokenizer (the datamodule's; a checkpoint's saved one; by default the world's
    closed word tokenizer, `data._target_`'s class attributes): its vocabulary size, its padding id for encoders
    that take one, and its number of positions where the config leaves an encoder's `max_len` unset. So every
    dataset fits every encoder. The task is `model._target_` (conf/model/: dual_encoder, or captioner, which
    loss=cap, cappa and coca choose themselves); its `from_config` builds the objective, whose needs depend on it.
    """
    if tokenizer is None:
        tokenizer = get_class(cfg.data._target_).world_tokenizer()
    text_class = get_class(cfg.text_encoder._target_)
    takes = inspect.signature(text_class).parameters
    text_sizes: dict[str, Any] = {"vocab_size": tokenizer.vocab_size}
    if "max_len" in takes and cfg.text_encoder.get("max_len") is None:
        text_sizes["max_len"] = tokenizer.max_len
    if "pad_id" in takes:
        text_sizes["pad_id"] = tokenizer.pad_id
    image_encoder = instantiate(cfg.encoder)
    text_encoder = instantiate(cfg.text_encoder, **text_sizes)
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task: type[DualEncoder] = get_class(cfg.model._target_)
    model = task.from_config(cfg, tokenizer, image_encoder, text_encoder, optimizer, scheduler)
    model.tokenizer = tokenizer  # how the model reads text: what evaluation encodes a query with
    return model


# --- Everything that can fail on bad input, before any run dir, W&B run or Trainer exists ------------------------


def build(cfg: DictConfig) -> tuple[DualEncoder, WorldDataModule, dict[str, Any] | None]:
    """Validate `cfg`, build the data and model, read the checkpoint to resume from (if any).

    Cheap (tens of milliseconds): whatever a constructor, torch's optimizer or Lightning's Trainer would refuse
    later surfaces here as one ConfigError, before a run dir, a W&B run or a worker process exists.
    """
    validate(cfg)
    preflight.check(cfg)
    preflight.check_trainer(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        datamodule: WorldDataModule = instantiate(cfg.data)
        model = build_model(cfg, datamodule.tokenizer)
        check_hard_negatives(model.loss, datamodule)  # a ValueError: one ConfigError line below
    except InstantiationException as exc:
        raise _as_config_error(exc) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    checkpoint = None
    ckpt_path = cfg.get("ckpt_path") or preempted_checkpoint(Path(cfg.run_dir) if cfg.get("run_dir") else None)
    if ckpt_path:
        path = saved.resolve_ckpt_path(str(ckpt_path))
        checkpoint = saved.load_checkpoint(path)
        saved.check_compatible(checkpoint, model, OmegaConf.to_container(cfg, resolve=True), path)
        saved.check_tokenizer(checkpoint, datamodule.tokenizer, "ckpt_path", path)
        checkpoint["path"] = str(path)
    return model, datamodule, checkpoint


def preempted_checkpoint(run_dir: Path | None) -> Path | None:
    """The last.ckpt to continue from when this run dir's previous run was stopped by a scheduler: its
    result.json says "preempted" (see guards.Preemption), or SLURM requeued this job (SLURM_RESTART_COUNT).
    A requeued job runs the same command in the same dir, so it picks up where it stopped, in the same W&B run."""
    if run_dir is None:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    result = run_dir / "result.json"
    preempted = result.is_file() and json.loads(result.read_text()).get("status") == "preempted"
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    return last if (preempted or requeued) and last.is_file() else None


def _as_config_error(exc: InstantiationException) -> ConfigError:
    """Hydra wraps a constructor's error in three lines; keep the constructor's own message."""
    cause = exc.__cause__
    key = re.search(r"full_key: (\S+)", str(exc))
    if isinstance(cause, ValueError):
        return ConfigError(" ".join(str(cause).split()))
    where = key.group(1) if key else "config"
    return ConfigError(f"{where}: {type(cause).__name__ if cause else 'error'}: {cause or exc}")


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
    takes cores // n_jobs. On quiet cores all threads are fastest; on cores shared with other work, 1 thread can
    be faster (torch_threads=1; measurements in docs/performance.md).
    """
    if requested is not None:
        return requested
    cores = preflight.available_cores()
    hydra_cfg = hydra_runtime()
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
    if run_dir is None:
        raise ConfigError("run_dir must be a directory path (train.py sets it to Hydra's output dir)")
    model, datamodule, resume_from = build(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_state = datamodule.tokenizer.state()
    _write_tokenizer(run_dir, tokenizer_state)  # beside the checkpoints, readable without torch
    console.quiet_libraries()
    torch.set_num_threads(torch_threads(cfg.get("torch_threads")))
    logger: Any = False
    try:
        logger = tracking.build_logger(cfg, run_dir, saved.wandb_run_id(resume_from) if resume_from else None)
        every_s = cfg.get("checkpoint_every_s", 0)
        callbacks = [
            checkpoints.BestCheckpoint(run_dir / "checkpoints", None, every_s=every_s),  # None: the model's monitor
            checkpoints.LastCheckpoint(run_dir / "checkpoints", every_s=every_s),
            checkpoints.ResumableRun(
                cfg.seed, OmegaConf.to_container(cfg, resolve=True), tracking.run_id(logger), tokenizer_state
            ),
            NonFiniteLossGuard(),
            ValidateLastEpoch(),
            preemption := Preemption(run_dir / "checkpoints" / "last.ckpt"),
            *build_callbacks(cfg),
            *extra_callbacks,
        ]
        # Pictures of both embeddings (loss=cap has one), or a task's own (`has_pictures`: VQA's example answers).
        if cfg.get("plots") and getattr(model, "has_pictures", model.text_encoder is not None):
            callbacks.append(instantiate(cfg.plots))
        # Lightning's own summary would end in `Total FLOPs: 0` (see ParamSummary); ours replaces it.
        if cfg.trainer.get("enable_model_summary", True):
            callbacks.append(ParamSummary())
        trainer: L.Trainer = instantiate(
            cfg.trainer,
            logger=logger,
            callbacks=callbacks,
            plugins=[checkpoints.AtomicCheckpointIO()],
            default_root_dir=str(run_dir),
            enable_model_summary=False,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from["path"] if resume_from else None)
        if (preempted := preemption.stopped()) is not None:  # the scheduler's time is nearly up: it requeues us
            raise preempted
        # The final numbers are the final weights': validate again if the last validation was at an earlier step
        # (stopped by max_steps or max_time) or never (a resumed finished run). Under ddp_spawn the workers'
        # validated_step does not come back to this process (callback_metrics do), so there it is None.
        if model.validated_step is not None:
            stale = model.validated_step != trainer.global_step
        else:
            stale = getattr(model, "monitor", "val/R@1") not in trainer.callback_metrics
        if stale:
            trainer.validate(model, datamodule=datamodule, verbose=False)
        metrics = {**model.logged, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        metrics["time/fit_s"] = time.perf_counter() - start
        metrics["model/params"] = float(sum(p.numel() for p in model.parameters() if p.requires_grad))
        if logger:
            logger.experiment.summary.update(metrics)
    except Preempted as error:
        _write_result(run_dir, {"status": "preempted", "error": str(error), "checkpoint": str(error.checkpoint)})
        tracking.finish(logger, exit_code=1, preempting=True)  # the requeued job resumes this W&B run
        error.requeue()
        raise
    except BaseException as error:
        _write_result(run_dir, {"status": "failed", "error": f"{type(error).__name__}: {error}"})
        tracking.finish(logger, exit_code=1)  # marks the W&B run failed; the next sweep job starts clean
        raise
    tracking.finish(logger, exit_code=0)
    _write_result(run_dir, {"status": "ok", "metrics": metrics})
    scope = "the whole world" if getattr(datamodule, "gallery_choice", "world") == "world" else "the val split"
    _print_summary(metrics, run_dir, logger, scope, getattr(model, "summary_lines", None))
    return metrics


_write_result = rank_zero_only(write_result)


@rank_zero_only
def _write_tokenizer(run_dir: Path, state: dict[str, Any]) -> None:
    (run_dir / "tokenizer.json").write_text(json.dumps(state, indent=1))


@rank_zero_only
def _print_summary(
    metrics: dict[str, float],
    run_dir: Path,
    logger: Any,
    gallery: str,
    task_lines: Callable[[dict], list[str]] | None = None,
) -> None:
    """The end-of-run lines: retrieval recall (or a captioner's exact captions), or what the task says
    (`summary_lines`: VQA's accuracy), then where the run is."""
    i2t, t2i = metrics.get("val/i2t_R@1", float("nan")), metrics.get("val/t2i_R@1", float("nan"))
    lines = [f"final val R@1  image->text {i2t:.3f}  text->image {t2i:.3f}  (gallery: {gallery})"]
    if math.isnan(i2t) and math.isnan(t2i) and "val/caption_exact" in metrics:  # a captioner that did not rank
        lines = [f"final val      caption exact {metrics['val/caption_exact']:.3f}  (R@1 not measured: loss.retrieval)"]
    if task_lines is not None:
        lines = task_lines(metrics)
    hard = {k.removeprefix("val/hn_"): v for k, v in metrics.items() if k.startswith("val/hn_")}
    if hard:
        lines.append("hard negatives " + "  ".join(f"{kind} {v:.3f}" for kind, v in hard.items()))
    lines.append(f"run dir        {run_dir}")
    if logger:
        lines.append(f"W&B run        {tracking.wandb_run_dir(run_dir)}")
    print("\n".join(lines))
