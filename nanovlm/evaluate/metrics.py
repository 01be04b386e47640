"""Retrieval metrics written out by hand as a torchmetrics `Metric`.

torchmetrics' own retrieval recall (1.7.4-1.9.0) skips positives whose score is <= 0, which cosine
similarities often are, so recall is computed here from the rank of the true item instead. Ranks and wins come
from `nanovlm.evaluate.ranking`: one tie rule (ties fail) and NaN ranked last, wherever anything is ranked.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from nanovlm.evaluate.ranking import beats, true_item_rank


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
    """Generated captions against the true ones: the share exactly right (every position, padding included, so
    a caption that ends early or late is wrong), and for a closed world's captions per slot the share whose word
    in that slot is right (slot s is token s + 1, after [CLS]); free-form captions have no slots. Over captions
    seen since reset; like RetrievalRecall, a caption id seen twice across processes is counted once."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, slot_names: tuple[str, ...]) -> None:
        super().__init__()
        self.slot_names = tuple(slot_names)
        self.add_state("correct", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, generated: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor) -> None:
        """generated, targets [Q, T] token ids with [CLS] first; ids [Q]."""
        slots_fit = not self.slot_names or targets.shape[1] - 1 == len(self.slot_names)
        if generated.shape != targets.shape or not slots_fit:
            raise ValueError(f"captions {tuple(generated.shape)} vs {tuple(targets.shape)} for slots {self.slot_names}")
        self.correct.append(generated[:, 1:] == targets[:, 1:])  # [Q, S]
        self.ids.append(ids)

    def compute(self) -> dict[str, torch.Tensor]:
        correct, ids = dim_zero_cat(self.correct), dim_zero_cat(self.ids)
        correct = correct[_first_occurrence(ids)[1]]  # [Q, S] bool
        out = {"exact": correct.all(dim=1).float().mean()}
        out.update({name: correct[:, s].float().mean() for s, name in enumerate(self.slot_names)})
        return out
