"""One learning cycle, step by step: train on new verdicts, gate, canary, compare, promote or roll back.

:meth:`LearningCycle.tick` does whatever the registry's open cycle needs next, or starts one when
the policy's trigger holds, and returns what it did. It is what ``isacir cycle run`` calls once
and what the service's background job calls every few minutes. A cycle moves through

``training`` (``isacir adapt``'s default recipe on the whole feedback log, from the active
version's adapter) -> ``trained`` -> the registry's quality gate -> ``canary`` (registered with the
active version's query encoder and edge package, so no device updates; the registry's rollout
sends it the policy's share, interleaved with the active version or not) -> ``promoted`` or
``rolled_back`` on the evidence of live traffic (:mod:`.evidence`). A gate refusal ends it as
``refused``, an error (say, too little feedback) as ``failed``.

Every step is recorded in the cycle's record before the next begins, and each is safe to run
again: a cycle killed halfway resumes at the step it was in, and finds the registry as that step
left it (a version added once, never twice). Each step also writes the gallery's audit log with
its evidence, and each decision is POSTed to the policy's webhook when there is one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audit import AuditLog
from ..errors import IsacirError
from ..registry import GateError, Registry
from .evidence import judge
from .policy import CyclePolicy
from .record import OPEN, CycleStore, step

if TYPE_CHECKING:
    from ..adapter import QueryAdapter
    from ..feedback import FeedbackStore
    from ..foundation import Foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder

log = logging.getLogger("isacir.cycle")


class LearningCycle:
    """The learning loop of one gallery's registry under ``policy``.

    ``feedback`` is the query log the service writes (a :class:`~isacir.feedback.FeedbackStore`);
    ``foundation`` loads the gallery's foundation when a cycle trains (default: by the id the
    gallery records). ``clock`` is the time in seconds (tests move it).
    """

    def __init__(
        self,
        gallery: str | Path,
        policy: CyclePolicy,
        feedback: FeedbackStore,
        registry: Registry | None = None,
        actor: str = "cycle",
        foundation: Callable[[], Foundation] | None = None,
        progress: bool = False,
        clock: Callable[[], float] = time.time,
        audit: AuditLog | None = None,
    ):
        self.gallery_dir = Path(gallery)
        self.policy, self.feedback, self.actor = policy, feedback, actor
        self.registry = registry or Registry.of_gallery(gallery)
        self.cycles = CycleStore(self.registry.folder)
        self.audit = audit or AuditLog.of_gallery(self.gallery_dir)
        self._foundation = foundation
        self.progress, self.clock = progress, clock

    # ----- what is there --------------------------------------------------------------------------
    def _foundation_fingerprint(self) -> str:
        from ..gallery import Gallery

        if self._foundation is not None:  # the service's own: no need to open the gallery every step
            return self._foundation().fingerprint
        g = Gallery.open(self.gallery_dir)
        try:
            return str(g.info["foundation_fingerprint"])
        finally:
            g.close()

    def _active(self) -> dict[str, Any]:
        active = self.registry.active(self._foundation_fingerprint())
        if active is None:
            raise IsacirError(
                f"the registry {self.registry.folder} has no active version for the gallery's foundation: a cycle "
                "learns for the active version (isacir models promote NAME --to active)"
            )
        return active

    def new_verdicts(self, active: dict[str, Any]) -> int:
        """Judged searches logged since ``active`` became active."""
        since = self.registry.activated(active["version"]) or 0.0
        return sum(1 for q in self.feedback.queries(since=since) if q["verdicts"])

    def status(self) -> dict[str, Any]:
        """The open cycle (or the last one), and whether a new one would start now."""
        cycles = self.cycles.all()
        last = cycles[-1] if cycles else None
        out: dict[str, Any] = {"policy": self.policy.to_dict(), "cycles": len(cycles), "last": last}
        try:
            active = self._active()
            out["active"] = active["version"]
            out["new_verdicts"] = n = self.new_verdicts(active)
            if last is not None and last["state"] in OPEN:
                out["trigger"] = f"cycle {last['id']} is under way"
            else:
                out["trigger"] = self._trigger(active, cycles, n)
        except IsacirError as exc:
            out["active"], out["trigger"] = None, str(exc)
        return out

    def _trigger(self, active: dict[str, Any], cycles: list[dict[str, Any]], n: int) -> str | None:
        """Why a cycle may not start now (None: it may), with ``n`` judged searches since ``active``."""
        p, now = self.policy, self.clock()
        if n < p.min_new_verdicts:
            since = f"{n} judged searches since {active['version']} became active"
            return f"{since}; the policy waits for {p.min_new_verdicts}"
        if cycles and now - cycles[-1]["started"] < p.min_hours_between * 3600:
            return f"the last cycle started less than {p.min_hours_between:g} hours ago"
        local = time.localtime(now)
        if not p.in_window(local.tm_hour * 60 + local.tm_min):
            return f"outside the policy's window {p.to_dict()['window']}"
        return None

    # ----- the loop -------------------------------------------------------------------------------
    def tick(self, start: bool = False, reason: str = "") -> dict[str, Any]:
        """Do what the open cycle needs next (all the steps that can run now), or start one when the
        trigger holds (``start``: at once, whatever the trigger says, with ``reason``). Returns
        ``{"action", "cycle", ...}``; raises :class:`~.record.CycleBusy` when another process holds
        the cycle lock."""
        with self.cycles.exclusive():
            cycle = self.cycles.open_cycle()
            if cycle is None:
                active = self._active()
                n = self.new_verdicts(active)  # reads the log: once per step
                why = None if start else self._trigger(active, self.cycles.all(), n)
                if why is not None:
                    return {"action": "none", "reason": why, "cycle": None}
                why = reason or ("started by hand" if start else "the policy's trigger held")
                cycle = self._begin(active, why, n)
            return self._advance(cycle)

    def offer(self, adapter: str | Path, reason: str) -> dict[str, Any]:
        """Begin a cycle with an adapter trained elsewhere (``isacir adapt`` by hand, another
        recipe): it skips training and goes through the same gate, canary and comparison. Refused
        while a cycle is under way."""
        import shutil

        from ..adapter import QueryAdapter

        if not reason.strip():
            raise IsacirError("offering an adapter needs a reason, for the audit log")
        qa = QueryAdapter.from_pretrained(adapter)  # a folder that is no adapter fails here, not in the registry
        with self.cycles.exclusive():
            cycle = self.cycles.open_cycle()
            if cycle is not None:
                raise IsacirError(
                    f"cycle {cycle['id']} is under way ({cycle['state']}); offer the adapter after it ends"
                )
            active = self._active()
            qa.check(active["fingerprint"], active["foundation_fingerprint"])
            cycle = self._begin(active, reason, self.new_verdicts(active))
            dest = self.cycles.workdir(cycle["id"]) / "adapter"
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(adapter, dest, dirs_exist_ok=True)
                # the gate judges it on this log, not on the report it came with
                gate_report = self._judge_offered(dest, active)
            except Exception as exc:  # an offer that fails must not leave a cycle that trains its own
                self._end(cycle, "failed", f"offering {adapter} failed: {exc}")
                self.cycles.save(cycle)
                raise
            cycle["state"], cycle["gate_report"] = "trained", str(gate_report)
            step(cycle, "offered", adapter=qa.fingerprint, source=str(adapter), reason=reason)
            self.audit.record(self.actor, "cycle.offered", cycle=cycle["id"], adapter=qa.fingerprint, reason=reason)
            self.cycles.save(cycle)
            return self._advance(cycle)

    def _judge_offered(self, adapter_dir: Path, active: dict[str, Any]) -> Path:
        """The offered adapter against the active version on every learnable query of the log,
        written beside it as the report its gate reads."""
        from .._fs import atomic_write_text
        from ..adapt.report import judge_on_log
        from ..adapter import QueryAdapter

        with self._served(active["version"]) as (g, fnd, qe, previous):
            report = judge_on_log(g, fnd, qe, self.feedback, QueryAdapter.from_pretrained(adapter_dir), previous)
        path = adapter_dir.parent / "gate-report.json"
        atomic_write_text(path, json.dumps(report, indent=2))
        return path

    def _advance(self, cycle: dict[str, Any]) -> dict[str, Any]:
        """Every step of ``cycle`` that can run now (the caller holds the cycle lock)."""
        done = []
        while cycle["state"] in OPEN:
            state = cycle["state"]
            if state == "training":
                self._train(cycle)
            elif state == "trained":
                self._gate_and_canary(cycle)
            elif not self._compare(cycle):
                break
            self.cycles.save(cycle)
            done.append(cycle["state"])
        return {"action": "advanced" if done else "waiting", "states": done, "cycle": cycle}

    def _begin(self, active: dict[str, Any], reason: str, new_verdicts: int) -> dict[str, Any]:
        now = self.clock()
        cycle_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        existing = {c["id"] for c in self.cycles.all()}
        n = 1
        while cycle_id in existing:
            n += 1
            cycle_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{n}"
        cycle = {
            "id": cycle_id,
            "state": "training",
            "started": now,
            "reason": reason,
            "policy": self.policy.to_dict(),
            "active": {
                "version": active["version"],
                "fingerprint": active["fingerprint"],
                "adapter": (active.get("adapter") or {}).get("fingerprint"),
            },
            "candidate": f"cycle-{cycle_id}",
            "new_verdicts": new_verdicts,
            "steps": [],
        }
        step(cycle, "started", reason=reason, new_verdicts=cycle["new_verdicts"])
        self.cycles.save(cycle)
        self._tell(cycle, "started", reason)
        return cycle

    @contextlib.contextmanager
    def _served(self, version: str) -> Iterator[tuple[Gallery, Foundation, QueryEncoder, QueryAdapter | None]]:
        """The gallery (opened to read), its foundation, and ``version``'s query encoder and adapter."""
        from ..adapter import QueryAdapter
        from ..foundation import create_foundation
        from ..gallery import Gallery
        from ..query import QueryEncoder

        g = Gallery.open(self.gallery_dir)
        try:
            fnd = self._foundation() if self._foundation is not None else create_foundation(g.info["foundation_id"])
            qe = QueryEncoder.from_pretrained(self.registry.path_of(version), foundation=fnd)
            record = self.registry.get(version)
            adapter = (
                QueryAdapter.from_pretrained(self.registry.path_of(version, "adapter"))
                if record.get("adapter")
                else None
            )
            yield g, fnd, qe, adapter
        finally:
            g.close()

    def _train(self, cycle: dict[str, Any]) -> None:
        from ..adapt import adapt

        out = self.cycles.workdir(cycle["id"]) / "adapter"
        try:
            with self._served(cycle["active"]["version"]) as (g, fnd, qe, previous):
                report = adapt(g, fnd, qe, self.feedback, out, self.policy.adapt_settings(), previous, self.progress)
        except IsacirError as exc:
            self._end(cycle, "failed", f"training failed: {exc}")
            return
        cycle["state"] = "trained"
        summary = {
            "adapter": report["fingerprint"],
            "promotable": report["promotable"],
            "reasons": report["reasons"],
            "holdout": report["holdout"],
            "took_s": report.get("took_s"),
        }
        step(cycle, "trained", **summary)
        self.audit.record(self.actor, "cycle.trained", cycle=cycle["id"], **summary)

    def _gate_and_canary(self, cycle: dict[str, Any]) -> None:
        name, active = cycle["candidate"], cycle["active"]["version"]
        versions = {v["version"]: v for v in self.registry.versions()}
        if name not in versions:
            self.registry.add(
                name,
                self.registry.path_of(active),
                edge=self.registry.path_of(active, "edge") if versions[active].get("edge") else None,
                adapter=self.cycles.workdir(cycle["id"]) / "adapter",
                actor=self.actor,
                reason=f"learning cycle {cycle['id']}",
            )
            versions = {v["version"]: v for v in self.registry.versions()}
        record = versions[name]
        if record["state"] == "staged":
            try:
                gate = self.registry.check_gate(record, versions[active], cycle.get("gate_report"))
            except GateError as exc:
                self.registry.set_state(name, "retired", actor=self.actor, reason=f"cycle {cycle['id']}: {exc}")
                self._end(cycle, "refused", str(exc))
                return
            step(cycle, "gate", **gate)
            why = f"cycle {cycle['id']}: passed the gate"
            self.registry.set_state(name, "canary", actor=self.actor, reason=why, gate=gate)
        elif record["state"] == "retired":
            self._end(cycle, "refused", f"{name} was retired before its canary began")
            return
        why = f"cycle {cycle['id']}: canary"
        if self.policy.compare == "interleave":
            # the candidate answers only inside interleaved searches, which are the policy's share
            self.registry.set_rollout(0.0, (name, active), self.actor, why, interleave_share=self.policy.canary_share)
        else:
            self.registry.set_rollout(self.policy.canary_share, None, self.actor, why)
        cycle["state"], cycle["canary_since"] = "canary", self.clock()
        step(cycle, "canary", share=self.policy.canary_share, compare=self.policy.compare)
        self._tell(
            cycle, "canary", f"{name} answers {self.policy.canary_share:.0%} of searches ({self.policy.compare})"
        )

    def _compare(self, cycle: dict[str, Any]) -> bool:
        """Judge the canary; False while the evidence says wait."""
        name, active = cycle["candidate"], cycle["active"]["version"]
        state = self.registry.get(name)["state"]
        if state == "active":  # promoted before a crash, or by hand
            return self._close_rollout(cycle, "promoted", f"{name} is active")
        if state == "retired":
            return self._close_rollout(cycle, "rolled_back", f"{name} was retired")
        since = float(cycle["canary_since"])
        evidence = judge(self.feedback.queries(since=since), name, active, self.policy, since, self.clock())
        cycle["evidence"] = evidence.to_dict()
        if evidence.decision == "wait":
            return False
        if evidence.decision == "promote":
            try:
                why = f"cycle {cycle['id']}: {evidence.reason}"
                self.registry.set_state(name, "active", actor=self.actor, reason=why, report=cycle.get("gate_report"))
            except GateError as exc:
                self.registry.set_state(name, "retired", actor=self.actor, reason=f"cycle {cycle['id']}: {exc}")
                return self._close_rollout(cycle, "rolled_back", f"the gate refused it at promotion: {exc}")
            return self._close_rollout(cycle, "promoted", evidence.reason)
        self.registry.set_state(name, "retired", actor=self.actor, reason=f"cycle {cycle['id']}: {evidence.reason}")
        return self._close_rollout(cycle, "rolled_back", evidence.reason)

    def _close_rollout(self, cycle: dict[str, Any], state: str, reason: str) -> bool:
        self.registry.set_rollout(None, None, self.actor, f"cycle {cycle['id']}: {state}")
        self._end(cycle, state, reason)
        return True

    def _end(self, cycle: dict[str, Any], state: str, reason: str) -> None:
        cycle["state"], cycle["ended"], cycle["outcome"] = state, self.clock(), reason
        step(cycle, state, reason=reason, evidence=cycle.get("evidence"))
        self._tell(cycle, state, reason)

    # ----- telling people -------------------------------------------------------------------------
    def _tell(self, cycle: dict[str, Any], event: str, reason: str) -> None:
        """The audit log, and the webhook where there is one (a webhook that fails is recorded in
        the cycle, never stops it)."""
        body = {
            "cycle": cycle["id"],
            "event": event,
            "version": cycle["candidate"],
            "active": cycle["active"]["version"],
            "reason": reason,
            "evidence": cycle.get("evidence"),
        }
        self.audit.record(self.actor, f"cycle.{event}", **body)
        if self.policy.webhook is None:
            return
        req = urllib.request.Request(
            self.policy.webhook, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("cycle %s: webhook %s failed: %s", cycle["id"], self.policy.webhook, exc)
            cycle.setdefault("webhook_errors", []).append({"time": self.clock(), "event": event, "error": str(exc)})
