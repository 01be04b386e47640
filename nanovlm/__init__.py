"""nanovlm: tiny contrastive vision-language models (CLIP / SigLIP dual encoders) on coloured shapes."""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nanovlm.data import ShapesDataModule
    from nanovlm.module import DualEncoder
    from nanovlm.training import train

__all__ = ["DualEncoder", "ShapesDataModule", "train"]

# Loaded on first use: `import nanovlm.config` (train.py's main process, sweep.py) must not pay for importing
# torch and Lightning, which it never uses (the cost is in docs/performance.md).
_LAZY = {"DualEncoder": "nanovlm.module", "ShapesDataModule": "nanovlm.data", "train": "nanovlm.training"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nanovlm' has no attribute {name!r}")
