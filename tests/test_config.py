import itertools

import pytest
import torch
from hydra.utils import instantiate

from nanovlm.data.shapes import build_tensors
from nanovlm.run.config import CONFIG_DIR
from nanovlm.run.training import build_model

GROUPS = ("data", "encoder", "text_encoder", "loss", "optimizer", "scheduler", "trainer", "logger", "plots")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"


def disk_data(choice: str, root) -> list[str]:
    """For a disk format (data=csv, coco, wds): a tiny dataset in `root` and the overrides that read it; for
    data=vqa a smaller question set."""
    from tests.disk_fixtures import write_coco, write_csv, write_shards

    small = ["data.batch_size=4", "data.tokenizer.vocab_size=100"]
    if choice == "data=csv":
        return [f"data.path={write_csv(root, 20)}", *small]
    if choice == "data=coco":
        return [f"data.root={root}", f"data.train={write_coco(root, 20).relative_to(root)}", *small]
    if choice == "data=wds":
        return [f"data.train_shards='{write_shards(root, 'train', [list(range(20))])}'", *small]
    if choice == "data=vqa":  # generating the default 27,000 questions takes seconds; composing is the point here
        return ["data.n_questions=1200"]
    return []


@pytest.mark.parametrize("choice", [f"{g}={o}" for g in GROUPS for o in options(g)], ids=lambda c: c.replace("=", "-"))
def test_each_option_composes_and_builds(make_cfg, tmp_path, choice: str) -> None:
    cfg = make_cfg(choice, *disk_data(choice, tmp_path))
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule.tokenizer)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.integration
@pytest.mark.parametrize("combo", list(itertools.product(options("encoder"), options("text_encoder"), options("loss"))))
def test_model_combinations_build(make_cfg, combo: tuple[str, str, str]) -> None:
    encoder, text_encoder, loss = combo
    cfg = make_cfg(f"encoder={encoder}", f"text_encoder={text_encoder}", f"loss={loss}")
    model = build_model(cfg)
    images, tokens, _ = build_tensors()
    batch = {"image": images[:4], "tokens": tokens[:4], "index": torch.arange(4)}
    model.train()
    loss_value = model.training_step(batch, 0)  # every combination trains: a finite loss that reaches the weights
    loss_value.backward()
    assert torch.isfinite(loss_value)
    image_emb = model.image_encoder(images[:4])
    assert image_emb.shape == (4, cfg.model.embed_dim)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(4))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_encoder.parameters())
    # a captioner alone (cap, cappa) has a decoder and no text encoder
    assert (model.text_encoder is None) == (loss in ("cap", "cappa"))


def test_one_key_sets_the_embedding_dim_of_both_encoders(make_cfg) -> None:
    model = build_model(make_cfg("model.embed_dim=16"))
    images, tokens, _ = build_tensors()
    assert model(images[:2], tokens[:2])[0].shape == (2, 16)
    assert model(images[:2], tokens[:2])[1].shape == (2, 16)
    assert isinstance(model.configure_optimizers(), torch.optim.Optimizer)


@pytest.mark.slow
def test_the_wheel_ships_every_config(tmp_path) -> None:
    """A non-editable install has no conf/ beside the package: the wheel must carry it as nanovlm/conf."""
    import subprocess
    import sys
    import zipfile

    repo = CONFIG_DIR.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", str(repo), "--no-deps", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("nanovlm-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("nanovlm/conf/")}
    expected = {f"nanovlm/conf/{p.relative_to(CONFIG_DIR)}" for p in CONFIG_DIR.rglob("*.yaml")}
    assert expected and expected <= shipped, sorted(expected - shipped)


def test_a_key_under_an_option_without_settings_is_one_line(make_cfg) -> None:
    """scheduler=none has no `_target_`: a key added under it is refused by name, not with omegaconf's error."""
    from nanovlm.run import preflight
    from nanovlm.run.config import ConfigError

    cfg = make_cfg("+scheduler.nosuch_key=-1")
    with pytest.raises(ConfigError, match=r"^unknown key scheduler\.nosuch_key: the chosen scheduler option takes"):
        preflight.check_optimizer(cfg)


def test_a_format_is_checked_against_its_base_datamodules_keys_too() -> None:
    """A disk format passes DiskDataModule's keys on as **common: validation still knows each one and its type."""
    from omegaconf import OmegaConf

    from nanovlm.run.config import ConfigError, check_target_node

    def node(**keys):
        return OmegaConf.create({"_target_": "nanovlm.data.files.FilesDataModule", "path": "x.csv", **keys})

    check_target_node("data", node(batch_size=8, on_bad_sample="skip"))  # a base key of the right type
    with pytest.raises(ConfigError, match=r"^data\.batch_size must be an integer, got 'eight'$"):
        check_target_node("data", node(batch_size="eight"))
    with pytest.raises(ConfigError, match=r"^unknown key data\.nosuch for .*; allowed keys: path, val_path, .*, "
                                          r"batch_size, .*on_bad_sample$"):  # fmt: skip
        check_target_node("data", node(nosuch=1))
