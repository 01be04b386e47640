import pytest
import torch

from nanovlm.evaluate.metrics import RetrievalRecall, true_item_rank


def _compute(scores: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor | None = None) -> dict:
    metric = RetrievalRecall(ks=(1, 2, 5))
    metric.update(scores, targets, torch.arange(len(targets)) if ids is None else ids)
    return {k: v.item() for k, v in metric.compute().items()}


def test_identity_similarity_ranks_every_item_first() -> None:
    out = _compute(torch.eye(6), torch.arange(6))
    assert out == {"R@1": 1.0, "R@2": 1.0, "R@5": 1.0, "mean_rank": 1.0, "median_rank": 1.0}


def test_reversed_similarity_ranks_every_item_last() -> None:
    # Scores decrease with the column index, and the true item is column i: rank i + 1.
    n = 6
    scores = -torch.arange(n, dtype=torch.float).repeat(n, 1)
    assert true_item_rank(scores, torch.arange(n)).tolist() == [1, 2, 3, 4, 5, 6]
    flipped = torch.eye(n).flip(1)  # each query's best column is someone else's
    out = _compute(flipped - 1.0, torch.arange(n))  # all scores <= 0, as cosines often are
    # The true item scores -1, tied with 4 others and below one: pessimistically last, rank 6.
    assert out["R@1"] == 0.0 and out["R@5"] == 0.0 and out["mean_rank"] == 6.0


def test_shuffled_similarity_gives_the_known_ranks() -> None:
    torch.manual_seed(0)
    n = 10
    ranks_wanted = torch.tensor([1, 1, 2, 3, 1, 7, 10, 2, 5, 1])
    scores = torch.empty(n, n)
    targets = torch.randperm(n)
    for q in range(n):
        order = torch.randperm(n)  # gallery columns from best to worst
        order = order[order != targets[q]]
        order = torch.cat([order[: ranks_wanted[q] - 1], targets[q : q + 1], order[ranks_wanted[q] - 1 :]])
        scores[q, order] = torch.linspace(0.9, -0.9, n)
    assert torch.equal(true_item_rank(scores, targets), ranks_wanted)
    out = _compute(scores, targets)
    assert out["R@1"] == pytest.approx(0.4) and out["R@2"] == pytest.approx(0.6) and out["R@5"] == pytest.approx(0.8)
    assert out["mean_rank"] == pytest.approx(ranks_wanted.float().mean().item())


def test_ties_count_against_the_query() -> None:
    out = _compute(torch.zeros(4, 4), torch.arange(4))
    assert out["R@1"] == 0.0 and out["mean_rank"] == 4.0
    scores = torch.tensor([[0.5, 0.5, 0.1]])  # true item 0 tied with item 1
    assert true_item_rank(scores, torch.tensor([0])).item() == 2


def test_repeated_queries_are_counted_once() -> None:
    # A DistributedSampler pads the last batch with repeats; they must not count twice.
    metric = RetrievalRecall(ks=(1,))
    metric.update(torch.eye(3), torch.arange(3), torch.arange(3))
    metric.update(torch.zeros(1, 3), torch.tensor([2]), torch.tensor([7]))  # a miss, id 7
    metric.update(torch.zeros(1, 3), torch.tensor([2]), torch.tensor([7]))  # the same query again
    assert metric.compute()["R@1"].item() == 0.75
