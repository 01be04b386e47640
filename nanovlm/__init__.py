"""nanovlm: tiny contrastive vision-language models (CLIP / SigLIP dual encoders) on coloured shapes."""

import importlib
import sys
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


class _MovedModules:
    """A last-resort import finder: `import nanovlm.losses` (a module of the flat layout, before the subpackages)
    fails with one line naming where it went (nanovlm.run.moved.MODULES), not a bare ModuleNotFoundError."""

    @staticmethod
    def find_spec(fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.startswith("nanovlm."):
            from nanovlm.run.moved import MODULES

            if fullname in MODULES:
                raise ModuleNotFoundError(f"{fullname} moved to {MODULES[fullname]}", name=fullname)


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())  # last: only what no other finder found


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nanovlm' has no attribute {name!r}")
