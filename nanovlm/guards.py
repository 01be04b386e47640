"""Stopping a run on purpose: a loss that is NaN or infinite (instead of training on garbage), and a scheduler's
warning that the job's time is nearly up (checkpoint, stop, requeue)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch

from nanovlm.cli import Interrupted
from nanovlm.config import RunError


class NonFiniteLossError(RunError):
    """The training loss became NaN or infinite; the message names the step."""


class NonFiniteLossGuard(L.Callback):
    """Checks the loss before backward, so the weights (and last.ckpt) never take a non-finite update.

    Raising inside `fit` makes Lightning run its failure path (loggers finalised as "failed"); `train()` then
    closes the W&B run with exit code 1.
    """

    def __init__(self) -> None:
        self.batch_idx = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {self.batch_idx}); stopped before the update. "
                "Lower optimizer.lr or check loss.temperature"
            )


# SIGUSR2 is what submitit (hydra/launcher=slurm) asks SLURM to send before the time limit; SIGUSR1 is the
# signal of the `#SBATCH --signal=USR1@90` convention that Lightning's own SLURM requeue listens for.
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class Preempted(Interrupted):
    """The scheduler's warning before its time limit arrived; the run saved `checkpoint` and stopped."""

    def __init__(self, signum: int, checkpoint: Path, epoch: int, launcher_handler: Any) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            signum,
            f"{name} (the scheduler's time limit is near) after epoch {epoch}: saved {checkpoint}; "
            "the same command with the same run dir resumes it",
        )
        self.checkpoint, self.launcher_handler = checkpoint, launcher_handler

    def requeue(self) -> None:
        """Hand the job back to the scheduler once the checkpoint is on disk: the launcher's own handler if it
        had one (submitit's requeues the job with the same config, then exits), else `scontrol requeue` when
        this is a SLURM job. A local run just stops; running the same command again resumes it."""
        if callable(self.launcher_handler):
            self.launcher_handler(self.signum, None)
            return
        job = os.environ.get("SLURM_JOB_ID")
        if job is None or int(os.environ.get("SLURM_PROCID", "0")) != 0:
            return
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        subprocess.run(["scontrol", "requeue", job], check=False)


class Preemption(L.Callback):
    """On a pre-timeout signal, finish the current epoch, save `last_ckpt` there and stop.

    An epoch boundary, not the middle of one, because that is where a resumed run continues exactly (see
    checkpoints.ResumableRun); an epoch here is short against the warning time SLURM gives (--signal=USR1@<seconds>).
    The handler itself only records the signal: whatever the main thread was doing finishes undisturbed.
    """

    def __init__(self, last_ckpt: Path) -> None:
        self.last_ckpt = last_ckpt
        self.signum: int | None = None
        self.saved_epoch: int | None = None
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():  # Python allows signal handlers only there
            self._previous = {s: signal.signal(s, self._record) for s in REQUEUE_SIGNALS}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Rank 0's signal decides for all ranks: saving is collective.
        if trainer.strategy.broadcast(self.signum is not None):
            trainer.should_stop = True
            trainer.save_checkpoint(self.last_ckpt)
            self.saved_epoch = trainer.current_epoch

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def stopped(self) -> Preempted | None:
        """The Preempted to raise after fit if a signal stopped it, else None."""
        if self.saved_epoch is None:
            return None
        signum = self.signum if self.signum is not None else signal.SIGUSR1
        return Preempted(signum, self.last_ckpt, self.saved_epoch, self._previous.get(signum))
