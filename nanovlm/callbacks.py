"""Small Lightning callbacks the config can switch on: early stopping at a target recall.

`stop_at_recall: 0.95` in the config ends a run at the first validation whose val/R@1 (the mean of
both directions) reaches the target: sweeps and benchmarks that only need "good enough" stop paying
for epochs that cannot improve the answer.
"""

from __future__ import annotations

import lightning as L

from nanovlm.config import check_value


class StopAtRecall(L.Callback):
    """Stop training after the first validation epoch with val/R@1 >= `target`."""

    def __init__(self, target: float, monitor: str = "val/R@1") -> None:
        check_value("stop_at_recall", target)  # the range lives in nanovlm.config.RULES
        self.target, self.monitor = target, monitor
        self.stopped_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) >= self.target and not trainer.sanity_checking:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
