"""The one ranking rule (nanovlm.evaluate.ranking), on hand-built scores: ties fail, NaN ranks last, several true
items."""

from __future__ import annotations

import math

import torch

from nanovlm.evaluate.ranking import TIE_TOLERANCE, beats, true_item_rank

NAN, INF = float("nan"), float("inf")


def test_a_true_item_must_beat_a_false_one_by_more_than_a_tie() -> None:
    true = torch.tensor([0.5, 0.5, 0.5, 0.5, 3.0])
    other = torch.tensor([0.4, 0.5, 0.5 - 0.5 * TIE_TOLERANCE, 0.5 - 2 * TIE_TOLERANCE, 3.0 - 2 * TIE_TOLERANCE])
    # clear win; exact tie; tie within the tolerance (absolute below 1); just outside it; the relative scale at 3.0
    assert beats(true, other).tolist() == [True, False, False, True, False]
    assert beats(other, true).tolist() == [False, False, False, False, False]  # a tie fails either way


def test_nan_is_last_and_infinities_compare_plainly() -> None:
    a = torch.tensor([NAN, 0.0, NAN, INF, 0.0, -INF])
    b = torch.tensor([0.0, NAN, NAN, 1e30, -INF, -INF])
    assert beats(a, b).tolist() == [False, True, False, True, True, False]


def test_rank_counts_the_false_items_the_best_true_one_does_not_beat() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],  # true 0 is best: rank 1
            [0.5, 0.5, 0.1, 0.0],  # true 0 tied with false 1: the tie is ranked above it, rank 2
            [0.1, 0.2, 0.3, 0.4],  # true 0 worst: rank 4
            [0.3, 0.3, 0.3, 0.3],  # all tied: rank G = 4
        ]
    )
    assert true_item_rank(scores, torch.tensor([0, 0, 0, 0])).tolist() == [1, 2, 4, 4]


def test_several_true_items_the_best_one_counts_and_the_others_never_push_it_down() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.8, 0.85, 0.2], [0.3, 0.3, 0.3, 0.3, 0.3]])
    true = torch.tensor([[False, True, True, False, True], [True, True, False, False, False]])
    # Row 0: best true 0.9 beats every false item: rank 1 (true items 0.8 and 0.2 do not count against it).
    # Row 1: constant scores: 3 false items tie with the best true one: rank 5 - 2 + 1 = 4.
    assert true_item_rank(scores, true).tolist() == [1, 4]
    # The long-index form is the one-hot bool form.
    column = torch.tensor([3, 1])
    onehot = torch.nn.functional.one_hot(column, 5).bool()
    assert torch.equal(true_item_rank(scores, column), true_item_rank(scores, onehot))


def test_nan_scores_rank_last_never_as_hits() -> None:
    scores = torch.tensor([[NAN, 0.1, 0.2], [0.5, NAN, 0.2], [NAN, NAN, NAN]])
    ranks = true_item_rank(scores, torch.tensor([0, 0, 0]))
    # A NaN truth is below every false item (rank 3 of 3); a NaN false item does not beat a finite truth.
    assert ranks.tolist() == [3, 1, 3]


def test_rank_is_invariant_to_reordering_noise_below_the_tolerance() -> None:
    """The same scores computed another way (last-bit noise) give the same ranks: what lets two code paths agree."""
    torch.manual_seed(0)
    scores = torch.randn(50, 30).round(decimals=2)  # many exact ties
    noisy = scores + (torch.rand_like(scores) - 0.5) * 1e-7
    targets = torch.randint(0, 30, (50,))
    assert torch.equal(true_item_rank(scores, targets), true_item_rank(noisy, targets))
    assert not math.isclose(float((scores == noisy).float().mean()), 1.0)
