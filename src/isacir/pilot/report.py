"""``isacir pilot report``: one self-contained HTML file (charts inline) plus a CSV of every table.

For people who will not open a dashboard: the file can be mailed, archived or printed, and it
fetches nothing when opened.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._fs import atomic_write_text
from . import charts
from .interleaving import interleaving_report
from .metrics import DEFINITIONS, GROUPINGS, RATES, pilot_summary

COLUMNS = (
    "key",
    "label",
    "queries",
    "judged",
    *RATES,
    *(f"{r}_ci" for r in RATES),
    "mrr",
    "latency_p50_ms",
    "latency_p95_ms",
    "operator_timed",
    "operator_s_median",
    "operator_s_mean",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(f"{v:.4f}" for v in value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table_csv(groups: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for g in groups:
        w.writerow([_cell(g.get(c)) for c in COLUMNS])
    return buf.getvalue()


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _seconds(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f} s"


def _html_table(title: str, groups: list[dict[str, Any]]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "",
            "queries",
            "judged",
            "false-hit",
            "precision@1",
            "hit@K",
            "corrected",
            "MRR",
            "p50 ms",
            "operator s",
        )
    )
    rows = []
    for g in groups:
        ci = g.get("false_hit_rate_ci")
        fh = _pct(g["false_hit_rate"]) + (f" <small>({100 * ci[0]:.1f}–{100 * ci[1]:.1f})</small>" if ci else "")
        cells = [
            html.escape(str(g.get("label") or g["key"])),
            g["queries"],
            g["judged"],
            fh,
            _pct(g["precision_at_1"]),
            _pct(g["hit_at_k"]),
            _pct(g["correction_rate"]),
            "–" if g["mrr"] is None else f"{g['mrr']:.3f}",
            "–" if g["latency_p50_ms"] is None else f"{g['latency_p50_ms']:.0f}",
            "–" if g["operator_s_median"] is None else f"{g['operator_s_median']:.1f}",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _interleaving_table(comparisons: list[dict[str, Any]]) -> str:
    """Each interleaved pair of versions (by registry name): judged searches, wins, ties, the win
    rate of A with its 95 % interval, and which one is preferred."""
    if not comparisons:
        return "<h2>Interleaved comparisons</h2><p>No interleaved search in this log.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("A vs B", "interleaved", "judged", "wins A", "wins B", "ties",
                                               "win rate of A", "preferred"))  # fmt: skip
    rows = []
    for c in comparisons:
        a, b = c["versions"]["A"], c["versions"]["B"]
        ci = c["win_rate_ci95"]
        rate = (
            "–"
            if c["win_rate"] is None
            else f"{c['win_rate']:.3f}" + (f" <small>({ci[0]:.3f}–{ci[1]:.3f})</small>" if ci else "")
        )
        cells = [html.escape(f"{a} vs {b}"), c["interleaved_queries"], c["queries"], c["wins"][a], c["wins"][b],
                 c["ties"], rate, html.escape(c["preferred"] or "not yet")]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return (
        f"<h2>Interleaved comparisons</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def build_report(queries: Iterable[dict[str, Any]], title: str = "isacir pilot report") -> tuple[str, dict[str, str]]:
    """(HTML, {grouping: CSV}) for ``queries``."""
    log = list(queries)
    summaries = {g: pilot_summary(log, g) for g in GROUPINGS}
    overall = summaries["overall"]["overall"]
    span = ""
    if log:
        first = dt.datetime.fromtimestamp(min(q["created"] for q in log), dt.timezone.utc)
        last = dt.datetime.fromtimestamp(max(q["created"] for q in log), dt.timezone.utc)
        span = f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC"
    svgs = [
        charts.by_version(log),
        charts.over_time(log, "false_hit_rate", "day"),
        charts.over_time(log, "precision_at_1", "day"),
        charts.hit_at_k(log),
        charts.by_category(log),
    ]
    # an inline SVG's XML prolog is not valid inside HTML; keep the <svg> element only
    figures = "".join(f"<figure>{s[s.index('<svg') :]}</figure>" for s in svgs)
    definitions = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS.items())
    tables = _html_table("By version", summaries["version"]["groups"])
    tables += _interleaving_table(interleaving_report(log)["comparisons"])
    tables += "".join(_html_table(f"By {g}", summaries[g]["groups"]) for g in ("week", "day", "mode", "category"))
    now = dt.datetime.now(dt.timezone.utc)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; color: #1d2330; max-width: 1100px; margin: 0 auto; padding: 1rem; }}
.stats {{ display: flex; gap: 1rem; flex-wrap: wrap; }} .stats div {{ border: 1px solid #d0d5dd; border-radius: .6rem;
padding: .5rem .8rem; }} .stats b {{ display: block; font-size: 1.5rem; }}
figure {{ display: inline-block; width: 48%; min-width: 300px; margin: .5rem 0; }}
figure svg {{ width: 100%; height: auto; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 1rem; }} th, td {{ padding: .3rem .5rem;
border-bottom: 1px solid #d0d5dd; text-align: right; }} td:first-child, th:first-child {{ text-align: left; }}
dt {{ font-weight: 600; }} dd {{ margin: 0 0 .4rem 1rem; color: #667085; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(log)} answered searches{", " + span if span else ""}; generated {now:%Y-%m-%d %H:%M} UTC.</p>
<div class="stats">
<div>false-hit rate<b>{_pct(overall["false_hit_rate"])}</b></div>
<div>precision@1<b>{_pct(overall["precision_at_1"])}</b></div>
<div>hit@K<b>{_pct(overall["hit_at_k"])}</b></div>
<div>judged<b>{overall["judged"]} / {overall["queries"]}</b></div>
<div>operator time per judged query<b>{_seconds(overall["operator_s_median"])}</b></div>
</div>
{figures}
{tables}
<h2>Definitions</h2><dl>{definitions}</dl>
</body></html>
"""
    csvs = {g: table_csv(summaries[g]["groups"]) for g in GROUPINGS}
    return page, csvs


def write_report(queries: Iterable[dict[str, Any]], out: str | Path, csv_dir: str | Path | None = None) -> dict:
    page, csvs = build_report(queries)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    written = [str(out)]
    if csv_dir is not None:
        folder = Path(csv_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in csvs.items():
            atomic_write_text(folder / f"pilot-by-{name}.csv", text)
            written.append(str(folder / f"pilot-by-{name}.csv"))
    return {"written": written, "bytes": len(page.encode())}
