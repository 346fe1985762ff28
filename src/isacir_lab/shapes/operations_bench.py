"""``isacir-lab bench operations``: weeks of a simulated pilot with the learning loop running itself.

A pilot split of its own (:mod:`.pilot`) is served by a real service over a model registry, with
the ISA encoder active. Each simulated day, the realistic operators (:mod:`.operators`) send that
day's queries through the device path and judge what they are shown, taking time as people do;
after each day the learning cycle (:class:`isacir.cycle.LearningCycle`) takes its next steps by
its policy: train on the new verdicts, gate, canary interleaved with the active version, promote
or roll back. Once, a deliberately bad adapter (trained on the same verdicts with their positives
shuffled) is offered as a candidate; the loop must keep it from ever becoming active and let it
answer at most its share of the traffic.

Reported per week: the version active at its end, the false-hit rate with its 95 % interval, the
operator seconds per judged query and the queries; every decision of the loop; what became of the
bad version; and the 5xx answers during every transition (there must be none). Days are
compressed (a day's queries run in a minute or so), so the policy counts comparisons, not days.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from isacir._fs import atomic_write_text
from isacir.adapt import AdaptSettings
from isacir.bench.machine import cpu_info
from isacir.errors import ConfigError, IsacirError

from .bench import ShapesBenchConfig
from .feedback_bench import gallery_ids, prepare_pilot
from .operators import OperatorConfig
from .pilot import PilotConfig, ServiceClient, simulate_pilot


@dataclass(frozen=True)
class OperationsConfig:
    """The simulated pilot and the policy its loop runs by. Each field is an option of
    ``isacir-lab bench operations`` of the same name."""

    weeks: int = 4
    days_per_week: int = 5
    queries_per_day: int = 100
    #: the week (from 1) on whose first day the bad adapter is offered (0: never); it waits for a
    #: cycle under way to end
    bad_week: int = 2
    #: the policy: judged searches since the active version before a cycle starts, the share of
    #: searches interleaved with the candidate, judged comparisons before a decision
    min_new_verdicts: int = 300
    canary_share: float = 0.3
    min_comparisons: int = 60

    def check(self) -> None:
        if min(self.weeks, self.days_per_week, self.queries_per_day) < 1:
            raise ConfigError("--weeks, --days-per-week and --queries-per-day must be at least 1")
        if not 0 <= self.bad_week <= self.weeks:
            raise ConfigError(f"--bad-week must be within 0..{self.weeks}, got {self.bad_week}")
        self.policy()

    @property
    def days(self) -> int:
        return self.weeks * self.days_per_week

    def policy(self, adapt: dict[str, Any] | None = None):
        from isacir.cycle import CyclePolicy

        # days are compressed to minutes: the policy decides on comparisons, never on elapsed days
        return CyclePolicy(
            min_new_verdicts=self.min_new_verdicts,
            canary_share=self.canary_share,
            compare="interleave",
            min_comparisons=self.min_comparisons,
            max_days=3650.0,
            adapt=adapt or {},
        )


class _CountingClient(ServiceClient):
    """The operators' client, counting answers with a 5xx status (each is re-raised: a pilot that
    meets one stops, and the bench reports it)."""

    errors_5xx = 0

    def post(self, path: str, body: dict) -> dict:
        try:
            return super().post(path, body)
        except IsacirError as exc:
            if ": HTTP 5" in str(exc):
                self.errors_5xx += 1
            raise


def _shuffled_log(src: Path, dest: Path, gallery_ids_: list[int], seed: int) -> None:
    """A copy of the feedback log whose every positive names a random gallery item instead."""
    with sqlite3.connect(src) as a, sqlite3.connect(dest) as b:
        a.backup(b)
    rng = random.Random(f"bad-adapter-{seed}")
    with sqlite3.connect(dest) as db:
        rows = db.execute("SELECT feedback_id FROM feedback WHERE verdict IN ('confirmed', 'corrected')").fetchall()
        for (fid,) in rows:
            db.execute(
                "UPDATE feedback SET verdict = 'corrected', candidate_id = ?, in_results = 0 WHERE feedback_id = ?",
                (rng.choice(gallery_ids_), fid),
            )


def run_operations_bench(
    out: str | Path,
    seed: int = 0,
    ops: OperationsConfig | None = None,
    settings: AdaptSettings | None = None,
    operators: OperatorConfig | None = None,
    config: ShapesBenchConfig | None = None,
    k: int = 10,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """The weeks of the pilot; writes ``operations-seed{S}.json`` into ``out`` and returns its summary
    (the last JSON line of ``bench operations``)."""
    from isacir.audit import AuditLog
    from isacir.cycle import CycleStore, LearningCycle
    from isacir.edge.runner import EdgeEncoder
    from isacir.feedback import FeedbackStore
    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.pilot.metrics import summarize
    from isacir.registry import Registry
    from isacir.serve import ServeSettings, ServiceState, create_app
    from isacir.serve.local import LocalServer

    out = Path(out)
    ops = ops or OperationsConfig()
    ops.check()
    config = config or ShapesBenchConfig(seed=seed)
    settings = settings or AdaptSettings.auto(seed=seed)
    operators = operators or OperatorConfig(seed=seed)
    operators.check()
    t_start = time.perf_counter()
    pilot = PilotConfig(queries=ops.days * ops.queries_per_day)
    paths = prepare_pilot(out, seed, pilot, config, log, progress)
    run = out / "operations" / f"seed{seed}-{pilot.key(config.world)}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    fnd = create_foundation(paths["foundation"])
    registry = Registry(run / "models")
    registry.add("isa", paths["query_encoder"], edge=paths["edge"], actor="bench", reason="the pilot's first version")
    registry.set_state("isa", "active", actor="bench", force=True, reason="the pilot starts on the ISA encoder")
    key = secrets.token_hex(16)
    gallery = Gallery.open(paths["gallery"])
    serve_settings = ServeSettings(
        api_keys=(key,), feedback_db=run / "feedback.sqlite", upload_dir=run / "up", audit_log=run / "audit.jsonl",
        registry_poll_s=0.0,
    )  # fmt: skip
    state = ServiceState(gallery, fnd, None, serve_settings, registry=registry)
    store = FeedbackStore(run / "feedback.sqlite")
    adapt_fields = {k_: v for k_, v in asdict(settings).items() if k_ != "recipe"}
    cycle = LearningCycle(
        paths["gallery"], ops.policy({"recipe": settings.recipe, **adapt_fields}), store, registry, actor="bench",
        foundation=lambda: fnd, progress=progress, audit=AuditLog(run / "audit.jsonl"),
    )  # fmt: skip
    ids = gallery_ids(paths["gallery"], paths["pilot"])
    edge = EdgeEncoder(paths["edge"])
    days: list[dict[str, Any]] = []
    bad: dict[str, Any] = {"offered_on_day": None, "version": None}
    with LocalServer(create_app(state)) as server:
        client = _CountingClient(server.url, key)
        for day in range(ops.days):
            t0 = time.time()
            active = next(v["version"] for v in registry.versions() if v["state"] == "active")
            stats = simulate_pilot(
                paths["pilot"], client, edge, ids, k=k, start=day * ops.queries_per_day, limit=ops.queries_per_day,
                progress=False, log=lambda *_: None, operators=operators,
            )  # fmt: skip
            kept = {x: stats[x] for x in ("queries", "judged", "hit@1_rate", "operator_s_per_judged")}
            days.append({"day": day + 1, "start": t0, "end": time.time(), "active": active, **kept})
            if ops.bad_week and bad["version"] is None and day >= (ops.bad_week - 1) * ops.days_per_week:
                if CycleStore(registry.folder).open_cycle() is None:
                    bad |= _offer_bad_adapter(cycle, registry, store, gallery, fnd, run, settings, seed, day + 1, log)
            result = cycle.tick()
            if result["action"] != "none" or bad.get("offered_on_day") == day + 1:
                state.reload(force=True)
            c = result.get("cycle") or {}
            log(f"day {day + 1}: {stats['queries']} queries, {stats['judged']} judged on {active}; loop: "
                f"{result['action']} {c.get('candidate', '')} {c.get('state', '')}")  # fmt: skip
        errors_5xx = client.errors_5xx
    gallery.close()  # the service closed its state when its server stopped

    weeks = []
    for w in range(ops.weeks):
        span = days[w * ops.days_per_week : (w + 1) * ops.days_per_week]
        s = summarize(store.queries(since=span[0]["start"], until=span[-1]["end"]))
        weeks.append({
            "week": w + 1,
            "version": next(v["version"] for v in _versions_at(registry, span[-1]["end"]) if v["state"] == "active"),
            "false_hit_rate": _pct(s["false_hit_rate"]),
            "ci": [_pct(x) for x in s["false_hit_rate_ci"]] if s["false_hit_rate_ci"] else None,
            "operator_s_per_query": None if s["operator_s_mean"] is None else round(s["operator_s_mean"], 2),
            "queries": s["queries"],
            "judged": s["judged"],
        })  # fmt: skip
    cycles = CycleStore(registry.folder).all()
    decisions = [_decision(c) for c in cycles]
    bad_version = _bad_report(bad, registry, store, cycles)
    summary = {
        "seed": seed,
        "weeks": weeks,
        "decisions": decisions,
        "bad_version": bad_version,
        "errors_5xx": errors_5xx,
        "goals": _goals(weeks, bad_version, errors_5xx, ops),
        "took_s": round(time.perf_counter() - t_start, 1),
    }
    detail = {
        **summary,
        "days": days,
        "operations": asdict(ops),
        "settings": asdict(settings),
        "operators_config": asdict(operators),
        "cycles": cycles,
        "cpu": cpu_info(),
    }
    atomic_write_text(out / f"operations-seed{seed}.json", json.dumps(detail, indent=2))
    return summary


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def _versions_at(registry, when: float) -> list[dict[str, Any]]:
    """Every version with the state it had at ``when`` (from the registry's history)."""
    states: dict[str, str] = {}
    for h in registry.history():
        if h.get("version") and h["time"] <= when:
            states[h["version"]] = h["to"]
    return [{"version": v, "state": s} for v, s in states.items()]


def _offer_bad_adapter(cycle, registry, store, gallery, fnd, run: Path, settings, seed: int, day: int, log) -> dict:
    """Train an adapter on the verdicts so far with shuffled positives, and offer it to the loop."""
    from isacir.adapt import adapt
    from isacir.feedback import FeedbackStore
    from isacir.query import QueryEncoder

    active = next(v for v in registry.versions() if v["state"] == "active")
    _shuffled_log(run / "feedback.sqlite", run / "shuffled.sqlite", [int(i["id"]) for i in gallery.items()], seed)
    qe = QueryEncoder.from_pretrained(registry.path_of(active["version"]), foundation=fnd)
    t0 = time.perf_counter()
    adapt(gallery, fnd, qe, FeedbackStore(run / "shuffled.sqlite"), run / "bad-adapter", settings, progress=False)
    result = cycle.offer(run / "bad-adapter", "the bench's deliberately bad adapter (shuffled positives)")
    c = result["cycle"]
    log(f"day {day}: offered the bad adapter as {c['candidate']}: {c['state']}")
    return {"offered_on_day": day, "version": c["candidate"], "train_s": round(time.perf_counter() - t0, 1)}


def _decision(c: dict[str, Any]) -> dict[str, Any]:
    steps = {s["step"]: s for s in c["steps"]}
    canary = steps.get("canary", {}).get("time")
    trained = steps.get("trained", {}).get("took_s")
    return {
        "cycle": c["id"],
        "version": c["candidate"],
        "offered": "offered" in steps,
        "state": c["state"],
        "outcome": c.get("outcome"),
        "new_verdicts": c.get("new_verdicts"),
        "train_s": trained,
        # a cycle's own time to its canary: training and the gate (the 15 minutes)
        "to_canary_s": round(canary - c["started"], 1) if canary else None,
        "evidence": (c.get("evidence") or {}).get("interleaving"),
    }


def _bad_report(bad: dict[str, Any], registry, store, cycles: list[dict[str, Any]]) -> dict[str, Any]:
    name = bad.get("version")
    if name is None:
        return {"offered": False}
    history = registry.history(name)
    cyc = next(c for c in cycles if c["candidate"] == name)
    canary_at = next((s["time"] for s in cyc["steps"] if s["step"] == "canary"), None)
    ended = cyc.get("ended") or time.time()
    during = list(store.queries(since=canary_at, until=ended)) if canary_at else []
    touched = [q for q in during if q.get("model_version") == name or name in (q.get("interleave") or {}).values()]
    return {
        "offered": True,
        "version": name,
        "offered_on_day": bad["offered_on_day"],
        "state": cyc["state"],
        "outcome": cyc.get("outcome"),
        "reached_active": any(h.get("to") == "active" for h in history),
        "canary_queries": len(touched),
        "share_of_all_queries": round(len(touched) / len(during), 4) if during else 0.0,
    }


def _goals(weeks: list[dict], bad: dict[str, Any], errors_5xx: int, ops: OperationsConfig) -> dict[str, bool]:
    first, last = weeks[0], weeks[-1]
    goals = {
        "last week's false-hit rate >= 5 points below the first's": (
            first["false_hit_rate"] is not None
            and last["false_hit_rate"] is not None
            and last["false_hit_rate"] <= first["false_hit_rate"] - 5
        ),
        "their 95 % intervals do not overlap": bool(first["ci"] and last["ci"] and last["ci"][1] < first["ci"][0]),
        "no 5xx answer": errors_5xx == 0,
    }
    if ops.bad_week:
        # a cycle under way from the bad week to the end keeps it from being offered: a run that
        # never tested the loop against a bad adapter has not met its goals
        goals["the bad adapter was offered"] = bool(bad.get("offered"))
    if bad.get("offered"):
        goals["the bad adapter never became active"] = not bad["reached_active"]
        goals[f"the bad adapter answered at most {ops.canary_share:.0%} of the queries of its canary days"] = (
            bad["share_of_all_queries"] <= ops.canary_share
        )
    return goals
