"""Checkpoint callbacks on Lightning's public API: loggers hear of every file, a deferred best.ckpt is the best
epoch's state, a NaN monitor is never best, and two processes decide the same (no rank waits at a barrier the
other never reaches).

The cadence, kill/resume and NaN-loss tests are in tests/test_reliability.py."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from nanovlm.data.shapes import ShapesDataModule
from nanovlm.evaluate.checkpoint import load_model
from nanovlm.evaluate.plots import embed_gallery
from nanovlm.evaluate.retrieval import retrieval
from nanovlm.run import checkpoints, console, tracking
from nanovlm.run.training import train
from tests.conftest import CORES

TINY = ["model.embed_dim=16", "encoder.channels=[8,16,16,16]", "text_encoder.width=16"]


def test_a_deferred_checkpoint_reaches_disk_only_on_flush_and_never_over_a_newer_one(tmp_path: Path) -> None:
    io = checkpoints.AtomicCheckpointIO()
    path = tmp_path / "best.ckpt"
    weights = torch.ones(3)
    io.save_checkpoint({"epoch": 1, "w": weights}, path, storage_options=checkpoints.DEFER)
    weights.add_(1)  # training goes on changing the live tensors
    assert not path.exists()
    assert io.flush(path) and torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert not io.flush(path)  # nothing left to write

    io.save_checkpoint({"epoch": 2}, path, storage_options=checkpoints.DEFER)
    io.save_checkpoint({"epoch": 3}, path)  # written at once: the deferred epoch 2 is now stale
    assert not io.flush(path) and torch.load(path, weights_only=True)["epoch"] == 3
    with pytest.raises(TypeError, match="storage_options must be None or 'defer'"):
        io.save_checkpoint({}, path, storage_options={"bucket": "x"})


class SpyLogger(Logger):
    """Records each `after_save_checkpoint`: which file the callback names and which epoch that file holds."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[tuple[str, int]] = []
        self.experiment = SimpleNamespace(summary={})  # train() writes the final metrics into a W&B-like summary

    name, version = "spy", "spy-0"

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        path = Path(checkpoint_callback.best_model_path or checkpoint_callback.last_model_path)
        self.heard.append((path.name, torch.load(path, weights_only=False)["epoch"]))


@pytest.mark.integration
@pytest.mark.parametrize("every_s", [0, 1e6])
def test_loggers_hear_of_every_checkpoint_written(make_cfg, monkeypatch, every_s: float) -> None:
    """Each file put on disk, last.ckpt or best.ckpt, buffered or not, is announced to the loggers once it is
    there, holding the epoch it was written for: what W&B's `log_model` needs to upload the right files."""
    written: list[tuple[str, int]] = []
    save = checkpoints.AtomicCheckpointIO.save_checkpoint
    flush = checkpoints.AtomicCheckpointIO.flush
    pending: dict[str, int] = {}

    def save_spy(self, checkpoint, path, storage_options=None) -> None:
        if storage_options == checkpoints.DEFER:
            pending[Path(path).name] = checkpoint["epoch"]
        else:
            written.append((Path(path).name, checkpoint["epoch"]))
        save(self, checkpoint, path, storage_options)

    def flush_spy(self, path) -> bool:
        if flushed := flush(self, path):
            written.append((Path(path).name, pending.pop(Path(path).name)))
        return flushed

    spy = SpyLogger()
    monkeypatch.setattr(checkpoints.AtomicCheckpointIO, "save_checkpoint", save_spy)
    monkeypatch.setattr(checkpoints.AtomicCheckpointIO, "flush", flush_spy)
    monkeypatch.setattr(tracking, "build_logger", lambda cfg, run_dir, run_id=None: spy)
    monkeypatch.setattr(tracking, "finish", lambda logger, exit_code: None)
    train(make_cfg(*TINY, "trainer.max_epochs=4", f"checkpoint_every_s={every_s}", "optimizer.lr=3e-3"))
    assert ("last.ckpt", 3) in written and any(name == "best.ckpt" for name, _ in written)
    assert spy.heard == written


class Recorder(pl.Callback):
    """The monitored value after each validation, to find the best epoch independently of BestCheckpoint."""

    def __init__(self) -> None:
        self.recalls: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.recalls.append(float(trainer.callback_metrics["val/R@1"]))


@pytest.mark.integration
def test_a_deferred_best_checkpoint_holds_the_best_epochs_weights(make_cfg) -> None:
    """With every write deferred to the end, best.ckpt must still be the state of the best epoch (not of the
    epoch it was written in): the same recall as last.ckpt only if the last epoch was the best."""
    recorder = Recorder()
    cfg = make_cfg(*TINY, "trainer.max_epochs=6", "checkpoint_every_s=1e6", "optimizer.lr=3e-3")
    train(cfg, extra_callbacks=[recorder])
    recalls = recorder.recalls
    best_epoch = max(range(len(recalls)), key=lambda e: (recalls[e], -e))  # the first epoch with the top score
    best = Path(cfg.run_dir) / "checkpoints" / "best.ckpt"
    assert torch.load(best, weights_only=False)["epoch"] == best_epoch
    model, config = load_model(best)
    dm = ShapesDataModule(**{k: v for k, v in config["data"].items() if k != "_target_"})
    out = retrieval(*embed_gallery(model, dm.images, dm.tokens), dm.val_idx)
    assert (out["i2t_R@1"] + out["t2i_R@1"]) / 2 == pytest.approx(recalls[best_epoch], abs=1e-6)


class ScriptedMonitor(pl.LightningModule):
    """A one-weight model, one batch an epoch, whose validation logs the next of `scores` as val/R@1: the monitor
    BestCheckpoint sees is whatever the test says."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return (self.w - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/R@1", self.scores[self.current_epoch], batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(1, 1)), batch_size=1)

    val_dataloader = train_dataloader


def fit_scripted(tmp_path: Path, scores: list[float], every_s: float) -> checkpoints.BestCheckpoint:
    console.quiet_libraries()  # as train() does
    best = checkpoints.BestCheckpoint(tmp_path, "val/R@1", every_s=every_s)
    trainer = pl.Trainer(
        max_epochs=len(scores), callbacks=[best], plugins=[checkpoints.AtomicCheckpointIO()], logger=False,
        accelerator="cpu", devices=1, num_sanity_val_steps=0, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(ScriptedMonitor(scores))
    return best


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("every_s", [0, 1e6])  # written at once, or kept in memory until the end
def test_a_non_finite_monitor_is_never_best(tmp_path: Path, capsys, every_s: float) -> None:
    best = fit_scripted(tmp_path, [NAN, 0.5, NAN, INF], every_s)
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["epoch"] == 1
    assert float(best.best_model_score) == 0.5 and "not written" not in capsys.readouterr().out


def test_a_monitor_never_finite_writes_no_best_checkpoint_and_says_why(tmp_path: Path, capsys) -> None:
    fit_scripted(tmp_path, [NAN, NAN], every_s=0)
    assert not (tmp_path / "best.ckpt").exists()
    assert capsys.readouterr().out.splitlines() == [
        "best.ckpt not written: val/R@1 was never finite (a captioner with loss.retrieval=false ranks nothing); "
        "last.ckpt holds the final weights"
    ]


@pytest.mark.slow
@pytest.mark.skipif(len(CORES) < 2, reason="two CPU processes need two cores (preflight refuses more)")
def test_two_processes_save_on_the_same_epochs(make_cfg, every_core) -> None:
    """DDP over 2 CPU processes: trainer.save_checkpoint ends in a barrier, so both ranks must decide alike
    (rank 0's clock decides); the run finishes and last.ckpt and best.ckpt are whole."""
    cfg = make_cfg(*TINY, "trainer=ddp_cpu", "trainer.max_epochs=3", "checkpoint_every_s=1e6")
    metrics = train(cfg)
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["epoch"] == 2
    assert 0 <= torch.load(ckpt_dir / "best.ckpt", weights_only=False)["epoch"] <= 2
    assert 0.0 <= metrics["val/R@1"] <= 1.0


def test_a_saved_nan_best_score_is_not_restored(tmp_path: Path) -> None:
    """A checkpoint from before NaN was refused can hold a NaN "best": restoring it would leave every later score
    unable to beat it (score > nan is false), so it is dropped; a finite one is kept."""
    best = checkpoints.BestCheckpoint(tmp_path, "val/R@1", every_s=0)
    best.load_state_dict({"dirpath": str(tmp_path), "best_model_score": torch.tensor(NAN)})
    assert best.best_model_score is None
    best.load_state_dict({"dirpath": str(tmp_path), "best_model_score": torch.tensor(0.25)})
    assert float(best.best_model_score) == 0.25


@pytest.mark.integration
def test_a_resumed_siglip_run_keeps_its_learned_bias(make_cfg, tmp_path: Path) -> None:
    """set_world_size (DualEncoder.setup) starts SigLIP's bias at -ln(global batch) before Lightning restores a
    checkpoint, so resuming continues from the learned bias, not from the initial one."""
    from nanovlm.run.training import build_model, train

    first = tmp_path / "first"
    train(make_cfg("loss=siglip", "trainer.max_epochs=2", "checkpoint_every_s=0", f"run_dir={first}"))
    saved = torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]["loss.logit_bias"]
    assert abs(float(saved) - (-math.log(64))) > 1e-3  # the bias did move, so the check below can tell
    cfg = make_cfg("loss=siglip", "trainer.max_epochs=3", f"ckpt_path={first}", f"run_dir={tmp_path / 'second'}")
    seen: list[float] = []

    class BiasAtStart(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen.append(float(pl_module.loss.logit_bias.detach()))

    train(cfg, extra_callbacks=[BiasAtStart()])  # one more epoch from the checkpoint
    fresh = build_model(cfg).loss.logit_bias.detach()
    assert float(fresh) == pytest.approx(-math.log(64))  # a fresh model starts at the rule
    assert seen == [pytest.approx(float(saved), abs=0)]
