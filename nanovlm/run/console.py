"""What a run prints: progress, the final numbers and where the files are, and nothing a user learns to ignore.

Each line below was printed by a default `python train.py` and is stopped where it comes from:
- every Lightning INFO line twice: the `lightning` package puts its own console handler on its logger at import,
  and its records also propagate to the root logger, where Hydra's console handler prints them again. Hydra's
  job logging (conf/hydra/job_logging/nanovlm.yaml) gives its console handler `NotFrom("lightning")`.
- Lightning's advertisement for another logger ("💡 Tip: ... litlogger"), an INFO record on Lightning's
  rank-zero logger: `quiet_libraries()` drops it there.
- a FutureWarning from torch about `LeafSpec`, raised inside Lightning's own `_pytree` helper on every fit (it
  is Lightning's use of torch, nothing a user can change): `quiet_libraries()` ignores that one warning from
  that one module.
- a model summary ending in `Total FLOPs: 0`: Lightning counts FLOPs only for a module with an
  `example_input_array`, and shows the column anyway. `nanovlm.run.callbacks.ParamSummary` prints the table without
  it.
Elsewhere, at their own causes: W&B's "The anonymous setting has no effect" (Lightning's WandbLogger passes that
setting; `tracking.build_logger` starts the W&B run itself), W&B's end-of-run history block (`quiet`: train()
prints the final numbers and where the run is), and Lightning's "`weights_only` was not set" on every save (the
checkpoint callbacks set it).

Nothing here imports torch or Lightning: Hydra imports this module to configure logging before the job starts.
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_TIP = "💡 Tip:"
# The logger Lightning's rank_zero_info writes to (the tip is one of its records).
LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class NotFrom(logging.Filter):
    """Drops the records of logger `name` and its children (logging.Filter(name) keeps only those)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not super().filter(record) if self.name else True


class NoTips(logging.Filter):
    """Drops Lightning's product tips."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP)


def quiet_libraries() -> None:
    """Silence the tip and the warning described in the module docstring. Idempotent: train() calls it."""
    rank_zero = logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER)
    if not any(isinstance(f, NoTips) for f in rank_zero.filters):
        rank_zero.addFilter(NoTips())
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
