"""Figure files: matplotlib without a display, one way to save a figure (every picture nanovlm draws), and several
figures drawn at once in two processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: (where the figure goes, what draws it there): the unit `draw_side_by_side` shares between two processes.
FigureJob = tuple[Path, Callable[[Path], Any]]


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


def draw_side_by_side(jobs: Sequence[FigureJob], timeout_s: float = 60.0) -> list[Path]:
    """Draws every job's figure at its path and returns the paths, in order.

    Drawing is single-threaded Python, and at the end of a run the training's second core is idle; so on Linux the
    first job is drawn in a forked copy of this process while this one draws the rest (docs/performance.md). The
    copy only draws and writes its file, then leaves with `os._exit` (no atexit, no buffered output flushed twice,
    nothing of W&B's). Should it fail, or not be done within `timeout_s`, its figure is drawn here after all, where
    an error shows as usual. Elsewhere (macOS, Windows: fork is unsafe or absent) all are drawn here.
    """
    jobs = [(Path(path), draw) for path, draw in jobs]
    if len(jobs) < 2 or sys.platform != "linux":
        return [_draw(job) for job in jobs]
    first = jobs[0]
    first[0].unlink(missing_ok=True)  # a file left from an earlier drawing must not pass for this one
    pid = os.fork()
    if pid == 0:  # the copy
        code = 1
        try:
            import torch

            torch.set_num_threads(1)  # as DataLoader workers do: the parent's OpenMP pool does not survive a fork
            _draw(first)
            code = 0
        finally:
            os._exit(code)
    paths = [_draw(job) for job in jobs[1:]]
    if not (_exited_cleanly(pid, timeout_s) and first[0].is_file()):
        _draw(first)
    return [first[0], *paths]


def _draw(job: FigureJob) -> Path:
    path, draw = job
    draw(path)
    return path


def _exited_cleanly(pid: int, timeout_s: float) -> bool:
    """Waits for the forked copy; True when it exited with 0. One that is still busy at the timeout is killed."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.005)
