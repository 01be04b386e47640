"""A curriculum for the question world: the first epochs train on scenes of a few colour x shape combos, the rest on
all of them (`data.curriculum_epochs`, `data.curriculum_combos`; docs/vqa.md, "A curriculum: a few combos first").

Why: a model that has not yet found an object by its words gets no reward for it until it also uses what it found,
and the reverse, so on the full world that search is slow. With four combos there are few objects to tell apart,
and what the model learns about them carries over to all 27 combos: with the same steps, every design that reads
the picture answers better (docs/vqa.md: late +0.10, early +0.15, cross +0.02). It does not make the relation
family learnable; that stays at chance. Validation always asks about the full world: the curriculum changes what
is trained on first, never what is measured."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Sampler

from nanovlm.data.questions import Combo


def first_combos(combos: Sequence[Combo], k: int, seed: int) -> tuple[Combo, ...]:
    """`k` of `combos`, drawn with `seed`, holding at least two colours and two shapes (so every family, `compare`
    of two colours or two shapes included, can be asked about them)."""
    if not 2 <= k <= len(combos):
        raise ValueError(f"data.curriculum_combos must be in 2..{len(combos)} (the training combos), got {k}")
    rng = random.Random(seed)
    for _ in range(1000):
        chosen = tuple(rng.sample(list(combos), k))
        if len({c for c, _ in chosen}) >= 2 and len({s for _, s in chosen}) >= 2:
            return chosen
    raise ValueError(f"data.curriculum_combos={k}: no {k} training combos hold two colours and two shapes")


class StagedSampler(Sampler[int]):
    """While the epoch is below `epochs`, `len(then)` indices drawn from `first` (each shuffled pass over it in turn,
    so a smaller first stage repeats); after, a shuffled pass over `then`. Every epoch has the same length, so the
    length Lightning reads once (and the schedule it sizes) holds for both stages.

    `__iter__` is a generator, so `epoch()` is read at the epoch's first batch, when Lightning has set the epoch,
    also in a resumed run. The order is a function of (`seed`, epoch) alone: every DDP rank draws the same list
    (Lightning's DistributedSamplerWrapper splits it among them) and a resumed run draws what it would have."""

    def __init__(
        self, first: torch.Tensor, then: torch.Tensor, epochs: int, epoch: Callable[[], int], seed: int = 0
    ) -> None:
        if not len(first) or not len(then):
            raise ValueError("both stages need at least one index")
        self.first, self.then, self.epochs, self.epoch, self.seed = first, then, epochs, epoch, seed

    def __len__(self) -> int:
        return len(self.then)

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch()
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if epoch >= self.epochs:
            yield from self.then[torch.randperm(len(self.then), generator=generator)].tolist()
            return
        passes = -(-len(self.then) // len(self.first))
        order = torch.cat([torch.randperm(len(self.first), generator=generator) for _ in range(passes)])
        yield from self.first[order[: len(self.then)]].tolist()
