"""Stopping a run on purpose: a loss that is NaN or infinite (instead of training on garbage), and a scheduler's
warning that the job's time is nearly up (checkpoint, stop, requeue)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch

from nanovlm.run.cli import Interrupted
from nanovlm.run.config import RunError


class NonFiniteLossError(RunError):
    """The training loss became NaN or infinite; the message names the step."""


class NonFiniteLossGuard(L.Callback):
    """Stops a run whose training loss is NaN or infinite, naming the first such step.

    On the CPU the loss is checked before each backward, so the weights (and last.ckpt) never take a non-finite
    update. On an accelerator that check would cost a device-to-host sync every step (Python cannot branch on a
    GPU tensor without waiting for it), so there the first bad step is only recorded on the device and checked
    once per epoch, in `on_train_epoch_end`. That runs before the epoch's checkpoints are written: Lightning
    calls every callback that is not a `Checkpoint` before the LightningModule's hook and the `Checkpoint`
    callbacks (`checkpoints.LastCheckpoint` and `BestCheckpoint` are ones) after it, whatever their order in the
    Trainer's list. `Preemption`, which also saves there, must come after this guard in that list.

    Raising inside `fit` makes Lightning run its failure path (loggers finalised as "failed"); `train()` then
    closes the W&B run with exit code 1.

    `deferred` forces one mode (True: record and check per epoch; False: check every step); None decides by the
    loss's device.
    """

    NO_STEP = torch.iinfo(torch.int64).max  # "no bad step yet": above every step, so a min over ranks finds the first

    def __init__(self, deferred: bool | None = None) -> None:
        self.deferred = deferred
        self.batch_idx = 0
        # On the device, for the deferred mode: (global step, epoch, batch) of the first non-finite loss, and it.
        self._first: torch.Tensor | None = None
        self._first_loss: torch.Tensor | None = None

    def defers(self, loss: torch.Tensor) -> bool:
        """Whether to record on the device and check per epoch (an accelerator) instead of checking each step."""
        return self.deferred if self.deferred is not None else loss.device.type != "cpu"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first = self._first_loss = None  # a new fit starts clean

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.defers(loss):
            self._record(trainer, loss.detach())
        elif not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {self.batch_idx}); stopped before the update. "
                "Lower optimizer.lr or check loss.temperature"
            )

    def _record(self, trainer: L.Trainer, loss: torch.Tensor) -> None:
        """Keep the first non-finite loss and where it was, with device ops only: nothing here waits for the
        device (Python scalars go to `torch.where` as kernel arguments, not as host-to-device copies)."""
        if self._first is None:
            self._first = torch.full((3,), self.NO_STEP, dtype=torch.int64, device=loss.device)
            self._first_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        new = ~torch.isfinite(loss).all() & (self._first[0] == self.NO_STEP)
        for i, value in enumerate((trainer.global_step, trainer.current_epoch, self.batch_idx)):
            self._first[i] = torch.where(new, value, self._first[i])
        self._first_loss = torch.where(new, loss.float().sum(), self._first_loss)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The deferred check: one device-to-host sync an epoch. Every rank runs it and they agree, through a min
        over ranks, on the first bad step of any of them: a rank raising alone would leave the others waiting in
        the checkpoint's barrier. The steps of the ranks line up, and the bad ones recorded since the last check
        lie in one epoch, so the elementwise min is one step's (step, epoch, batch).

        No check in `on_train_end` as well: a fit that stops early (max_steps, `should_stop`) still ends its
        last epoch with this hook, and one that fails goes to `on_exception` instead.
        """
        if self._first is None:
            return
        step, epoch, batch = trainer.strategy.reduce(self._first.clone(), reduce_op="min").tolist()
        if step == self.NO_STEP:
            return
        here = int(self._first[0]) == step
        loss = self._first_loss.item() if here else "non-finite (on another rank)"
        raise NonFiniteLossError(
            f"training loss is {loss} at step {step} (epoch {epoch}, batch {batch}); on an accelerator the loss is "
            f"checked once per epoch, so epoch {trainer.current_epoch} was trained to its end: the weights after "
            f"step {step} are not trusted and epoch {trainer.current_epoch}'s last.ckpt and best.ckpt were not "
            "written. Lower optimizer.lr or check loss.temperature"
        )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Another error after a bad step the deferred check has not reached yet: say so beside it (the NaN may
        be its cause). No raise here, which would replace the error, and no collective, which a failing rank
        cannot count on."""
        if self._first is None or isinstance(exception, NonFiniteLossError):
            return
        try:
            step, epoch, batch = self._first.tolist()
        except Exception:  # a device in an error state cannot be read; the error itself says enough
            return
        if step != self.NO_STEP:
            print(
                f"note: the training loss was already non-finite at step {step} (epoch {epoch}, batch {batch}) "
                "before this error; the weights after that step are not trusted",
                file=sys.stderr,
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
