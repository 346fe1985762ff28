"""Pilot charts as SVG, drawn on the server with matplotlib (no CDN, no JavaScript chart library).

The dashboard page and the HTML report embed the same SVGs, so what an operator sees on a phone
and what a manager reads in a mailed report are the same pictures.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

from .metrics import group_queries, hit_curve, summarize, version_label
from .tagger import DEFAULT_TAGGER, Tagger

LABELS = {
    "false_hit_rate": "false-hit rate",
    "precision_at_1": "precision@1",
    "hit_at_k": "hit@K",
    "correction_rate": "correction rate",
}


def _figure(width: float = 5.0, height: float = 3.2) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _svg(fig: Any) -> str:
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.tight_layout()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text: smaller, searchable, selectable
        fig.savefig(buf, format="svg")
    plt.close(fig)
    return buf.getvalue()


def over_time(queries: Iterable[dict[str, Any]], metric: str = "false_hit_rate", period: str = "day") -> str:
    """One line per version over days or weeks, with the Wilson 95 % band around it."""
    rows = list(queries)
    by_version = group_queries(rows, "version")
    periods = list(group_queries(rows, period))
    fig, ax = _figure()
    for version, qs in by_version.items():
        xs, ys, lo, hi = [], [], [], []
        for p, members in group_queries(qs, period).items():
            s = summarize(members)
            if s[metric] is None:
                continue
            xs.append(periods.index(p))
            ys.append(s[metric])
            lo.append(s[f"{metric}_ci"][0])
            hi.append(s[f"{metric}_ci"][1])
        if xs:
            (line,) = ax.plot(xs, ys, marker="o", label=version_label(by_version[version]))
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xticks(range(len(periods)), periods, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.set_title(f"{LABELS.get(metric, metric)} by {period}, per version (95 % band)", fontsize=10)
    if by_version:
        ax.legend(fontsize=8, title="version", title_fontsize=8)
    return _svg(fig)


def hit_at_k(queries: Iterable[dict[str, Any]], ks: Sequence[int] = (1, 2, 3, 5, 10, 20, 50)) -> str:
    """hit@K against K, one line per version."""
    by_version = group_queries(queries, "version")
    fig, ax = _figure()
    for qs in by_version.values():
        pairs = [(k, v) for k, v in hit_curve(qs, ks).items() if v is not None]
        if pairs:
            ax.plot([k for k, _ in pairs], [v for _, v in pairs], marker="o", label=version_label(qs))
    ax.set_xscale("log")
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_ylim(0, 1)
    ax.set_xlabel("K")
    ax.set_ylabel("hit@K")
    ax.set_title("hit@K against K, per version", fontsize=10)
    if by_version:
        ax.legend(fontsize=8, title="version", title_fontsize=8)
    return _svg(fig)


def _bars(groups: dict[str, list[dict[str, Any]]], title: str, labels: list[str] | None = None) -> str:
    """Precision@1 and false-hit rate per group, with 95 % error bars."""
    names = list(groups)
    fig, ax = _figure()
    width = 0.4
    for offset, metric in ((-width / 2, "precision_at_1"), (width / 2, "false_hit_rate")):
        vals, err_lo, err_hi, xs = [], [], [], []
        for i, name in enumerate(names):
            s = summarize(groups[name])
            if s[metric] is None:
                continue
            xs.append(i + offset)
            vals.append(s[metric])
            err_lo.append(s[metric] - s[f"{metric}_ci"][0])
            err_hi.append(s[f"{metric}_ci"][1] - s[metric])
        ax.bar(xs, vals, width, yerr=[err_lo, err_hi], capsize=3, label=LABELS[metric])
    ax.set_xticks(range(len(names)), labels or names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _svg(fig)


def by_category(queries: Iterable[dict[str, Any]], tagger: Tagger = DEFAULT_TAGGER) -> str:
    """Precision@1 and false-hit rate per modifier category, with 95 % error bars."""
    return _bars(group_queries(queries, "category", tagger), "by modifier category (95 % intervals)")


def by_version(queries: Iterable[dict[str, Any]]) -> str:
    """Precision@1 and false-hit rate per served version, in the order they first served."""
    grouped = group_queries(queries, "version")
    groups = {v: grouped[v] for v in sorted(grouped, key=lambda v: min(q["created"] for q in grouped[v]))}
    return _bars(groups, "per version (95 % intervals)", [version_label(groups[v]) for v in groups])


CHARTS = {"over-time": over_time, "hit-at-k": hit_at_k, "category": by_category, "versions": by_version}
