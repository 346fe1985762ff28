"""The cells every results table writes the same way."""

from __future__ import annotations

#: the retrieval metrics of every Shapes-CIR table, in their column order
METRICS = ("R@1", "R@5", "R@10", "R@50", "mAP@10")


def fmt(x: float) -> str:
    return f"{x:.1f}"


def _arrow(before: float, after: float) -> str:
    return f"{before:.1f} → {after:.1f} ({after - before:+.1f})"
