"""The one ranking rule: how a score beats another, and where a query's true item ranks in a gallery.

Validation (`metrics.RetrievalRecall`, `metrics.HardNegativeAccuracy`), `nanovlm.evaluate`, the captioner's
likelihood ranking and the benchmark's plain loop all rank through these two functions, so two code paths that
score the same model can only disagree where their scores differ by more than a tie.

The rule:
- **Ties fail.** A true item must score strictly higher than a false one to be ranked above it. Two scores closer
  than `TIE_TOLERANCE` (relative to their size, at least 1) are a tie: the same float32 numbers summed in another
  order (a mean-pool text encoder reading a word-order swap, a gallery encoded in chunks of another size) differ
  in their last bits, which is not a preference, and counting it as one would make a result depend on the BLAS,
  the thread count or the batch size.
- **NaN ranks last.** A NaN score is treated as -inf: a query whose true score is NaN is ranked below every false
  item (a miss, never a hit), and a false item whose score is NaN never beats a finite true score.
"""

from __future__ import annotations

import torch

# Two scores closer than this, relative to the larger magnitude (at least 1), are a tie. float32 carries ~7
# significant digits; cosines and the log-likelihoods of short captions are O(1-10), so reordered sums differ by
# ~1e-7 of their size, well inside it, while any preference a model has learned is far outside it.
TIE_TOLERANCE = 1e-6


def _nan_last(scores: torch.Tensor) -> torch.Tensor:
    return scores.float().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def beats(scores: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Whether each score is strictly greater than the other (broadcast), by more than a tie; NaN is -inf.

    Between two finite scores that means `a - b > TIE_TOLERANCE * max(|a|, |b|, 1)`; where either is infinite,
    plain `a > b` (so a finite score beats -inf, and -inf never beats -inf)."""
    a, b = _nan_last(scores), _nan_last(others)
    finite = a.isfinite() & b.isfinite()
    scale = torch.maximum(a.abs(), b.abs()).clamp(min=1.0)
    tied = finite & ((a - b).abs() <= TIE_TOLERANCE * scale.where(finite, torch.ones_like(scale)))
    return (a > b) & ~tied


def true_item_rank(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank [Q] of each query's best-scoring true gallery item, by the rule above.

    scores [Q, G]; targets either [Q] long (the gallery column of the one true item) or [Q, G] bool (every true
    item: a scenes caption is shown by 9 images, a COCO image has 5 captions). The rank is 1 + the number of false
    items that the best true item does not beat, so R@k means "a true item is in the top k", other true items
    never push it down, and a false item tied with the truth is ranked above it: a constant score matrix gives
    rank G - (number of true items) + 1, not 1.
    """
    if targets.dtype != torch.bool:
        targets = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, targets[:, None].long(), True)
    if targets.shape != scores.shape:
        raise ValueError(f"targets {tuple(targets.shape)} do not match scores {tuple(scores.shape)}")
    best_true = _nan_last(scores).masked_fill(~targets, float("-inf")).amax(dim=1, keepdim=True)  # [Q, 1]
    return (~beats(best_true, scores) & ~targets).sum(dim=1) + 1  # [Q]
