"""Figure files: matplotlib without a display, and one way to save a figure (every picture nanovlm draws)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, tight: bool = True) -> Path:
    """`tight=False` for the pictures drawn at the end of every run, whose margins are set by hand: a tight
    bounding box lays out and draws the whole figure twice (timings in docs/performance.md)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    return path
