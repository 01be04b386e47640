"""Stop a run whose loss is NaN or infinite instead of training on garbage."""

from __future__ import annotations

import lightning as L
import torch

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
