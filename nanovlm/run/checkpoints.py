"""Checkpoints that survive a crash, and resuming from them to the same result as an uninterrupted run.

Three things make `ckpt_path=<last.ckpt>` exact:
- `AtomicCheckpointIO` writes each checkpoint beside its final path and renames it into place. Lightning's own
  save goes through an fsspec transaction whose temp file lives in the system temp dir; when that is another
  filesystem (tmpfs /tmp, a cluster's local disk) the final "move" is a copy, and a kill during it leaves a
  truncated last.ckpt.
- `ResumableRun` reseeds torch before every epoch from (seed, epoch). Lightning does not checkpoint the
  global RNG that the DataLoader's shuffle draws from, so without this a resumed run sees other batches.
- `ResumableRun` also stores the W&B run id and the resolved config in the checkpoint: the resumed run logs to
  the same W&B run, a checkpoint of another model is refused with a message instead of a shape error, and
  `nanovlm.evaluate` rebuilds the right encoders from the checkpoint alone (reading it back: nanovlm.run.saved).

`LastCheckpoint` and `BestCheckpoint` decide *when* to save and go through Lightning's public API only:
`trainer.save_checkpoint` from the `on_train_epoch_end` hook, then `logger.after_save_checkpoint` so that loggers
(W&B's `log_model`) hear of every file. docs/checkpoints.md has the design.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from nanovlm.run.config import check_value
from nanovlm.run.saved import CHECKPOINT_KEY

# `trainer.save_checkpoint(path, storage_options=DEFER)`: keep the checkpoint in memory, write it on `flush(path)`.
DEFER = "defer"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to `<path>.tmp` in the same directory, fsync, then os.replace: the file at `path` is always
    either the previous complete checkpoint or the new complete one.

    With `storage_options=DEFER` the checkpoint is kept in memory instead, its tensors copied (training goes on
    changing the live ones), replacing any earlier deferred one for the same path; `flush(path)` writes it. That
    is how `BestCheckpoint` keeps an improvement without paying for a disk write: Lightning hands a checkpoint's
    dict only to the CheckpointIO plugin, and `storage_options` is its documented way to pass the plugin an
    instruction. Copying the tensors costs less than serialising them (docs/checkpoints.md).
    """

    def __init__(self) -> None:
        super().__init__()
        self._deferred: dict[str, dict[str, Any]] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage: keep Lightning's fsspec transaction
            return super().save_checkpoint(checkpoint, path, None)
        if storage_options == DEFER:
            self._deferred[str(path)] = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone())
            return None
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO: storage_options must be None or {DEFER!r}, got {storage_options!r}")
        self._deferred.pop(str(path), None)  # an older deferred checkpoint must not overwrite this one later
        return _write_atomically(checkpoint, Path(path))

    def flush(self, path: Any) -> bool:
        """Write the checkpoint deferred for `path`, if there is one; True when a file was written."""
        checkpoint = self._deferred.pop(str(path), None)
        if checkpoint is None:
            return False
        _write_atomically(checkpoint, Path(path))
        return True


def _write_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _EpochEndCheckpoint(Checkpoint):
    """Shared by the two checkpoint callbacks: where the file goes, how it is written, who is told.

    Subclassing `Checkpoint` (not `ModelCheckpoint`) tells the Trainer that checkpointing is taken care of (no
    default ModelCheckpoint is added) and runs `on_train_epoch_end` after the LightningModule's own hook and after
    the other callbacks', so `trainer.should_stop` and this epoch's validation metrics are final by then.
    The attributes below are the ones Lightning's loggers read from a checkpoint callback in
    `after_save_checkpoint` (WandbLogger's `log_model` uploads the files they name).
    """

    save_top_k = 1
    save_weights_only = False
    best_model_path = ""  # best.ckpt once on disk; WandbLogger reads it from every checkpoint callback

    def __init__(self, dirpath: Path, filename: str, every_s: float) -> None:
        check_value("checkpoint_every_s", every_s)  # the range lives in nanovlm.run.config.RULES
        self.dirpath, self.every_s = Path(dirpath), every_s
        self.path = self.dirpath / f"{filename}.ckpt"
        self.written_at = -math.inf  # time.monotonic() of the last write to disk

    def due(self) -> bool:
        return time.monotonic() - self.written_at >= self.every_s

    def save(self, trainer: L.Trainer, defer: bool = False) -> None:
        """Every rank must call this (trainer.save_checkpoint ends in a barrier); rank 0 writes."""
        trainer.save_checkpoint(self.path, weights_only=False, storage_options=DEFER if defer else None)
        if not defer:
            self.written(trainer)

    def written(self, trainer: L.Trainer) -> None:
        self.written_at = time.monotonic()
        for logger in trainer.loggers:
            logger.after_save_checkpoint(self)


class LastCheckpoint(_EpochEndCheckpoint):
    """`last.ckpt` at the end of an epoch, at most every `every_s` seconds, and always at the run's last epoch
    (max_epochs or max_steps reached, or a callback stopping it): an epoch of the default model is far shorter
    than a checkpoint is worth writing for, and a kill loses at most `every_s` of training. `every_s=0` writes
    every epoch."""

    def __init__(self, dirpath: Path, every_s: float) -> None:
        super().__init__(dirpath, "last", every_s)
        self.last_model_path, self.current_score = "", None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # One decision for all ranks (the clocks differ): rank 0's.
        if trainer.strategy.broadcast(_is_last_epoch(trainer) or self.due()):
            self.save(trainer)

    def written(self, trainer: L.Trainer) -> None:
        self.last_model_path = str(self.path)
        super().written(trainer)


def _is_last_epoch(trainer: L.Trainer) -> bool:
    """Whether the fit ends after this epoch. Limits of -1 or None mean none."""
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    return (
        trainer.should_stop
        or (max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs)
        or (max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps)
    )


class BestCheckpoint(_EpochEndCheckpoint):
    """`best.ckpt`, the epoch with the highest `monitor`. Early in a run nearly every validation improves, so an
    improvement is kept in memory (copied by `AtomicCheckpointIO`, no disk write) and written once `every_s`
    seconds have passed since the last write, at the end of training, and when training fails. `every_s=0` writes
    each one at once.

    A NaN or infinite monitor is never an improvement: NaN compares false with everything, so a first NaN taken
    as best would stay best for the whole run (val/R@1 is NaN for a captioner with loss.retrieval=false, which
    ranks nothing). A run whose monitor comes but is never finite writes no best.ckpt and says so at the end.

    `monitor=None` takes the module's own `monitor` at the start of fit, after its setup: a captioner that does not
    rank the gallery (loss.retrieval=auto on a large world, decided in its setup) keeps val/caption_exact."""

    mode = "max"

    def __init__(self, dirpath: Path, monitor: str | None, every_s: float) -> None:
        super().__init__(dirpath, "best", every_s)
        self.monitor = monitor or "val/R@1"
        self.monitor_from_module = monitor is None
        self.best_model_score: torch.Tensor | None = None
        self.defer = True
        self.saw_non_finite = False  # a monitor value came, but not a finite one (the end-of-training line)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.defer = isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # else: write at once

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor_from_module:
            self.monitor = getattr(pl_module, "monitor", self.monitor)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        finite = score is not None and bool(torch.isfinite(score).all())
        self.saw_non_finite |= score is not None and not finite
        improved = finite and (self.best_model_score is None or bool(score > self.best_model_score))
        # One decision for all ranks (the metric is synced, the clocks are not): rank 0's.
        improved, due = trainer.strategy.broadcast((improved, self.due()))
        if improved:
            self.best_model_score = score.detach().clone()
            self.save(trainer, defer=self.defer and not due)
        elif due:
            self.flush(trainer)  # an improvement kept since the last write: on disk now, not only at the end

    def flush(self, trainer: L.Trainer) -> None:
        """Write a kept improvement (rank 0 holds it; no barrier, so no rank waits for another)."""
        if self.defer and trainer.is_global_zero and trainer.strategy.checkpoint_io.flush(self.path):
            self.written(trainer)

    def written(self, trainer: L.Trainer) -> None:
        self.best_model_path = str(self.path)
        super().written(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer)
        if self.best_model_score is None and self.saw_non_finite and trainer.is_global_zero:
            why = f"{self.monitor} was never finite"
            if self.monitor.startswith("val/R@"):
                why += " (a captioner with loss.retrieval=false ranks nothing)"  # auto would have monitored captions
            print(f"{self.path.name} not written: {why}; last.ckpt holds the final weights")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.flush(trainer)

    # A run resumed into the same directory keeps comparing against the best score already on disk there; one
    # resumed into a new run dir (the default) starts that dir's best.ckpt afresh.
    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": str(self.dirpath), "best_model_score": self.best_model_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        score = state_dict.get("best_model_score")
        if state_dict.get("dirpath") == str(self.dirpath) and (score is None or bool(torch.isfinite(score).all())):
            self.best_model_score = score  # a NaN "best" from before NaN was refused would never be beaten


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed for one epoch: a function of (seed, epoch) only, distinct across nearby seeds."""
    return seed * 1_000_003 + epoch


class ResumableRun(L.Callback):
    """Per-epoch reseeding and run metadata in every checkpoint (see the module docstring)."""

    def __init__(
        self, seed: int, config: dict[str, Any], wandb_run_id: str | None, tokenizer: dict[str, Any] | None = None
    ) -> None:
        self.seed, self.config, self.wandb_run_id, self.tokenizer = seed, config, wandb_run_id, tokenizer
        self._resumed = False

    # The DataLoader draws its shuffle seed from the global torch RNG when its iterator is made: for the first
    # epoch of a fit (fresh or resumed) that happens before `on_train_epoch_start`, for later epochs after
    # `on_train_epoch_end`. So the seed for epoch e is set at fit start, when a checkpoint is loaded, and at
    # the end of epoch e - 1: in every case nothing draws from the RNG between the seeding and the shuffle.
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._resumed:
            torch.manual_seed(epoch_seed(self.seed, 0))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._resumed = True  # checkpoints are saved at the end of an epoch: training goes on with the next
        torch.manual_seed(epoch_seed(self.seed, checkpoint["epoch"] + 1))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(epoch_seed(self.seed, trainer.current_epoch + 1))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        meta = {"config": self.config, "wandb_run_id": self.wandb_run_id}
        if self.tokenizer is not None:  # how its texts were read: evaluation and resume read them the same way
            meta["tokenizer"] = self.tokenizer
        checkpoint[CHECKPOINT_KEY] = meta
