"""The layout's old spellings: a checkpoint of the flat layout still evaluates, an old `_target_` typed by a user fails
in one line naming the new one, and the `model` group picks the task (no code branches on the loss)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from nanovlm.evaluate.checkpoint import load_model
from nanovlm.run.config import ConfigError, validate
from nanovlm.run.moved import MODULES, NAMES, moved_to, upgrade_config
from nanovlm.run.training import build, build_model

# Every `_target_` the flat layout's conf/ (and its benchmark) wrote into a run's config, with today's path.
OLD_TARGETS = {
    "nanovlm.data.ShapesDataModule": "nanovlm.data.shapes.ShapesDataModule",
    "nanovlm.scenes.ScenesDataModule": "nanovlm.data.scenes.ScenesDataModule",
    "nanovlm.encoders.image.CNNEncoder": "nanovlm.models.image.CNNEncoder",
    "nanovlm.encoders.image.ViTEncoder": "nanovlm.models.image.ViTEncoder",
    "nanovlm.encoders.text.MeanPoolTextEncoder": "nanovlm.models.text.MeanPoolTextEncoder",
    "nanovlm.encoders.text.AttentionTextEncoder": "nanovlm.models.text.AttentionTextEncoder",
    "nanovlm.losses.ClipLoss": "nanovlm.objectives.contrastive.ClipLoss",
    "nanovlm.losses.SigLipLoss": "nanovlm.objectives.contrastive.SigLipLoss",
    "nanovlm.captioning.CaptionLoss": "nanovlm.objectives.captioning.CaptionLoss",
    "nanovlm.captioning.CocaLoss": "nanovlm.objectives.captioning.CocaLoss",
    "nanovlm.schedules.warmup_cosine": "nanovlm.run.schedules.warmup_cosine",
    "nanovlm.plots.EmbeddingPlots": "nanovlm.evaluate.plots.EmbeddingPlots",
    "nanovlm.console.NotFrom": "nanovlm.run.console.NotFrom",
    "nanovlm.bench.FirstStepClock": "nanovlm.bench.loops.FirstStepClock",
}
NEW_TO_OLD = {new: old for old, new in OLD_TARGETS.items()}


@pytest.mark.parametrize("old", sorted(OLD_TARGETS))
def test_every_old_target_maps_to_an_importable_new_one(old: str) -> None:
    assert moved_to(old) == OLD_TARGETS[old]
    get_object(OLD_TARGETS[old])


def test_every_moved_name_imports_and_no_current_path_counts_as_moved() -> None:
    for new in NAMES.values():
        get_object(new)
    for new in set(MODULES.values()):
        get_object(new)
    for new in OLD_TARGETS.values():
        assert moved_to(new) is None


def _as_old_checkpoint_config(config: dict) -> dict:
    """`config` as the flat layout saved it: old `_target_` paths and no `model._target_`."""

    def rewrite(node):
        if isinstance(node, dict):
            return {k: NEW_TO_OLD.get(v, v) if k == "_target_" else rewrite(v) for k, v in node.items()}
        return [rewrite(v) for v in node] if isinstance(node, list) else node

    old = rewrite(config)
    del old["model"]["_target_"]
    return old


@pytest.mark.parametrize("loss", ["clip", "cap", "coca"])
def test_an_old_checkpoint_evaluates_with_todays_paths(make_cfg, tmp_path: Path, loss: str) -> None:
    cfg = make_cfg(f"loss={loss}", "data=scenes" if loss == "coca" else "data=shapes")
    today = OmegaConf.to_container(cfg, resolve=True)
    old = _as_old_checkpoint_config(today)
    assert old["loss"]["_target_"].startswith(("nanovlm.losses.", "nanovlm.captioning."))
    assert upgrade_config(old) == today  # the model group's target comes back from the old loss

    model = build_model(cfg)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "nanovlm": {"config": old, "wandb_run_id": None}}, path)
    loaded, config = load_model(path)
    assert type(loaded) is type(model) and config == today
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


def test_an_old_target_typed_by_a_user_fails_in_one_line_naming_the_new_one(make_cfg) -> None:
    cfg = make_cfg("encoder._target_=nanovlm.encoders.image.CNNEncoder")
    with pytest.raises(ConfigError, match=r"^encoder._target_=nanovlm.encoders.image.CNNEncoder has moved: use "):
        validate(cfg)


@pytest.mark.parametrize(
    ("loss", "task"),
    [
        ("clip", "DualEncoder"),
        ("siglip", "DualEncoder"),
        ("cap", "Captioner"),
        ("cappa", "Captioner"),
        ("coca", "Captioner"),
    ],
)
def test_the_loss_option_picks_the_model_group(make_cfg, loss: str, task: str) -> None:
    cfg = make_cfg(f"loss={loss}")
    assert cfg.model._target_.rsplit(".", 1)[1] == task
    assert type(build_model(cfg)).__name__ == task


def test_a_model_against_its_loss_is_one_line_naming_the_fix(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"trains model=captioner, not model=dual_encoder; leave out model="):
        build(make_cfg("model=dual_encoder", "loss=cap"))
    with pytest.raises(ConfigError, match=r"trains model=dual_encoder, not model=captioner"):
        build(make_cfg("model=captioner", "loss=clip"))


def test_no_code_picks_the_task_by_the_loss() -> None:
    import nanovlm.run.training as training
    import nanovlm.tasks.captioner as captioner

    assert not hasattr(captioner, "is_captioning") and not hasattr(captioner, "build_captioner")
    assert "is_captioning" not in Path(training.__file__).read_text()


def test_an_old_contrastive_config_resumes_as_the_diagonal_only_loss_it_trained_with() -> None:
    """Checkpoints from before several true pairs were counted have no loss.multi_positive; they trained the
    diagonal-only loss, so the upgraded config says false (and a resume that differs names that key)."""
    from nanovlm.run.moved import upgrade_config

    old = {"loss": {"_target_": "nanovlm.losses.SigLipLoss", "scale": 10.0}, "model": {"embed_dim": 32}}
    assert upgrade_config(old)["loss"]["multi_positive"] is False
    today = {"loss": {"_target_": "nanovlm.objectives.contrastive.ClipLoss", "multi_positive": True}, "model": {}}
    assert upgrade_config(today)["loss"]["multi_positive"] is True
    captioner = {"loss": {"_target_": "nanovlm.captioning.CaptionLoss"}, "model": {}}
    assert "multi_positive" not in upgrade_config(captioner)["loss"]


@pytest.mark.parametrize(("old", "new"), [("nanovlm.losses", "nanovlm.objectives.contrastive"),
                                          ("nanovlm.module", "nanovlm.tasks.dual_encoder")])  # fmt: skip
def test_an_old_python_import_names_where_the_module_went(old: str, new: str) -> None:
    import importlib

    with pytest.raises(ModuleNotFoundError, match=rf"^{old} moved to {new}$"):
        importlib.import_module(old)
