"""The benchmark's statistics and its Markdown table: medians with their range, and the ratios that are its headline."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def cell(values: Sequence[float], unit: str = "s") -> str:
    med, lo, hi = summary(values)
    fmt = ".3f" if med < 1 else ".2f" if med < 10 else ".1f"
    return f"{med:{fmt}} {unit} ({lo:{fmt}}–{hi:{fmt}}, n={len(values)})"


def steady(per_epoch: Sequence[float]) -> float:
    """Median epoch time without the first epoch (warm-up: first-call allocations, lazy inits)."""
    return statistics.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)


Row = tuple[str, str, str, str, str]  # figure, Lightning, plain / parallel, ratio, target


def ratio_cell(a: Sequence[float], b: Sequence[float]) -> tuple[str, float]:
    ratio = statistics.median(a) / statistics.median(b)
    return f"{ratio:.2f}x", ratio


def markdown(rows: Sequence[Row], header: str) -> str:
    lines = [header, "", "| figure | nanovlm (Lightning) | reference | ratio | target |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
