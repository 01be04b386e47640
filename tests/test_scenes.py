"""The two-object scenes world: pictures agree with captions (read from pixels), negatives are other scenes'
captions, splits hold out what they say, and the hard-negative metric and loss behave as documented."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F

from nanovlm.data.scenes import (
    N_PLACEMENTS,
    NEGATIVE_KINDS,
    OBJECTS,
    RELATIONS,
    ScenesDataModule,
    all_scenes,
    caption,
)
from nanovlm.data.shapes import COLOURS, POSITIONS, cell_box
from nanovlm.data.tokenizer import Tokenizer
from nanovlm.evaluate.metrics import HardNegativeAccuracy, RetrievalRecall, hard_negative_accuracy
from nanovlm.models.text import AttentionTextEncoder, MeanPoolTextEncoder


@functools.cache
def world(split: str = "order_holdout", split_seed: int = 0) -> ScenesDataModule:
    return ScenesDataModule(split=split, split_seed=split_seed)


PALETTE_NAMES = list(COLOURS)
PALETTE = torch.tensor([COLOURS[name] for name in PALETTE_NAMES], dtype=torch.float32)  # [colours, 3]


def read_objects(image: torch.Tensor) -> dict[int, str]:
    """{grid cell: colour name} of every lit cell of a [3, 32, 32] image, read from its pixels: the colour is the
    palette entry nearest to the mean of the cell's lit pixels."""
    found = {}
    for cell, position in enumerate(POSITIONS):
        x0, y0, x1, y1 = cell_box(position)
        patch = image[:, y0 : y1 + 1, x0 : x1 + 1]  # [3, h, w]
        lit = patch.sum(0) > 0
        if lit.any():
            rgb = patch[:, lit].mean(1) * 255
            found[cell] = PALETTE_NAMES[int((PALETTE - rgb).norm(dim=1).argmin())]
    return found


def test_world_size_and_captions_are_unique() -> None:
    dm = world()
    assert len(dm.captions) == 27 * 26 * 2 == len(set(dm.captions))
    assert dm.images.shape == (len(dm.captions) * N_PLACEMENTS, 3, 32, 32)
    assert not any(w in c.split() for c in dm.captions for w in ("right-of", "below"))  # canonical relations only
    assert dm.tokens.shape == (len(dm.captions), 6)


def test_every_caption_agrees_with_its_pictures_read_from_pixels() -> None:
    dm = world()
    background = dm.images.sum(1) == 0  # [N, 32, 32]
    for i in range(0, len(dm.images), 7):  # every 7th image: all placements, relations and objects are visited
        (c1, _), rel, (c2, _) = dm.scenes[int(dm.caption_of[i])]
        objects = read_objects(dm.images[i])
        assert len(objects) == 2, (i, objects)
        (cell1, colour_a), (cell2, colour_b) = sorted(objects.items())  # row-major: left/upper cell first
        (r1, k1), (r2, k2) = divmod(cell1, 3), divmod(cell2, 3)
        if rel == "left-of":
            assert r1 == r2 and k1 < k2, (i, dm.captions[dm.caption_of[i]], objects)  # same row: never also above
        else:
            assert k1 == k2 and r1 < r2, (i, dm.captions[dm.caption_of[i]], objects)  # same column
        assert (colour_a, colour_b) == (c1, c2), (i, dm.captions[dm.caption_of[i]], objects)
        assert background[i].float().mean() > 0.6  # two small objects on black


def test_shapes_in_the_picture_match_the_caption() -> None:
    # Shape from pixels: a square fills its cell box, a circle misses the box corners, a triangle's top row is
    # narrow. Checked on one placement of every ordered object pair.
    dm = world()
    for i in range(0, len(dm.images), N_PLACEMENTS * 5):
        (_, s1), _, (_, s2) = dm.scenes[int(dm.caption_of[i])]
        cells = sorted(read_objects(dm.images[i]))
        for cell, shape in zip(cells, (s1, s2), strict=True):
            x0, y0, x1, y1 = cell_box(POSITIONS[cell])
            lit = dm.images[i][:, y0 : y1 + 1, x0 : x1 + 1].sum(0) > 0
            corners_lit = bool(lit[0, 0] or lit[-1, -1])
            top_row = int(lit[0].sum())
            read = "square" if lit.all() else "triangle" if top_row <= 2 and corners_lit else "circle"
            assert read == shape, (i, dm.captions[dm.caption_of[i]], cell)


def test_tokens_decode_to_the_caption_and_the_vocabulary_comes_from_the_world() -> None:
    dm = world()
    tokenizer = dm.tokenizer
    assert tokenizer.vocab == dm.vocab and len(tokenizer) == 1 + 9 + 3 + 2
    for c in range(0, len(dm.captions), 97):
        assert tokenizer.decode(dm.tokens[c]) == dm.captions[c]
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['below'\]"):
        tokenizer.encode("red circle below blue square")
    with pytest.raises(ValueError, match="5 words"):
        tokenizer.encode("red circle left-of blue")


def test_negatives_are_other_scenes_captions_never_the_truth() -> None:
    dm = world()
    negative_ids, valid = dm.negative_ids, dm.caption_extras["negative_valid"]
    for c, scene in enumerate(all_scenes()):
        (c1, s1), rel, (c2, s2) = scene
        expected = {
            "order": f"{c2} {s2} {rel} {c1} {s1}",
            "binding": f"{c2} {s1} {rel} {c1} {s2}",
            "relation": f"{c1} {s1} {RELATIONS[1 - RELATIONS.index(rel)]} {c2} {s2}",
        }
        for k, kind in enumerate(NEGATIVE_KINDS):
            if kind == "binding" and c1 == c2:  # swapping equal colours gives the truth: no such negative
                assert not valid[c, k]
                continue
            assert valid[c, k]
            n = int(negative_ids[c, k])
            assert n != c and dm.captions[n] == expected[kind]  # a caption of another scene of this world
            assert torch.equal(dm.caption_extras["negatives"][c, k], dm.tokens[n])
    assert int((~valid).sum()) == 9 * 3 * 2 * 2  # same colour, two different shapes in order, two relations


def test_hard_negatives_of_an_image_and_the_batches_carry_them() -> None:
    dm = world()
    same_colour = next(i for i in range(len(dm.images)) if dm.scenes[int(dm.caption_of[i])][0][0] == "red"
                       and dm.scenes[int(dm.caption_of[i])][2][0] == "red")  # fmt: skip
    assert set(dm.hard_negatives(same_colour)) == {"order", "relation"}
    tokenizer = dm.tokenizer
    i = 9 * 40 + 3
    truth = dm.captions[int(dm.caption_of[i])]
    negatives = {kind: tokenizer.decode(t) for kind, t in dm.hard_negatives(i).items()}
    assert set(negatives) == set(NEGATIVE_KINDS) and truth not in negatives.values()
    batch = next(iter(dm.val_dataloader()))
    assert batch["negatives"].shape == (len(batch["index"]), 3, 6)
    for row, index in enumerate(batch["index"].tolist()[:5]):
        for k, kind in enumerate(NEGATIVE_KINDS):
            got = dm.hard_negatives(index)
            assert (kind in got) == bool(batch["negative_valid"][row, k])
            if kind in got:
                assert torch.equal(batch["negatives"][row, k], got[kind])


def _pair(scene) -> frozenset:
    return frozenset((scene[0], scene[2]))


def test_order_holdout_trains_one_word_order_and_validates_the_other() -> None:
    dm = world("order_holdout")
    train_caps = set(dm.caption_of[dm.train_idx].tolist())
    val_caps = set(dm.caption_of[dm.val_idx].tolist())
    assert train_caps.isdisjoint(val_caps) and len(train_caps) == len(val_caps) == len(dm.captions) // 2
    scenes = dm.scenes
    for c in val_caps:
        order_swap = int(dm.negative_ids[c, NEGATIVE_KINDS.index("order")])
        assert order_swap in train_caps  # the same words, the other order, is trained
    # Every word order is held out for some pairs and trained for others (not always the same one).
    firsts = {OBJECTS.index(scenes[c][0]) < OBJECTS.index(scenes[c][2]) for c in val_caps}
    assert firsts == {True, False}


def test_other_splits_hold_out_what_they_name() -> None:
    placement = world("placement")

    def cell_pairs(indices: torch.Tensor) -> set[tuple[str, int]]:
        return {(placement.scenes[int(placement.caption_of[i])][1], int(placement.placement_of[i])) for i in indices}

    train_p, val_p = cell_pairs(placement.train_idx), cell_pairs(placement.val_idx)
    assert train_p.isdisjoint(val_p) and len(val_p) == 2 * 2  # round(9 * 0.2) = 2 cell pairs per relation
    combination = world("combination")
    train_pairs = {_pair(combination.scenes[c]) for c in combination.caption_of[combination.train_idx].tolist()}
    val_pairs = {_pair(combination.scenes[c]) for c in combination.caption_of[combination.val_idx].tolist()}
    assert train_pairs.isdisjoint(val_pairs) and len(val_pairs) == round(351 * 0.2)
    assert {o for p in val_pairs for o in p} <= {o for p in train_pairs for o in p}  # every object is trained on
    rand = world("random")
    assert len(rand.val_idx) == round(len(rand.images) * 0.2)
    for dm in (placement, combination, rand):
        assert sorted(dm.train_idx.tolist() + dm.val_idx.tolist()) == list(range(len(dm.images)))
    assert not torch.equal(world("random", 1).val_idx, rand.val_idx)


def test_relation_placement_index_matches_the_caption_index() -> None:
    # The item index layout the splits rely on: caption c's images are c * 9 ... c * 9 + 8, and caption c's
    # relation alternates with c (objects outer, relation middle, object inner: see all_scenes).
    scenes = all_scenes()
    assert [RELATIONS.index(s[1]) for s in scenes[:52]] == [0] * 26 + [1] * 26
    dm = world()
    assert dm.caption_of[9 * 5 + 4] == 5 and dm.placement_of[9 * 5 + 4] == 4


def test_bad_split_is_one_line_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"data.split must be one of random, placement, combination, order_holdout"):
        ScenesDataModule(split="compositional")


# --- The bag-of-words failure, and the hard-negative metric -----------------------------------------------------


def test_mean_pool_text_embeddings_are_identical_under_the_order_swap() -> None:
    """Why text_encoder=mean cannot pass the order test: the caption and its order swap hold the same words, and a
    mean ignores positions, so both embeddings agree (to float rounding) and every order comparison ties."""
    dm = world()
    torch.manual_seed(0)
    mean = MeanPoolTextEncoder(len(dm.vocab), 16)
    order = dm.caption_extras["negatives"][:, NEGATIVE_KINDS.index("order")]
    torch.testing.assert_close(mean(dm.tokens), mean(order), rtol=0, atol=1e-6)
    images = F.normalize(torch.randn(len(dm.tokens), 16), dim=-1)
    true, neg = (images * mean(dm.tokens)).sum(-1), (images * mean(order)).sum(-1)
    assert hard_negative_accuracy(true, neg[:, None]).item() == 0.0  # ties fail: not a coin flip on rounding
    mha = AttentionTextEncoder(len(dm.vocab), 16, max_len=6)
    assert (mha(dm.tokens) - mha(order)).abs().amax(-1).min() > 1e-4  # positions make the attention encoder differ


def test_hard_negative_accuracy_on_hand_built_scores_ties_fail() -> None:
    true = torch.tensor([0.9, 0.5, 0.2, -0.1])
    negatives = torch.tensor([
        [0.1, 0.9, 0.2],   # wins, tie (fails), wins
        [0.5, 0.4, 0.6],   # tie, wins, loses
        [0.2, 0.2 - 1e-3, 0.3],  # tie, wins by a clear margin, (masked out below)
        [-0.2, -0.1, -0.1 - 1e-8],  # wins, tie, ahead by float rounding only: still a tie
    ])  # fmt: skip
    valid = torch.tensor([[True, True, True], [True, True, True], [True, True, False], [True, True, True]])
    acc = hard_negative_accuracy(true, negatives, valid)
    torch.testing.assert_close(acc, torch.tensor([2 / 4, 2 / 4, 1 / 3]))
    assert hard_negative_accuracy(true, negatives)[2].item() == 1 / 4  # unmasked, the third row counts (a loss)
    metric = HardNegativeAccuracy(("a", "b", "c"))
    metric.update(true[:2], negatives[:2], valid[:2], torch.tensor([0, 1]))
    metric.update(true[2:], negatives[2:], valid[2:], torch.tensor([2, 3]))
    metric.update(true[:1], negatives[:1] + 5, valid[:1], torch.tensor([0]))  # a padding repeat: counted once
    got = metric.compute()
    torch.testing.assert_close(torch.stack([got[k] for k in "abc"]), acc)


def test_recall_with_several_true_items_uses_the_best_one() -> None:
    # Query 0: true items 1 and 3; item 3 scores best of all -> rank 1. Query 1: true items 0 and 2 score 0.5 and
    # 0.1, items 1 (0.7) and 3 (0.5, tied with the best true one) rank above -> rank 3.
    scores = torch.tensor([[0.1, 0.2, 0.0, 0.9], [0.5, 0.7, 0.1, 0.5]])
    targets = torch.tensor([[False, True, False, True], [True, False, True, False]])
    metric = RetrievalRecall(ks=(1, 2, 3))
    metric.update(scores, targets, torch.tensor([0, 1]))
    out = {k: v.item() for k, v in metric.compute().items()}
    assert out == {"R@1": 0.5, "R@2": 0.5, "R@3": 1.0, "mean_rank": 2.0, "median_rank": 1.0}
    # A single true column gives the same rank as its one-hot mask.
    col = torch.tensor([3, 2])
    mask = F.one_hot(col, 4).bool()
    from nanovlm.evaluate.metrics import true_item_rank

    assert torch.equal(true_item_rank(scores, col), true_item_rank(scores, mask))


def test_scenes_words_are_all_used() -> None:
    used = {w for c in world().captions for w in c.split()}
    assert used == set(world().vocab) - {"[CLS]"}
    assert caption((("red", "circle"), "above", ("blue", "square"))) == "red circle above blue square"
    assert isinstance(world().tokenizer, Tokenizer)
    assert list(itertools.islice(OBJECTS, 2)) == [("red", "circle"), ("red", "square")]


# --- The world through the framework: model sizes, a short run, evaluation agreeing with validation ---------------


def test_build_model_takes_vocabulary_and_caption_length_from_the_world(make_cfg) -> None:
    from nanovlm.run.training import build_model

    scenes = build_model(make_cfg("data=scenes", "text_encoder=mha")).text_encoder
    shapes = build_model(make_cfg("text_encoder=mha")).text_encoder
    assert scenes.embed.num_embeddings == len(ScenesDataModule.vocab) == 15 and scenes.pos_embed.shape[1] == 6
    assert shapes.embed.num_embeddings == 22 and shapes.pos_embed.shape[1] == 4


def test_hard_negatives_on_a_world_without_them_is_a_config_error(make_cfg) -> None:
    from nanovlm.run.config import ConfigError
    from nanovlm.run.training import build

    with pytest.raises(ConfigError, match=r"loss.hard_negatives=true needs a world with hard negatives"):
        build(make_cfg("loss.hard_negatives=true"))


@pytest.fixture(scope="module")
def scenes_run(tmp_path_factory: pytest.TempPathFactory):
    """One short scenes run with hard negatives (a few batches, a light CNN, pictures on), and its checkpoint."""
    from hydra import compose, initialize_config_dir

    from nanovlm.run.config import CONFIG_DIR
    from nanovlm.run.training import train
    from tests.conftest import QUIET

    run_dir = tmp_path_factory.mktemp("scenes_run")
    overrides = [
        f"run_dir={run_dir}", "logger=none", "data=scenes", "text_encoder=mha", "loss=siglip",
        "loss.hard_negatives=true",
        "encoder.channels=[8,8,8,8]", "model.embed_dim=8", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
        "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=4",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *QUIET])
    return run_dir, train(cfg)


@pytest.mark.slow
def test_a_scenes_run_logs_hard_negative_accuracy_and_draws_its_pictures(scenes_run) -> None:
    run_dir, metrics = scenes_run
    for kind in NEGATIVE_KINDS:
        assert 0.0 <= metrics[f"val/hn_{kind}"] <= 1.0
    assert 0.0 <= metrics["val/i2t_R@1"] <= 1.0 and 0.0 <= metrics["val/t2i_R@1"] <= 1.0
    for name in ("bands", "similarity", "pca"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 5000, name


@pytest.mark.slow
def test_evaluate_agrees_with_validation_on_scenes(scenes_run, tmp_path) -> None:
    """The same 4 x 128 val images that validation saw (limit_val_batches=4) give the same recall and hard-negative
    accuracy through nanovlm.evaluate's functions, and score_pairs gives validation's cosines."""
    from nanovlm.evaluate.checkpoint import load_model
    from nanovlm.evaluate.plots import embed_gallery
    from nanovlm.evaluate.retrieval import hard_negatives, retrieval

    run_dir, metrics = scenes_run
    model, config = load_model(run_dir / "checkpoints" / "last.ckpt")
    dm = ScenesDataModule(**{k: v for k, v in config["data"].items() if k != "_target_"})
    queries = dm.val_idx[: 4 * dm.batch_size]
    with torch.no_grad():
        image_emb = model.encode_images(dm.images)
    _, text_emb = embed_gallery(model, dm.images[:1], dm.tokens)
    ours = retrieval(image_emb, text_emb, queries, dm.gallery().truth)
    for key in ("i2t_R@1", "t2i_R@1", "i2t_mean_rank", "t2i_mean_rank"):
        assert ours[key] == pytest.approx(metrics[f"val/{key}"], abs=1e-6), key
    hard = hard_negatives(model, dm, image_emb, text_emb, queries)
    for kind in NEGATIVE_KINDS:
        assert hard[kind] == pytest.approx(metrics[f"val/hn_{kind}"], abs=1e-6), kind
    some = queries[:6]
    with torch.no_grad():
        scores = model.score_pairs(dm.images[some], dm.tokens[dm.caption_of[some]])
    torch.testing.assert_close(scores, (image_emb[some] * text_emb[dm.caption_of[some]]).sum(-1))
