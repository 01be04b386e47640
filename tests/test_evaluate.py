"""nanovlm.evaluate: checkpoint loading, retrieval equal to training's metric, zero-shot, the demo, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from nanovlm.data.shapes import COLOURS, POSITIONS, SHAPES, all_triples
from nanovlm.evaluate.checkpoint import EvalConfig, evaluate, load_model, main
from nanovlm.evaluate.retrieval import retrieval
from nanovlm.evaluate.zero_shot import zero_shot
from nanovlm.run.config import CONFIG_DIR
from nanovlm.run.training import train
from tests.conftest import QUIET, REPO


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A 4-epoch run (recall well between 0 and 1), its final metrics and its last checkpoint. It validates every
    3 epochs, so its last epoch is one that validation would skip: the final metrics must still be its own."""
    run_dir = tmp_path_factory.mktemp("run")
    overrides = [f"run_dir={run_dir}", "logger=none", "plots=none", "trainer.max_epochs=4", "model.embed_dim=16"]
    overrides.append("trainer.check_val_every_n_epoch=3")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *QUIET])
    metrics = train(cfg)
    return run_dir / "checkpoints" / "last.ckpt", metrics


@pytest.mark.integration
def test_evaluation_equals_the_training_metric_on_the_same_weights(short_run) -> None:
    ckpt, metrics = short_run
    model, config = load_model(ckpt)
    assert config["model"]["embed_dim"] == 16 and config["trainer"]["max_epochs"] == 4
    from nanovlm.data.shapes import ShapesDataModule
    from nanovlm.evaluate.plots import embed_gallery

    dm = ShapesDataModule(**{k: v for k, v in config["data"].items() if k != "_target_"})
    image_emb, text_emb = embed_gallery(model, dm.images, dm.tokens)
    ours = retrieval(image_emb, text_emb, dm.val_idx)
    assert 0 < metrics["val/i2t_R@5"] < 1 or 0 < metrics["val/t2i_R@5"] < 1, "pick a run that is not trivial"
    for key, value in ours.items():
        assert value == pytest.approx(metrics[f"val/{key}"], abs=1e-6), key
    # result.json (what sweeps read) and `python -m nanovlm.evaluate` of last.ckpt give the same numbers.
    saved = json.loads((ckpt.parent.parent / "result.json").read_text())["metrics"]
    report = evaluate(EvalConfig(ckpt=str(ckpt), out=str(ckpt.parent.parent / "eval_check"), plots=False))
    for key, value in report["retrieval"]["val"].items():
        assert value == pytest.approx(saved[f"val/{key}"], abs=1e-6), key


def hand_built_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    """Captions as the normalised sum of one-hot colour, shape and position directions (D = 21);
    images equal their caption, except every red image, which points at "green" instead."""
    triples = all_triples()
    onehots = torch.eye(len(COLOURS) + len(SHAPES) + len(POSITIONS))
    text = torch.stack([
        onehots[list(COLOURS).index(c)] + onehots[9 + SHAPES.index(s)] + onehots[12 + POSITIONS.index(p)]
        for c, s, p in triples
    ])  # fmt: skip
    image = text.clone()
    red = [i for i, t in enumerate(triples) if t[0] == "red"]
    image[red, 0], image[red, 1] = 0.0, 1.0  # red -> green
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def test_zero_shot_on_a_hand_built_embedding_set() -> None:
    image, text = hand_built_embeddings()
    everything = torch.arange(243)
    out = zero_shot(image, text, all_triples(), everything)
    # The 27 red images are classified green; shape and position are untouched.
    assert out["colour"]["accuracy"] == pytest.approx(8 / 9)
    assert out["shape"]["accuracy"] == 1.0 and out["position"]["accuracy"] == 1.0
    confusion = out["colour"]["confusion"]
    expected = torch.diag(torch.full((9,), 27))
    expected[0, 0], expected[0, 1] = 0, 27  # row red: all predicted green
    assert torch.equal(confusion, expected)
    assert torch.equal(out["shape"]["confusion"], torch.diag(torch.full((3,), 81)))
    # Restricted to some images, counts cover only those.
    some = torch.tensor([0, 1, 30])  # two red items, one green
    assert zero_shot(image, text, all_triples(), some)["colour"]["confusion"][:, 1].sum() == 3


def test_retrieval_on_hand_built_embeddings() -> None:
    image, text = hand_built_embeddings()
    out = retrieval(image, text, torch.arange(243))
    # Non-red items match their own caption exactly; a red image is nearest to its green twin caption.
    assert out["i2t_R@1"] == pytest.approx(216 / 243)
    assert retrieval(text, text, torch.arange(243))["t2i_R@1"] == 1.0


@pytest.mark.integration
def test_evaluate_writes_metrics_pictures_and_demo(short_run, tmp_path: Path, capsys) -> None:
    ckpt, metrics = short_run
    out = evaluate(EvalConfig(ckpt=str(ckpt), out=str(tmp_path), query="red circle top-left", image="17", top_k=3))
    assert out["retrieval"]["val"]["i2t_R@1"] == pytest.approx(metrics["val/i2t_R@1"], abs=1e-6)
    assert set(out["retrieval"]) == {"train", "val", "all"}
    assert set(out["zero_shot"]["all"]) == {"colour", "shape", "position"}
    assert json.loads((tmp_path / "metrics.json").read_text())["retrieval"] == out["retrieval"]
    for name in ("bands", "similarity", "pca", "zero_shot_colour", "zero_shot_shape", "zero_shot_position"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000, name
    assert len(out["query"]["captions"]) == 3 and Path(out["query"]["png"]).stat().st_size > 1000
    assert out["query"]["scores"] == sorted(out["query"]["scores"], reverse=True)
    assert len(out["image"]["captions"]) == 3
    printed = capsys.readouterr().out
    assert "val (49)" in printed and "'red circle top-left' -> top 3 images" in printed


@pytest.mark.integration
def test_image_file_gives_the_same_captions_as_its_gallery_index(short_run, tmp_path: Path) -> None:
    from nanovlm.data.shapes import render

    ckpt, _ = short_run
    path = tmp_path / "shape.png"
    render("red", "square", "bottom-right").save(path)  # gallery item 17
    by_file = evaluate(EvalConfig(ckpt=str(ckpt), out=str(tmp_path), image=str(path), plots=False))
    by_index = evaluate(EvalConfig(ckpt=str(ckpt), out=str(tmp_path), image="17", plots=False))
    assert by_file["image"]["captions"] == by_index["image"]["captions"]


@pytest.mark.integration
def test_bad_inputs_give_a_clear_error_and_exit_code(short_run, tmp_path: Path, capsys) -> None:
    ckpt, _ = short_run
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    mismatched = tmp_path / "mismatched.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["nanovlm"]["config"]["encoder"]["channels"] = [8, 8, 8, 8]  # the config no longer fits the weights
    torch.save(state, mismatched)
    no_config = tmp_path / "no_config.ckpt"
    del state["nanovlm"]
    torch.save(state, no_config)
    cases = {
        "ckpt: no checkpoint file at": [f"ckpt={tmp_path / 'missing.ckpt'}"],
        "not a readable checkpoint, it may be truncated or corrupt": [f"ckpt={corrupt}"],
        "do not fit the model its config describes": [f"ckpt={mismatched}"],
        "has no 'nanovlm' config entry": [f"ckpt={no_config}"],
        "unknown word(s) ['elephant']": [f"ckpt={ckpt}", "query=yellow elephant top", "plots=false"],
        "image: a gallery index is 0..242, got 300": [f"ckpt={ckpt}", "image=300", "plots=false"],
        "ckpt is required": [],
        "Key 'colour' not in 'EvalConfig'": [f"ckpt={ckpt}", "colour=red"],
    }
    for message, argv in cases.items():
        assert main([*argv, f"out={tmp_path / 'eval'}"]) == 2, message
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_as_a_module(short_run, tmp_path: Path) -> None:
    ckpt, _ = short_run
    ok = subprocess.run(
        [sys.executable, "-m", "nanovlm.evaluate", f"ckpt={ckpt}", f"out={tmp_path}", "plots=false", "image=0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "all (243)" in ok.stdout and "gallery image 0 (red circle top-left)" in ok.stdout
    # Bad input's exit code and message are main()'s (test_bad_inputs_give_a_clear_error_and_exit_code).
