"""The tables of the served adapter: ``bench feedback`` runs with realistic operators, on the
evaluation stream (``docs/results/served/feedback-{operators}-seed{S}.json``; runs whose operators
write Japanese in ``docs/results/japanese/``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import RecordError


@dataclass(frozen=True)
class Change:
    """A hit rate before and after, in percent, with the paired change's 95 % interval."""

    before: float
    after: float
    ci: tuple[float, float] | None = None
    n: int | None = None

    @classmethod
    def of(cls, part: dict[str, Any], metric: str = "R@1") -> Change:
        change = part.get(f"{metric}_change")
        return cls(
            float(part["before"][metric]),
            float(part["after"][metric]),
            tuple(change["ci"]) if change else None,  # type: ignore[arg-type]
            part.get("n"),
        )

    def cell(self) -> str:
        span = f" [{self.ci[0]:+.1f}, {self.ci[1]:+.1f}]" if self.ci else ""
        return f"{self.before:.1f} → {self.after:.1f} ({self.after - self.before:+.1f}{span})"


@dataclass(frozen=True)
class ServedRun:
    """One ``bench feedback`` run: the served adapter on the evaluation stream."""

    seed: int
    operators: str
    verdicts: int
    queries: int
    novel_objects: bool
    recipe: str
    pair: tuple[float, float]
    promotable: bool
    r1: Change
    r10: Change
    flips: int
    right_before: int
    flip_ci: tuple[float, float] | None
    used: Change
    unseen: Change
    per_edit: dict[str, Change]
    known_r10: Change
    oracle_r1: float | None
    goals: dict[str, bool]
    adapt_s: float
    total_s: float
    cpu: str
    #: how much of the stream the pilot showed (``overlap``) and what its operators did (``pilot``)
    overlap: dict[str, float]
    pilot: dict[str, int]
    #: what the operators wrote, and the share of the foundation's captions in Japanese
    language: str = "en"
    japanese_fraction: float = 0.0

    @classmethod
    def load(cls, path: Path) -> ServedRun:
        try:
            raw = json.loads(path.read_text())
            s = raw["served"]
            recipe = raw["recipe"]["chosen"] if raw.get("recipe") else raw["settings"]["recipe"]
            return cls(
                seed=int(raw["seed"]),
                operators=str(raw["operators"]),
                verdicts=int(raw["verdicts"]),
                queries=int(s["queries"]),
                novel_objects=bool(raw["evaluation"]["novel_objects"]),
                recipe=str(recipe),
                pair=(float(raw["served_pair"]["interpolation"]), float(raw["served_pair"]["guard_margin"])),
                promotable=bool(raw["adapter"]["promotable"]),
                r1=Change.of(s),
                r10=Change.of(s, "R@10"),
                flips=int(s["flips"]),
                right_before=int(s["right_before"]),
                flip_ci=tuple(s["flip_ci"]) if s["flip_ci"] else None,
                used=Change.of(s["phrasings"]["used"]),
                unseen=Change.of(s["phrasings"]["unseen"]),
                per_edit={k: Change.of(v) for k, v in s["per_edit"].items()},
                known_r10=Change.of(s["known_phrasings"], "R@10"),
                oracle_r1=float(s["oracle"]["R@1"]) if "oracle" in s else None,
                goals={str(k): bool(v) for k, v in raw["goals"].items()},
                adapt_s=float(raw["timings"]["adapt_s"]),
                total_s=float(raw["timings"]["total_s"]),
                cpu=str(raw["cpu"]["model"]),
                overlap={k: float(v) for k, v in raw["overlap"].items()},
                pilot={
                    k: int(raw["pilot"][k])
                    for k in ("judged", "confirmed", "corrected", "rejected_only", "wrong_confirmed")
                },
                language=str(raw.get("language", "en")),
                japanese_fraction=float(raw.get("japanese_fraction", 0.0)),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise RecordError(f"{path}: not a bench feedback record of the served adapter ({exc!r})") from None


def load_served_runs(results: Path, folder: str = "served") -> list[ServedRun]:
    """The records in ``results/folder`` (``japanese``: operators who write Japanese)."""
    return sorted(
        (ServedRun.load(p) for p in (results / folder).glob("feedback-*-seed*.json")),
        key=lambda r: (r.operators, r.seed),
    )


def _flips(run: ServedRun) -> str:
    rate = 100 * run.flips / run.right_before if run.right_before else 0.0
    span = f" [{run.flip_ci[0]:.1f}, {run.flip_ci[1]:.1f}]" if run.flip_ci else ""
    return f"{run.flips} of {run.right_before}: {rate:.1f} %{span}"


def served_table(runs: list[ServedRun]) -> str:
    """One row per run: the served adapter's gains, flips and phrasing split, with 95 % intervals."""
    if not runs:
        return "No `bench feedback` run of the served adapter is recorded yet.\n"
    head = (
        "| seed | operators | verdicts | recipe, pair | R@1 | R@10 | flips | phrasings the operators used: R@1 "
        "| never used: R@1 | known-phrasings R@10 | adapt |\n"
        "|---:|---|---:|---|---|---|---|---|---|---|---:|\n"
    )
    rows = [
        f"| {r.seed} | {r.operators} | {r.verdicts} | {r.recipe}, {r.pair[0]:g} / {r.pair[1]:g} | {r.r1.cell()} "
        f"| {r.r10.cell()} | {_flips(r)} | {r.used.cell()} ({r.used.n}) | {r.unseen.cell()} ({r.unseen.n}) "
        f"| {r.known_r10.before:.1f} → {r.known_r10.after:.1f} | {r.adapt_s / 60:.1f} min |"
        for r in runs
    ]
    return head + "\n".join(rows) + "\n"


def served_goals_table(runs: list[ServedRun]) -> str:
    """Each goal by run: met or missed, on the evaluation stream."""
    if not runs:
        return "No `bench feedback` run of the served adapter is recorded yet.\n"
    goals = list(dict.fromkeys(g for r in runs for g in r.goals))
    head = "| goal | " + " | ".join(f"seed {r.seed} ({r.operators})" for r in runs) + " |\n"
    head += "|---|" + "---|" * len(runs) + "\n"
    rows = []
    for g in goals:
        cells = ["met" if r.goals.get(g) else ("**missed**" if g in r.goals else "–") for r in runs]
        rows.append(f"| {g} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def served_edit_table(runs: list[ServedRun]) -> str:
    """R@1 per edit type, before and after, by run."""
    if not runs:
        return "No `bench feedback` run of the served adapter is recorded yet.\n"
    kinds = sorted({k for r in runs for k in r.per_edit})
    head = "| seed | " + " | ".join(kinds) + " |\n|---:|" + "---|" * len(kinds) + "\n"
    rows = [
        f"| {r.seed} | " + " | ".join(r.per_edit[k].cell() if k in r.per_edit else "–" for k in kinds) + " |"
        for r in runs
    ]
    return head + "\n".join(rows) + "\n"


def served_context_table(runs: list[ServedRun]) -> str:
    """Per run: how much of the evaluation stream the pilot showed, and the moonshot's yardstick."""
    if not runs:
        return "No `bench feedback` run of the served adapter is recorded yet.\n"
    head = (
        "| seed | targets whose object set the pilot showed | modifiers typed word for word in the pilot "
        "| pilot: judged, confirmed, corrected, only rejected, wrong confirmations | oracle R@1 (moonshot) |\n"
        "|---:|---:|---:|---|---:|\n"
    )
    rows = []
    for r in runs:
        o, p = r.overlap, r.pilot
        oracle = f"{r.oracle_r1:.1f}" if r.oracle_r1 is not None else "–"
        rows.append(
            f"| {r.seed} | {o['target_object_sets_in_pilot']:.1f} % | {o['modifiers_typed_in_pilot']:.1f} % "
            f"| {p['judged']}, {p['confirmed']}, {p['corrected']}, {p['rejected_only']}, {p['wrong_confirmed']} "
            f"| {oracle} |"
        )
    return head + "\n".join(rows) + "\n"


@dataclass(frozen=True)
class PhrasingIdeasRun:
    """One ``isacir-lab bench phrasings`` run: ``docs/results/served/phrasings-seed{S}.json``."""

    seed: int
    queries: int
    groups: int
    before: float
    #: idea -> (hit@1, gain, gain interval)
    ideas: dict[str, tuple[float, float, tuple[float, float]]]
    took_s: float

    @classmethod
    def load(cls, path: Path) -> PhrasingIdeasRun:
        try:
            raw = json.loads(path.read_text())
            summary = raw["summary"]
            return cls(
                seed=int(raw["seed"]),
                queries=int(summary["queries"]),
                groups=len(raw["groups"]),
                before=float(summary["before_hit@1"]),
                ideas={
                    name: (float(v["hit@1"]), float(v["gain"]), (float(v["gain_ci"][0]), float(v["gain_ci"][1])))
                    for name, v in summary.items()
                    if isinstance(v, dict)
                },
                took_s=float(raw["took_s"]),
            )
        except (KeyError, TypeError, ValueError, IndexError, json.JSONDecodeError) as exc:
            raise RecordError(f"{path}: not a bench phrasings record ({exc!r})") from None


def load_phrasing_runs(results: Path) -> list[PhrasingIdeasRun]:
    return sorted(
        (PhrasingIdeasRun.load(p) for p in (results / "served").glob("phrasings-seed*.json")), key=lambda r: r.seed
    )


def phrasing_ideas_table(runs: list[PhrasingIdeasRun]) -> str:
    """Per run and idea: held-out-phrasing hit@1 on the pilot's feedback, and its gain over zero-shot."""
    if not runs:
        return "No `bench phrasings` run is recorded yet.\n"
    head = "| seed | idea | hit@1 on held-out phrasings | gain over zero-shot [95 %] |\n|---:|---|---:|---|\n"
    rows = []
    for r in runs:
        rows.append(f"| {r.seed} | zero-shot ({r.queries} judged queries, {r.groups} phrasings) | {r.before:.1f} | |")
        for name, (hit, gain, (lo, hi)) in r.ideas.items():
            rows.append(f"| {r.seed} | {name} | {hit:.1f} | {gain:+.1f} [{lo:+.1f}, {hi:+.1f}] |")
    return head + "\n".join(rows) + "\n"
