"""nanovlm.evaluate.plots: every picture is a real PNG; the callback draws them in the run dir and logs them to W&B."""

import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image

from nanovlm.data.shapes import all_triples, build_tensors
from nanovlm.evaluate import examples, figures, plots
from nanovlm.run.config import CONFIG_DIR
from nanovlm.run.training import train
from tests.conftest import QUIET, inspect_wandb_run


def assert_png(path: Path, min_size: tuple[int, int] = (200, 150)) -> None:
    """A non-empty PNG that opens, of at least `min_size` pixels, and not one flat colour."""
    assert path.is_file() and path.stat().st_size > 2000, path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size >= min_size
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(2)) > 1


def random_embeddings(n: int = 243, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    return image, F.normalize(image + 0.3 * torch.randn(n, dim, generator=g), dim=-1)


def test_every_picture_function_writes_a_png(tmp_path: Path) -> None:
    image, text = random_embeddings()
    _, _, captions = build_tensors()
    triples = all_triples()
    assert_png(plots.embedding_bands(tmp_path / "bands.png", (image, text), random_embeddings(seed=1), captions))
    assert_png(plots.similarity_matrix(tmp_path / "sim.png", image, text, captions))
    assert_png(plots.pca_scatter(tmp_path / "pca.png", image, text, triples))
    assert_png(plots.sphere_scatter(tmp_path / "sphere.png", *random_embeddings(dim=3), triples))
    counts = torch.randint(0, 5, (3, 3))
    assert_png(plots.confusion_matrix(tmp_path / "cm.png", counts, ["circle", "square", "triangle"], "t"), (100, 100))
    images, _, _ = build_tensors()
    assert_png(plots.image_grid(tmp_path / "sub" / "grid.png", images[:4], list("abcd"), "query"))


def test_pictures_depend_on_the_embeddings(tmp_path: Path) -> None:
    image, text = random_embeddings()
    _, _, captions = build_tensors()
    a = plots.similarity_matrix(tmp_path / "a.png", image, text, captions).read_bytes()
    b = plots.similarity_matrix(tmp_path / "b.png", image, image, captions).read_bytes()
    assert a != b


def test_sphere_needs_three_dims(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.embed_dim=3"):
        plots.sphere_scatter(tmp_path / "s.png", *random_embeddings(dim=4), all_triples())


def test_draw_embedding_pictures_adds_the_sphere_only_in_3d(tmp_path: Path, monkeypatch) -> None:
    # Which pictures, not how they look (test_every_picture_function_writes_a_png draws each): stand-ins that
    # only return their path.
    for name in ("embedding_bands", "similarity_matrix", "pca_scatter", "sphere_scatter"):
        monkeypatch.setattr(plots, name, lambda path, *args, **kwargs: path)
    _, _, captions = build_tensors()
    flat = plots.draw_embedding_pictures(tmp_path / "d8", random_embeddings(dim=8), captions, all_triples())
    ball = plots.draw_embedding_pictures(tmp_path / "d3", random_embeddings(dim=3), captions, all_triples())
    assert set(flat) == {"bands", "similarity", "pca"} and set(ball) == {*flat, "sphere"}


def _writes_its_pid(fail_in_another_process: bool = False, sleep_s: float = 0.0):
    """A figure job that writes the id of the process that drew it; optionally fails or dawdles outside this one."""
    parent = os.getpid()

    def draw(path: Path) -> None:
        if os.getpid() != parent:
            time.sleep(sleep_s)
            if fail_in_another_process:
                raise RuntimeError("a failure in the forked copy")
        path.write_text(str(os.getpid()))

    return draw


@pytest.mark.skipif(sys.platform != "linux", reason="the figures are drawn side by side on Linux only")
def test_the_first_figure_is_drawn_by_another_process_and_every_file_is_written(tmp_path: Path) -> None:
    jobs = [(tmp_path / f"{i}.txt", _writes_its_pid()) for i in range(3)]
    paths = figures.draw_side_by_side(jobs)
    assert paths == [path for path, _ in jobs]
    drawn_by = [int(p.read_text()) for p in paths]
    assert drawn_by[0] != os.getpid() and drawn_by[1:] == [os.getpid()] * 2


@pytest.mark.skipif(sys.platform != "linux", reason="the figures are drawn side by side on Linux only")
@pytest.mark.parametrize("failure", ["raises", "too slow"])
def test_a_figure_the_other_process_does_not_deliver_is_drawn_here(tmp_path: Path, failure: str) -> None:
    (tmp_path / "0.txt").write_text("a file from an earlier drawing")
    job = _writes_its_pid(fail_in_another_process=failure == "raises", sleep_s=30.0 if failure == "too slow" else 0)
    paths = figures.draw_side_by_side([(tmp_path / "0.txt", job), (tmp_path / "1.txt", _writes_its_pid())], 1.0)
    assert [int(p.read_text()) for p in paths] == [os.getpid()] * 2


def test_every_n_epochs_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match=r"plots.every_n_epochs must be >= 0"):
        plots.EmbeddingPlots(every_n_epochs=-1)


@pytest.mark.slow
def test_callback_saves_pictures_in_the_run_dir_and_wandb(tmp_path: Path, monkeypatch) -> None:
    """A 3-epoch run with every_n_epochs=2, embed_dim=3, W&B offline: end pictures, the epoch-2 ones,
    and all of them as W&B media."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [
        f"run_dir={tmp_path}", "logger.mode=offline", "trainer.max_epochs=3", "plots.every_n_epochs=2",
        "model.embed_dim=3", *QUIET,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    train(cfg)
    for name in ("bands", "similarity", "pca", "sphere"):
        assert_png(tmp_path / "plots" / f"{name}.png")
        assert_png(tmp_path / "plots" / "epoch_002" / f"{name}.png")
    assert not (tmp_path / "plots" / "epoch_003").exists()  # the last epoch is the end-of-fit picture
    (wandb_run,) = (tmp_path / "wandb").glob("offline-run-*")
    media = sorted(p.name for p in (wandb_run / "files" / "media" / "images" / "plots").glob("*.png"))
    for name in ("bands", "similarity", "pca", "sphere"):
        assert sum(m.startswith(f"{name}_") for m in media) == 2, media  # epoch 2 and the end
    summary = inspect_wandb_run(tmp_path)["summary"]
    assert summary["plots/bands"]["_type"] == "images/separated" and summary["plots/bands"]["count"] == 1


@pytest.mark.parametrize("picture", ["bands_one_row", "bands_two_rows", "similarity", "pca", "retrieval"])
def test_hand_set_margins_keep_every_label_on_the_canvas(tmp_path, monkeypatch, picture: str) -> None:
    """The end-of-run pictures are saved without bbox_inches="tight" (it draws twice), so their margins are set
    by hand: every title, tick label and axis label must still lie inside the saved figure."""
    saved = []
    for module in (plots, examples):
        monkeypatch.setattr(module, "save_figure", lambda fig, path, tight=True: saved.append((fig, tight)) or path)
    after, before = random_embeddings(dim=32), random_embeddings(dim=32, seed=1)
    triples = all_triples()
    captions = [" ".join(t) for t in triples]
    queries = torch.arange(6)
    draw = {
        "bands_one_row": lambda: plots.embedding_bands(tmp_path / "b.png", after, None, captions),
        "bands_two_rows": lambda: plots.embedding_bands(tmp_path / "b.png", after, before, captions),
        "similarity": lambda: plots.similarity_matrix(tmp_path / "s.png", *after, captions),
        "pca": lambda: plots.pca_scatter(tmp_path / "p.png", *after, triples),
        "retrieval": lambda: examples.draw(
            tmp_path / "r.png",
            examples.pick_examples(after[1][:6] @ after[0].T, torch.eye(len(captions), dtype=torch.bool), queries, 5),
            torch.rand(len(captions), 3, 32, 32),
            ["a caption as long as " + c for c in captions],
        ),
    }[picture]
    draw()
    ((fig, tight),) = saved
    assert not tight
    renderer = fig.canvas.get_renderer()
    used = fig.get_tightbbox(renderer)  # in inches: what bbox_inches="tight" would keep, every drawn artist
    canvas = fig.bbox_inches
    tolerance = 0.02
    assert used.x0 >= canvas.x0 - tolerance and used.y0 >= canvas.y0 - tolerance, (used, canvas)
    assert used.x1 <= canvas.x1 + tolerance and used.y1 <= canvas.y1 + tolerance, (used, canvas)
    figures.pyplot().close(fig)


def test_retrieval_examples_rank_by_the_one_rule() -> None:
    """Hand-built: 4 images, 3 captions; image 3 shows caption 0, images 1 and 2 caption 1, image 0 caption 2."""
    truth = torch.zeros(4, 3, dtype=torch.bool)
    truth[3, 0] = truth[1, 1] = truth[2, 1] = truth[0, 2] = True
    scores = torch.tensor(
        [
            [0.9, 0.6, 0.5, 0.1],  # caption 0: its image scores last -> rank 4
            [0.2, 0.8, 0.3, 0.9],  # caption 1: best true image 1 (0.8) behind image 3 -> rank 2
            [0.7, 0.1, 0.2, 0.7],  # caption 2: its image ties image 3; ties fail -> rank 2
        ]
    )
    ex = examples.pick_examples(scores, truth, torch.tensor([0, 1, 2]), k=2)
    assert ex.rank.tolist() == [4, 2, 2] and ex.truth.tolist() == [3, 1, 0]
    assert ex.top[:2].tolist() == [[0, 1], [3, 1]] and ex.hit[:2].tolist() == [[False, False], [False, True]]
    assert sorted(ex.top[2].tolist()) == [0, 3] and ex.hit[2].sum() == 1


def test_retrieval_examples_picture(tmp_path: Path) -> None:
    images = torch.rand(5, 3, 8, 8)
    ex = examples.pick_examples(torch.rand(3, 5), torch.eye(5, dtype=torch.bool), torch.tensor([0, 2, 4]), k=3)
    path = examples.draw(tmp_path / "retrieval.png", ex, images, [f"caption {i}" for i in range(5)])
    width, height = Image.open(path).size
    assert width > height > 3 * 150  # three rows of four cells and the captions beside them
