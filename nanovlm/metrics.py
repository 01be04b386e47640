"""Retrieval metrics written out by hand as a torchmetrics `Metric`.

torchmetrics' own retrieval recall (1.7.4-1.9.0) skips positives whose score is <= 0, which cosine
similarities often are, so recall is computed here from the rank of the true item instead.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def true_item_rank(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's best-scoring true gallery item; ties count against the query.

    scores [Q, G]; targets either [Q] long (the gallery column of the one true item) or [Q, G] bool (every true
    item: a scenes caption is shown by several images). The rank is 1 + the number of false items scoring at
    least as high as the best true one, so R@k means "a true item is in the top k" and other true items never
    push it down. A false item tied with the truth is ranked above it: a constant score matrix gives rank
    G - (number of true items) + 1, not 1.
    """
    if targets.dtype == torch.bool:
        best_true = scores.masked_fill(~targets, float("-inf")).amax(dim=1, keepdim=True)  # [Q, 1]
        return ((scores >= best_true) & ~targets).sum(dim=1) + 1  # [Q]
    true_scores = scores.gather(1, targets[:, None])  # [Q, 1]
    return (scores >= true_scores).sum(dim=1)  # [Q]


# Two scores closer than this (relative to their size, at least 1) are a tie. The same sum of the same
# float32 numbers in another order (a mean-pool text encoder reading a word-order swap) differs in the last
# bits; that is not a preference, and counting it as one would give a bag-of-words model a coin flip.
TIE_TOLERANCE = 1e-6


def beats(true_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Whether each true score is strictly greater than its negative's (broadcast): a tie is a failure."""
    margin = TIE_TOLERANCE * torch.maximum(true_scores.abs(), negative_scores.abs()).clamp(min=1.0)
    return true_scores > negative_scores + margin


def hard_negative_accuracy(
    true_scores: torch.Tensor, negative_scores: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """[K] per kind of negative: the share of images whose true caption scores strictly higher than that
    negative (`beats`; ties fail). true_scores [Q], negative_scores [Q, K], valid [Q, K] bool: images whose
    negative of a kind does not exist (it would be the truth) are left out of that kind's share; a kind with no
    valid negative at all gives nan."""
    wins = beats(true_scores[:, None], negative_scores)  # [Q, K]
    valid = torch.ones_like(wins) if valid is None else valid.bool()
    return (wins & valid).sum(0) / valid.sum(0)  # 0/0 -> nan


class HardNegativeAccuracy(Metric):
    """`hard_negative_accuracy` over the queries seen since reset, each query id counted once (like
    RetrievalRecall: a DistributedSampler pads the last batch with repeats)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, kinds: tuple[str, ...]) -> None:
        super().__init__()
        self.kinds = tuple(kinds)
        self.add_state("wins", default=[], dist_reduce_fx="cat")
        self.add_state("valid", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(
        self, true_scores: torch.Tensor, negative_scores: torch.Tensor, valid: torch.Tensor, ids: torch.Tensor
    ) -> None:
        self.wins.append(beats(true_scores[:, None], negative_scores))
        self.valid.append(valid.bool())
        self.ids.append(ids)

    def compute(self) -> dict[str, torch.Tensor]:
        wins, valid, ids = dim_zero_cat(self.wins), dim_zero_cat(self.valid), dim_zero_cat(self.ids)
        _, first = _first_occurrence(ids)
        wins, valid = wins[first], valid[first]
        accuracy = (wins & valid).sum(0) / valid.sum(0)
        return {kind: accuracy[k] for k, kind in enumerate(self.kinds)}


class RetrievalRecall(Metric):
    """recall@k, mean rank and median rank of the true item, over queries seen since reset.

    Each query carries an id; when processes are synced, a query seen twice (DistributedSampler
    pads the last batch with repeats) is counted once.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: tuple[int, ...] = (1, 5, 10)) -> None:
        super().__init__()
        self.ks = tuple(ks)
        self.add_state("ranks", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor) -> None:
        """scores [Q, G]; targets [Q] true columns or [Q, G] bool true items (see true_item_rank); ids [Q]."""
        self.ranks.append(true_item_rank(scores, targets))
        self.ids.append(ids)

    def compute(self) -> dict[str, torch.Tensor]:
        ranks, ids = dim_zero_cat(self.ranks), dim_zero_cat(self.ids)
        _, first = _first_occurrence(ids)
        ranks = ranks[first].float()
        out = {f"R@{k}": (ranks <= k).float().mean() for k in self.ks}
        out["mean_rank"] = ranks.mean()
        out["median_rank"] = ranks.median()
        return out


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique ids and the position of each one's first occurrence in `ids`."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full((len(unique),), len(ids), device=ids.device, dtype=positions.dtype)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first


class CaptionAccuracy(Metric):
    """Generated captions against the true ones: the share exactly right, and per slot the share whose word in
    that slot is right (slot s is token s + 1, after [CLS]), over captions seen since reset. Like
    RetrievalRecall, a caption id seen twice across processes is counted once."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, slot_names: tuple[str, ...]) -> None:
        super().__init__()
        self.slot_names = tuple(slot_names)
        self.add_state("correct", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, generated: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor) -> None:
        """generated, targets [Q, T] token ids with [CLS] first; ids [Q]."""
        if generated.shape != targets.shape or targets.shape[1] - 1 != len(self.slot_names):
            raise ValueError(f"captions {tuple(generated.shape)} vs {tuple(targets.shape)} for slots {self.slot_names}")
        self.correct.append(generated[:, 1:] == targets[:, 1:])  # [Q, S]
        self.ids.append(ids)

    def compute(self) -> dict[str, torch.Tensor]:
        correct, ids = dim_zero_cat(self.correct), dim_zero_cat(self.ids)
        correct = correct[_first_occurrence(ids)[1]]  # [Q, S] bool
        out = {"exact": correct.all(dim=1).float().mean()}
        out.update({name: correct[:, s].float().mean() for s, name in enumerate(self.slot_names)})
        return out
