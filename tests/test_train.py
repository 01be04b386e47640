"""End-to-end: the CLI as a user runs it, and the default config actually learning."""

import json
import math
from pathlib import Path

import pytest
import torch

from nanovlm.run.training import train
from tests.conftest import inspect_wandb_run, wandb_records


@pytest.mark.slow
def test_train_py_runs_end_to_end_and_logs_to_wandb_offline(default_cli_run, make_cfg) -> None:
    run_dir, result = default_cli_run
    defaults = make_cfg()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final val R@1" in result.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    # How the run read its texts, beside the checkpoints and inside them: what evaluation and resume rebuild.
    from nanovlm.data.shapes import ShapesDataModule

    tokenizer = json.loads((run_dir / "tokenizer.json").read_text())
    assert tokenizer == ShapesDataModule.world_tokenizer().state()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["nanovlm"]["tokenizer"] == tokenizer
    run = inspect_wandb_run(run_dir)
    assert run["state"] == "finished" and run["project"] == "nanovlm" and run["name"] == "cnn-mean-clip"
    assert run["config"]["model"]["embed_dim"] == defaults.model.embed_dim  # the composed config, as W&B's config
    assert run["config"]["loss"]["temperature"] == defaults.loss.temperature
    assert run["config"]["encoder"]["_target_"] == "nanovlm.models.image.CNNEncoder"
    summary = run["summary"]
    assert summary["epoch"] == 1
    keys = ("train/loss", "train/lr", "val/i2t_R@5", "val/t2i_R@10", "val/i2t_median_rank")
    for key in keys:
        assert key in summary, key
    assert "val/i2t_R@1" in summary and "val/t2i_R@1" in summary
    assert 0 <= summary["val/t2i_R@1"] <= 1
    assert summary["train/temperature"] == pytest.approx(defaults.loss.temperature, rel=1e-5)
    # logger.log_model: both checkpoints became model artifacts of the run, best.ckpt with the "best" alias.
    artifacts = {json.loads(a["metadata"])["original_filename"]: a for a in wandb_records(run_dir, "artifact")}
    assert set(artifacts) == {"best.ckpt", "last.ckpt"}
    assert "best" in artifacts["best.ckpt"]["aliases"] and "best" not in artifacts["last.ckpt"]["aliases"]
    for name, artifact in artifacts.items():
        (entry,) = artifact["manifest"]["contents"]
        assert int(entry["size"]) == (run_dir / "checkpoints" / name).stat().st_size


@pytest.mark.slow
def test_default_config_learns_to_high_recall(make_cfg) -> None:
    """The shipped defaults (cnn / mean / clip) retrieve unseen pairs from the full 243 gallery."""
    cfg = make_cfg()
    metrics = train(cfg)
    assert metrics["val/i2t_R@1"] >= 0.95 and metrics["val/t2i_R@1"] >= 0.95, metrics
    assert metrics["val/i2t_median_rank"] == 1.0
    state = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert state["epoch"] == cfg.trainer.max_epochs - 1


@pytest.mark.integration
@pytest.mark.parametrize("monitor", ["val/loss", "val/R@1", "train/loss"])
def test_config_callbacks_can_monitor_the_epoch_metrics(make_cfg, monitor: str) -> None:
    """Metrics a user's EarlyStopping or ModelCheckpoint can watch must go through self.log (callback_metrics),
    not only straight to the loggers: otherwise Lightning stops at the first check ('metric not available')."""
    cfg = make_cfg(
        "trainer.max_epochs=3", "plots=none",
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping", f"+callbacks.stop.monitor={monitor}",
        "+callbacks.stop.patience=5",
    )  # fmt: skip
    assert math.isfinite(train(cfg)[monitor])


@pytest.mark.integration
def test_gradient_clipping_under_mixed_precision_runs_with_the_fused_optimizer_config(make_cfg) -> None:
    """Fused Adam unscales gradients itself, so Lightning refuses to clip them under mixed precision; the model
    then builds the unfused step (with a warning) instead of crashing."""
    clip = ("trainer.precision=bf16-mixed", "+trainer.gradient_clip_val=1.0")
    cfg = make_cfg("trainer.max_epochs=1", "plots=none", *clip)
    assert cfg.optimizer.fused
    with pytest.warns(UserWarning, match="optimizer.fused=true cannot clip gradients under mixed precision"):
        metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])
