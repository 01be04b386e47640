"""End to end on data from disk: train() on a csv of pictures, its tokenizer kept beside the checkpoints, resume
and `nanovlm.evaluate` reading text as training did, and zero-shot classification of an ImageFolder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from nanovlm.data.tokenizer import tokenizer_from_state
from nanovlm.evaluate.checkpoint import evaluate, parse_args
from nanovlm.evaluate.imagefolder import ZeroShotConfig, read_folder, zero_shot_folder
from nanovlm.run.training import train
from tests.disk_fixtures import COLOURS, WORDS, write_csv

TINY = ["model.embed_dim=16", "encoder.channels=[8,16,16,16]", "text_encoder.width=16"]


def image_folder(root: Path) -> Path:
    """root/<colour>/: two pictures of each of the fixture's colours, class names as the captions say them."""
    for colour, word in zip(COLOURS, WORDS, strict=True):
        (root / word).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (33 + k, 32), colour).save(root / word / f"{k}.png")
    return root


def test_image_folder_classes_and_bad_input(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "folder")
    (root / "not_a_class.txt").write_text("ignored")
    names, files, labels = read_folder(root)
    assert names == sorted(WORDS) and len(files) == 12 and labels.tolist() == [c for c in range(6) for _ in (0, 1)]
    with pytest.raises(ValueError, match=r"zeroshot\.root: no such directory"):
        read_folder(tmp_path / "nowhere")


def test_zero_shot_scores_by_the_ranking_rule(tmp_path: Path) -> None:
    """A stand-in model whose image embedding is the picture's colour and whose prompt embedding is the named
    colour: every image is top-1; a model that embeds every text alike ties, and a tie is a miss."""
    root = image_folder(tmp_path / "folder")
    names = sorted(WORDS)

    class ColourModel:
        device = torch.device("cpu")

        def __init__(self, same_text: bool) -> None:
            self.same_text = same_text

        def encode_images(self, images: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(images.mean((2, 3)) - 0.45, dim=-1)

        class tokenizer:  # stands in for an instance
            @staticmethod
            def encode_batch(texts: list[str]) -> torch.Tensor:
                return torch.tensor([[names.index(next(w for w in names if w in t))] for t in texts])

        def text_encoder(self, tokens: torch.Tensor) -> torch.Tensor:
            colours = torch.tensor([COLOURS[WORDS.index(names[int(i)])] for i in tokens[:, 0]]).float() / 255
            emb = torch.nn.functional.normalize(colours - 0.45, dim=-1)
            return emb[:1].expand_as(emb) if self.same_text else emb

    cfg = ZeroShotConfig(root=str(root), templates=["a photo of a {}.", "a {} thing"])
    assert zero_shot_folder(ColourModel(False), cfg, 32)["top1"] == 1.0
    tied = zero_shot_folder(ColourModel(True), cfg, 32)
    assert tied["top1"] == 0.0 and tied["top5"] == 0.0  # six classes tied: the true one ranks 6th
    with pytest.raises(ValueError, match=r"zeroshot\.templates: each template holds"):
        zero_shot_folder(ColourModel(False), ZeroShotConfig(root=str(root), templates=["no slot"]), 32)


@pytest.mark.integration
def test_train_resume_and_evaluate_on_csv(make_cfg, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data", 24)
    data = ["data=csv", f"data.path={path}", "data.val_fraction=0.25", "data.batch_size=8", "data.max_tokens=10"]
    cfg = make_cfg(*data, *TINY, "text_encoder=mha", "trainer.max_epochs=2", "data.tokenizer.vocab_size=100",
                   "plots=default")  # fmt: skip
    metrics = train(cfg)
    assert 0 <= metrics["val/i2t_R@1"] <= 1 and 0 <= metrics["val/t2i_R@1"] <= 1
    # No caption attributes to colour by: the picture is the retrieval examples (6 queries of the 6-image val).
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["retrieval.png"]
    assert Image.open(tmp_path / "plots" / "retrieval.png").size[1] > 6 * 150
    state = json.loads((tmp_path / "tokenizer.json").read_text())
    assert state["kind"] == "bpe" and tokenizer_from_state(state).max_len == 10
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["nanovlm"]["tokenizer"] == state
    # Resume retrains the tokenizer from the same captions: the same ids, so the checkpoint is accepted.
    resumed = train(make_cfg(*data, *TINY, "text_encoder=mha", "trainer.max_epochs=3", "data.tokenizer.vocab_size=100",
                             f"ckpt_path={tmp_path}"))  # fmt: skip
    assert "val/i2t_R@1" in resumed
    folder = image_folder(tmp_path / "folder")
    results = evaluate(parse_args([f"ckpt={tmp_path}/checkpoints/last.ckpt", "plots=false", f"zeroshot.root={folder}"]))
    assert set(results["retrieval"]) == {"val"} and results["zero_shot_folder"]["classes"] == 6  # the val gallery
