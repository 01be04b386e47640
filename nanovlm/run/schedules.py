"""Learning-rate schedules, as factories the DualEncoder calls once it knows the run's step count."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.1, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up from ~0 to the base lr over the first `warmup_fraction` of the steps, then a
    half cosine down to `min_lr_ratio` x base lr at the last step. Warm-up keeps a transformer's
    first Adam steps (whose second-moment estimate is still noisy) from wrecking its attention."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"scheduler.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    total_steps = max(int(total_steps), 1)
    warmup_steps = round(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - 1 - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
