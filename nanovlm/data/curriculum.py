"""A curriculum for the question world: the first epochs train on scenes of a few colour x shape combos, the rest on
all of them (`data.curriculum_epochs`, `data.curriculum_combos`; docs/vqa.md, "Why relation stays at chance").

Why: a relation question ("is the red circle left of the blue square?") is answered only by a model that finds both
named objects and compares their positions, and from scratch none of the fusion designs starts to: finding an object
by its words pays off only once the positions are compared, and comparing pays off only once both are found, so the
training loss sits at ln 2. With four combos there are a dozen ordered pairs to tell apart and the search finds the
binding within a few hundred steps; the words then carry over to all 27 combos in a few hundred more. Validation
always asks about the full world: the curriculum changes what is trained on first, never what is measured.
"""

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
    """While `epoch()` < `epochs`, `len(then)` indices drawn from `first` (each shuffled pass over it in turn, so
    a smaller first stage repeats); after, a shuffled pass over `then`. Every epoch has the same length, so the
    length Lightning reads once (and the schedule it sizes) holds for both stages. The epoch is read when an
    epoch's iteration starts, so a resumed run picks the stage its epoch is in."""

    def __init__(self, first: torch.Tensor, then: torch.Tensor, epochs: int, epoch: Callable[[], int]) -> None:
        if not len(first) or not len(then):
            raise ValueError("both stages need at least one index")
        self.first, self.then, self.epochs, self.epoch = first, then, epochs, epoch

    def __len__(self) -> int:
        return len(self.then)

    def __iter__(self) -> Iterator[int]:
        if self.epoch() >= self.epochs:
            yield from self.then[torch.randperm(len(self.then), device=self.then.device)].tolist()
            return
        passes = -(-len(self.then) // len(self.first))
        order = torch.cat([torch.randperm(len(self.first), device=self.first.device) for _ in range(passes)])
        yield from self.first[order[: len(self.then)]].tolist()
