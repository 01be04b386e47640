"""The question world's curriculum (nanovlm.data.curriculum): the first epochs' questions are about a few combos only,
the train and val questions are those of the same world without it, and the Trainer sees the two stages in turn."""

from __future__ import annotations

from collections import Counter

import lightning as L
import pytest
import torch

from nanovlm.data.curriculum import StagedSampler, first_combos
from nanovlm.data.questions import FAMILIES, answer, reachable_answers
from nanovlm.data.vqa import ALL_COMBOS, VQADataModule, cogent_combos


@pytest.mark.parametrize("k", [2, 4, 9])
def test_first_combos_hold_two_colours_and_two_shapes_of_the_training_combos(k):
    for combos in (ALL_COMBOS, cogent_combos("A")):
        chosen = first_combos(combos, k, seed=3)
        assert len(set(chosen)) == k and set(chosen) <= set(combos)
        assert len({c for c, _ in chosen}) >= 2 and len({s for _, s in chosen}) >= 2
        assert chosen == first_combos(combos, k, seed=3)


@pytest.mark.parametrize("k", [1, 28])
def test_a_combo_count_out_of_range_is_one_line_naming_the_key(k):
    with pytest.raises(ValueError, match=r"^data.curriculum_combos must be in 2..27 \(the training combos\)"):
        first_combos(ALL_COMBOS, k, seed=0)


def test_reachable_answers_are_the_colours_and_shapes_the_combos_hold():
    combos = (("red", "circle"), ("blue", "square"))
    assert reachable_answers("query_colour", combos) == ("red", "blue")  # in the palette's order
    assert reachable_answers("query_shape", combos) == ("circle", "square")
    assert reachable_answers("count", combos) == ("0", "1", "2", "3", "4")


@pytest.fixture(scope="module", params=["random", "cogent"])
def worlds(request) -> tuple[VQADataModule, VQADataModule]:
    settings = {"n_questions": 600, "val_fraction": 0.2, "split_seed": 1, "split": request.param}
    return VQADataModule(**settings), VQADataModule(**settings, curriculum_epochs=1, curriculum_combos=4)


def test_the_curriculum_asks_about_its_combos_only_and_leaves_train_and_val_unchanged(worlds):
    plain, staged = worlds
    n_train = len(plain.train_idx)
    assert torch.equal(staged.train_idx, plain.train_idx) and torch.equal(staged.val_idx, plain.val_idx)
    end = len(plain.all_idx)  # train, then val (on CoGenT: B, then held-out A)
    assert staged.texts[:end] == plain.texts and torch.equal(staged.pixels[:end], plain.pixels)
    assert torch.equal(staged.condition[:end], plain.condition)
    first = staged.first_idx.tolist()
    assert len(first) == -(-n_train // 4) and min(first) == end and max(first) == len(staged.all_idx) - 1
    chosen = set(staged.first_combos)
    assert chosen <= set(ALL_COMBOS if plain.split == "random" else cogent_combos("A"))  # train's combos only
    per_family = Counter()
    for i in first:
        assert {o[:2] for o in staged.scenes[i]} <= chosen, staged.scenes[i]
        assert answer(staged.scenes[i], staged.questions[i]) == staged.answers[i]
        assert int(staged.condition[i]) == 0
        per_family[staged.questions[i].family] += 1
    assert set(per_family) == set(FAMILIES)  # every family is asked about the few combos too


SPATIAL = ("left of", "right of", "above", "below")


def spatial_words(texts: list[str]) -> Counter:
    return Counter(word for text in texts for word in SPATIAL if f" {word} " in f" {text} ")


def test_curriculum_relations_asks_the_first_stage_only_those_words_and_leaves_train_and_val_unchanged():
    """data.curriculum_relations=['left of']: every spatial word of the curriculum's questions (relation and the
    query clauses) is 'left of'; train and val are the same questions as without it, with all four words."""
    settings = {"n_questions": 800, "val_fraction": 0.25, "families": ["relation", "query_colour"]}
    plain = VQADataModule(**settings, curriculum_epochs=1, curriculum_combos=27)
    staged = VQADataModule(**settings, curriculum_epochs=1, curriculum_combos=27, curriculum_relations=["left of"])
    end = len(plain.train_idx) + len(plain.val_idx)
    assert staged.texts[:end] == plain.texts[:end]
    first = spatial_words([staged.texts[i] for i in staged.first_idx])
    assert set(first) == {"left of"} and first["left of"] >= len(staged.first_idx) // 2  # relation: half of them
    assert set(spatial_words(staged.texts[:end])) == set(SPATIAL)
    for i in staged.first_idx.tolist():
        assert answer(staged.scenes[i], staged.questions[i]) == staged.answers[i]


def test_bad_curriculum_and_relation_settings_are_one_line_naming_the_key():
    with pytest.raises(ValueError, match=r"^data.curriculum_epochs must be >= 0"):
        VQADataModule(n_questions=60, curriculum_epochs=-1)
    with pytest.raises(ValueError, match=r"^data.relations must name at least one spatial word"):
        VQADataModule(n_questions=60, relations=[])
    with pytest.raises(
        ValueError, match=r"^data.curriculum_relations must be distinct words of data.relations \(left of\)"
    ):
        VQADataModule(n_questions=60, relations=["left of"], curriculum_epochs=1, curriculum_relations=["above"])


def test_staged_sampler_serves_the_first_stage_then_the_second():
    first, then = torch.arange(100, 103), torch.arange(10)
    epoch = [0]
    sampler = StagedSampler(first, then, epochs=2, epoch=lambda: epoch[0])
    for e in (0, 1):
        epoch[0] = e
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 10 and set(drawn) == {100, 101, 102}
        assert max(Counter(drawn).values()) - min(Counter(drawn).values()) <= 1  # whole passes over the 3, in turn
    epoch[0] = 2
    assert sorted(sampler) == list(range(10))
    again = StagedSampler(first, then, epochs=2, epoch=lambda: epoch[0])  # same seed and epoch: same order
    assert list(again) == list(sampler)
    other = StagedSampler(first, then, epochs=2, epoch=lambda: epoch[0], seed=1)
    assert list(other) != list(sampler)


class _Indices(L.Callback):
    def __init__(self) -> None:
        self.by_epoch: dict[int, set[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.by_epoch.setdefault(trainer.current_epoch, set()).update(batch["index"].tolist())


@pytest.mark.integration
def test_train_sees_the_curriculum_first_then_the_training_questions(make_cfg):
    from nanovlm.run.training import train

    seen = _Indices()
    settings = ["data.n_questions=600", "data.val_fraction=0.2", "data.batch_size=64", "data.curriculum_epochs=1"]
    cfg = make_cfg("data=vqa", "fusion=blind", "trainer.max_epochs=2", *settings)
    train(cfg, extra_callbacks=[seen])
    world = VQADataModule(n_questions=600, val_fraction=0.2, curriculum_epochs=1)
    assert seen.by_epoch[0] == set(world.first_idx.tolist())
    assert seen.by_epoch[1] == set(world.train_idx.tolist())


@pytest.mark.integration
def test_a_curriculum_as_long_as_the_run_warns_that_it_fills_every_epoch(make_cfg):
    from nanovlm.run.training import train

    settings = ["data.n_questions=120", "data.val_fraction=0.5", "data.batch_size=64", "data.curriculum_epochs=1"]
    with pytest.warns(UserWarning, match=r"data.curriculum_epochs=1 >= trainer.max_epochs=1: every epoch trains on"):
        train(make_cfg("data=vqa", "fusion=blind", "trainer.max_epochs=1", *settings))
