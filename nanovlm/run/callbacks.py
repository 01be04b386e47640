"""Small Lightning callbacks: early stopping at a target recall, validating the last epoch, and the model summary
printed at fit start.

`stop_at_recall: 0.95` in the config ends a run at the first validation whose val/R@1 (the mean of
both directions) reaches the target: sweeps and benchmarks that only need "good enough" stop paying
for epochs that cannot improve the answer.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from nanovlm.run.config import check_value


class StopAtRecall(L.Callback):
    """Stop training after the first validation epoch with val/R@1 >= `target`."""

    def __init__(self, target: float, monitor: str = "val/R@1") -> None:
        check_value("stop_at_recall", target)  # the range lives in nanovlm.run.config.RULES
        self.target, self.monitor = target, monitor
        self.stopped_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) >= self.target and not trainer.sanity_checking:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch


class ValidateLastEpoch(L.Callback):
    """Validate the last epoch even when `trainer.check_val_every_n_epoch` skips it (data=scenes validates every 5
    epochs; `trainer.max_epochs=7` would otherwise end on epoch 5's numbers). The final val/* metrics, result.json,
    the W&B summary and best.ckpt's last chance then all come from the weights last.ckpt holds. It runs inside fit,
    before the epoch's checkpoints, by validating every epoch from the last one's start on."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1
        if last and trainer.check_val_every_n_epoch is not None:
            trainer.check_val_every_n_epoch = 1


class ParamSummary(ModelSummary):
    """Lightning's model summary table (`trainer.enable_model_summary`), with a FLOPs column and total only when
    FLOPs were counted. Lightning counts them only for a module with an `example_input_array` (ours take a batch
    dict) and otherwise prints a column of zeros ending in `Total FLOPs: 0`."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        *_: Any,  # total_training_modes, in the Lightning versions that pass it
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs" or total_flops]
        table = Table(header_style="bold magenta")
        for name, _ in columns:
            table.add_column(name, style="dim" if name == " " else "", justify="right" if name == "Params" else "left")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        frozen = total_parameters - trainable_parameters
        line = f"{_count(trainable_parameters)} trainable parameters, {_count(frozen)} frozen, {model_size:.2f} MB"
        if total_flops:
            line += f", {_count(total_flops)} FLOPs per forward pass"
        console = get_console()
        console.print(table)
        console.print(line)


def _count(n: float) -> str:
    return get_human_readable_count(int(n)).strip()  # "281 K"; Lightning pads it for its own table
