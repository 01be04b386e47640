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
  `nanovlm.evaluate` rebuilds the right encoders from the checkpoint alone.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from nanovlm.config import ConfigError

# Config sections that decide the model's parameters: a checkpoint only fits a model built from the same ones.
MODEL_SECTIONS = ("model", "encoder", "text_encoder", "loss")
CHECKPOINT_KEY = "nanovlm"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to `<path>.tmp` in the same directory, fsync, then os.replace: the file at `path` is always
    either the previous complete checkpoint or the new complete one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage: keep Lightning's fsspec transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` at the end of an epoch, at most every `every_s` seconds, and always at the run's last
    epoch (max_epochs reached or a callback stopping it). Written every epoch, it would be the largest framework cost
    (docs/performance.md). A kill loses at most `every_s` of training.
    `every_s=0` writes every epoch. (Lightning's `save_last` only fires on improving epochs.)"""

    def __init__(self, dirpath: Path, every_s: float) -> None:
        if every_s < 0:
            raise ValueError(f"checkpoint_every_s must be >= 0, got {every_s}")
        super().__init__(dirpath=dirpath, filename="last", monitor=None)
        self.every_s, self._saved_at = every_s, -math.inf

    def _should_skip_saving_checkpoint(self, trainer: L.Trainer) -> bool:
        if super()._should_skip_saving_checkpoint(trainer):
            return True
        final = trainer.should_stop or trainer.max_epochs is None or trainer.current_epoch + 1 >= trainer.max_epochs
        due = time.monotonic() - self._saved_at >= self.every_s
        return not trainer.strategy.broadcast(final or due)  # one decision for all ranks: saving has a barrier

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._saved_at = time.monotonic()


class BestCheckpoint(ModelCheckpoint):
    """`best.ckpt`, the epoch with the highest `monitor`. Early in a run nearly every validation improves, so
    an improvement is first kept in memory (a cheap copy of the checkpoint) and written at most every
    `every_s` seconds, at the end of training, and when training fails. `every_s=0` writes each one at once."""

    def __init__(self, dirpath: Path, monitor: str, every_s: float) -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor=monitor, mode="max")
        self.every_s, self._written_at = every_s, -math.inf
        self._pending: tuple[dict[str, Any], str] | None = None

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
        self._pending = (apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone()), filepath)
        self._last_global_step_saved, self._last_checkpoint_saved = trainer.global_step, filepath
        if time.monotonic() - self._written_at >= self.every_s:
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if self._pending is not None:
            trainer.strategy.save_checkpoint(*self._pending)  # rank 0 writes; no barrier, so no rank waits
            self._pending, self._written_at = None, time.monotonic()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._write(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._write(trainer)


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed for one epoch: a function of (seed, epoch) only, distinct across nearby seeds."""
    return seed * 1_000_003 + epoch


class ResumableRun(L.Callback):
    """Per-epoch reseeding and run metadata in every checkpoint (see the module docstring)."""

    def __init__(self, seed: int, config: dict[str, Any], wandb_run_id: str | None) -> None:
        self.seed, self.config, self.wandb_run_id = seed, config, wandb_run_id
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
        checkpoint[CHECKPOINT_KEY] = {"config": self.config, "wandb_run_id": self.wandb_run_id}


def resolve_ckpt_path(ckpt_path: str) -> Path:
    """`ckpt_path` may name a checkpoint file or a run dir (then its checkpoints/last.ckpt)."""
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file ({path})")
    return path


def load_checkpoint(path: Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Read a checkpoint on the CPU; a truncated or foreign file becomes a ConfigError naming it."""
    try:
        # weights_only: tensors and plain containers only, no arbitrary code from the pickle.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"{key}={path}: not a readable checkpoint, it may be truncated or corrupt "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
            "try best.ckpt beside it"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}={path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def saved_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The resolved config the checkpoint's run was trained with (None for a foreign checkpoint)."""
    return checkpoint.get(CHECKPOINT_KEY, {}).get("config")


def check_compatible(checkpoint: dict[str, Any], model: torch.nn.Module, config: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another model, naming the config keys (or parameters) that differ."""
    saved = saved_config(checkpoint)
    if saved is not None:
        diffs = _diff(*({k: c.get(k) for k in MODEL_SECTIONS} for c in (saved, config)))
        if diffs:
            shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs[:3])
            raise ConfigError(f"ckpt_path={path} was trained with a different model: {shown}")
    ours = model.state_dict()
    theirs = checkpoint["state_dict"]
    for name in sorted(set(ours) | set(theirs)):
        a, b = theirs.get(name), ours.get(name)
        if a is None or b is None or a.shape != b.shape:
            got = "missing" if a is None else list(a.shape)
            want = "missing" if b is None else list(b.shape)
            raise ConfigError(f"ckpt_path={path} does not fit the model: {name} is {got} in it, {want} in the model")


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [(prefix, a, b)]


def wandb_run_id(checkpoint: dict[str, Any]) -> str | None:
    return checkpoint.get(CHECKPOINT_KEY, {}).get("wandb_run_id")
