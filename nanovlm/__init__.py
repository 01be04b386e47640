"""nanovlm: tiny contrastive vision-language models (CLIP / SigLIP dual encoders) on coloured shapes."""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nanovlm.data.shapes import ShapesDataModule
    from nanovlm.run.training import train
    from nanovlm.tasks.dual_encoder import DualEncoder

__all__ = ["DualEncoder", "ShapesDataModule", "train"]

# Loaded on first use: `import nanovlm.run.config` (train.py's main process, sweep.py) must not pay for importing
# torch and Lightning, which it never uses (the cost is in docs/performance.md).
_LAZY = {
    "DualEncoder": "nanovlm.tasks.dual_encoder",
    "ShapesDataModule": "nanovlm.data.shapes",
    "train": "nanovlm.run.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nanovlm' has no attribute {name!r}")
