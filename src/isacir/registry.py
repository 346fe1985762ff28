"""The model registry: which query-side versions exist, which one is live, and how they got there.

A registry is a folder (by default ``GALLERY/models``)::

    registry.json            every version and the history of its states
    versions/NAME/           a copy of what the version serves and ships:
        query_encoder/       the light query side (safetensors + config)
        edge/                its ONNX package for devices (optional)
        adapter/             a server-side query adapter (optional)
    .lock                    writers take turns on it

Every query-side version trained for one foundation writes tokens for the same frozen text
tower and gallery, so versions are compatible by construction and several can be served at once.
States: ``staged`` -> ``canary`` -> ``active`` -> ``deprecated`` -> ``retired``; there is one
``active`` version per foundation, and promoting another makes it ``deprecated``. A version
becomes ``active`` only through a quality gate (its evaluation against the active version on the
same data), unless forced with a recorded reason. Each change is one atomic rewrite of
``registry.json`` under an OS lock, so concurrent commands cannot corrupt it or lose an entry.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapter.guard import MAX_FLIP_RATE
from .errors import IsacirError
from .ledger import Ledger, check_name, event

REGISTRY_FORMAT = 1
#: the traffic split a registry leaves to the service (see :meth:`Registry.set_rollout`)
DEFAULT_ROLLOUT: dict[str, Any] = {"canary_share": None, "interleave": None, "interleave_share": None}
STATES = ("staged", "canary", "active", "deprecated", "retired")
#: where each state may go (``active`` is left by promoting another version, or by deprecating it)
TRANSITIONS = {
    "staged": {"canary", "active", "retired"},
    "canary": {"active", "deprecated", "retired", "staged"},
    "active": {"deprecated"},
    "deprecated": {"active", "canary", "retired"},
    "retired": set(),
}


class RegistryError(IsacirError):
    pass


class GateError(RegistryError):
    """A version did not pass the quality gate (the message holds the numbers)."""


@dataclass
class Evaluation:
    """What the quality gate reads from an evaluation report.

    ``baseline`` names what ``baseline_score`` was measured with, on the same queries:
    ``{"query_encoder": fingerprint, "adapter": fingerprint or None}``.
    """

    metric: str
    score: float
    baseline_score: float
    baseline: dict
    flip_rate: float
    source: str

    @classmethod
    def from_report(cls, report: dict, source: str, version: dict) -> Evaluation:
        """An ``isacir adapt`` report (held-out feedback: hit@1 before and after, and the flip
        rate against what served before: the query encoder alone, or with the ``previous_adapter``
        the report names), or a benchmark report of the form
        ``{"metric": "R@1", "score": x, "flip_rate": f, "baseline": {"query_encoder": fp,
        "adapter": fp|null, "score": y}}``."""
        try:
            if "holdout" in report:  # isacir adapt
                hold = report["holdout"]
                return cls(
                    metric="hit@1",
                    score=float(hold["after"]["hit@1"]),
                    baseline_score=float(hold["before"]["hit@1"]),
                    baseline={"query_encoder": version["fingerprint"], "adapter": report.get("previous_adapter")},
                    # none held out was right before: none could be lost
                    flip_rate=float(hold["flip_rate"]) if hold["flip_rate"] is not None else 0.0,
                    source=source,
                )
            base = report["baseline"]
            return cls(
                metric=str(report["metric"]),
                score=float(report["score"]),
                baseline_score=float(base["score"]),
                baseline={"query_encoder": base["query_encoder"], "adapter": base.get("adapter")},
                flip_rate=float(report["flip_rate"]),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GateError(
                f"{source} is not an evaluation report the gate can read (missing or bad {exc}); it must be an "
                'isacir adapt report.json or {"metric", "score", "flip_rate", "baseline": {"query_encoder", '
                '"adapter", "score"}}'
            ) from None


class Registry:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @classmethod
    def of_gallery(cls, gallery: str | Path) -> Registry:
        return cls(Path(gallery) / "models")

    # ----- reading --------------------------------------------------------------------------------
    @property
    def ledger(self) -> Ledger:
        """``registry.json`` under ``.lock`` (see :mod:`isacir.ledger`)."""
        return Ledger(
            self.folder / "registry.json",
            self.folder / ".lock",
            missing=lambda: {"format": REGISTRY_FORMAT, "versions": {}, "history": []},
            error=RegistryError,
            check=_check_format,
        )

    def _read(self) -> dict:
        return self.ledger.read()

    def versions(self) -> list[dict]:
        """Every version, oldest first."""
        return _oldest_first(self._read())

    def snapshot(self) -> tuple[list[dict], dict]:
        """``(versions oldest first, rollout)`` from one read of the file (a service builds what it
        serves from both, and a write between two reads could pair them wrongly)."""
        data = self._read()
        return _oldest_first(data), _rollout_of(data)

    def get(self, version: str) -> dict:
        versions = self._read()["versions"]
        if version not in versions:
            known = ", ".join(sorted(versions)) or "none yet"
            raise RegistryError(f"no version {version!r} in {self.folder} (known: {known})")
        return versions[version]

    def history(self, version: str | None = None) -> list[dict]:
        return [h for h in self._read()["history"] if version is None or h.get("version") == version]

    def rollout(self) -> dict:
        """How the served versions share traffic, as set by :meth:`set_rollout`: ``canary_share``
        (None: the service's own setting), ``interleave`` (a pair of version names, or None) and
        ``interleave_share`` (None: every search the pair can merge)."""
        return _rollout_of(self._read())

    def activated(self, version: str) -> float | None:
        """When ``version`` last became active (None: never)."""
        times = [h["time"] for h in self.history(version) if h.get("to") == "active"]
        return max(times) if times else None

    def active(self, foundation_fingerprint: str) -> dict | None:
        for v in self._read()["versions"].values():
            if v["state"] == "active" and v["foundation_fingerprint"] == foundation_fingerprint:
                return v
        return None

    def path_of(self, version: str, part: str = "query_encoder") -> Path:
        return self.folder / "versions" / version / part

    # ----- writing --------------------------------------------------------------------------------
    def _writing(self) -> contextlib.AbstractContextManager[dict]:
        """The registry under its OS lock; what the block leaves in the dict is written atomically."""
        return self.ledger.writing()

    def add(
        self,
        version: str,
        query_encoder: str | Path,
        edge: str | Path | None = None,
        adapter: str | Path | None = None,
        actor: str = "unknown",
        reason: str = "",
    ) -> dict:
        """Copy a query encoder (with its edge package and adapter) in as a ``staged`` version."""
        from .query import QueryEncoder

        check_name(version, "version", RegistryError)
        qe = QueryEncoder.from_pretrained(query_encoder)
        cfg = qe.config
        record: dict[str, Any] = {
            "version": version,
            "kind": "query_encoder+adapter" if adapter else "query_encoder",
            "fingerprint": qe.fingerprint,
            "foundation_id": cfg.foundation_id,
            "foundation_fingerprint": cfg.foundation_fingerprint,
            "parent_fingerprint": cfg.parent_fingerprint,
            "state": "staged",
            "created": time.time(),
            "edge": None,
            "adapter": None,
            "report": None,
        }
        if edge is not None:
            info = _read_json(Path(edge) / "edge.json", "edge package")
            if info.get("query_encoder_fingerprint") != record["fingerprint"]:
                raise RegistryError(
                    f"edge package {edge} was exported from query encoder {info.get('query_encoder_fingerprint')}, "
                    f"not {record['fingerprint']} ({query_encoder})"
                )
            record["edge"] = {"fingerprint": info["query_encoder_fingerprint"], "files": info.get("files", {})}
        if adapter is not None:
            from .adapter import QueryAdapter

            qa = QueryAdapter.from_pretrained(adapter)
            qa.check(record["fingerprint"], record["foundation_fingerprint"])
            record["adapter"] = {"fingerprint": qa.fingerprint}
            report_path = Path(adapter) / "report.json"
            if report_path.is_file():
                _read_json(report_path, "adapter report")  # a damaged report fails the add, not a later promote
                record["report"] = "adapter/report.json"
        with self._writing() as data:
            if version in data["versions"]:
                raise RegistryError(f"version {version!r} already exists in {self.folder}; pick another name")
            for other in data["versions"].values():
                same = (other["fingerprint"], (other.get("adapter") or {}).get("fingerprint"))
                if same == (record["fingerprint"], (record["adapter"] or {}).get("fingerprint")):
                    raise RegistryError(f"{query_encoder} is already registered as version {other['version']!r}")
            record["parent"] = _parent_name(data["versions"], record)
            self._copy_in(version, query_encoder, edge, adapter)
            data["versions"][version] = record
            data["history"].append(_event(version, None, "staged", actor, reason or "added"))
        return record

    def _copy_in(self, version: str, query_encoder, edge, adapter) -> None:
        final = self.folder / "versions" / version
        tmp = self.folder / "versions" / f".{version}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copytree(query_encoder, tmp / "query_encoder")
        if edge is not None:
            shutil.copytree(edge, tmp / "edge")
        if adapter is not None:
            shutil.copytree(adapter, tmp / "adapter")
        shutil.rmtree(final, ignore_errors=True)  # a leftover from an add that crashed before recording
        tmp.rename(final)

    def set_state(
        self,
        version: str,
        state: str,
        actor: str = "unknown",
        reason: str = "",
        report: str | Path | None = None,
        force: bool = False,
        gate: dict | None = None,
    ) -> dict:
        """Move a version to ``state``. To ``active``: through the quality gate (see
        :meth:`check_gate`), or ``force`` with a ``reason``; the active version of its foundation
        becomes ``deprecated``. ``gate``: a gate check already made (a canary's), recorded with
        the move."""
        if state not in STATES:
            raise RegistryError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        if force and not reason.strip():
            raise RegistryError("--force needs --reason: the history records why the gate was overridden")
        with self._writing() as data:
            record = data["versions"].get(version)
            if record is None:
                raise RegistryError(f"no version {version!r} in {self.folder}")
            current = record["state"]
            if state == current:
                raise RegistryError(f"version {version!r} is already {state}")
            if state not in TRANSITIONS[current]:
                hint = " (promote another version to active first)" if current == "active" else ""
                raise RegistryError(f"version {version!r} is {current}; it cannot become {state}{hint}")
            if state == "active":
                old = next(
                    (
                        v
                        for v in data["versions"].values()
                        if v["state"] == "active" and v["foundation_fingerprint"] == record["foundation_fingerprint"]
                    ),
                    None,
                )
                try:
                    gate = self.check_gate(record, old, report)
                except GateError as exc:
                    if not force:
                        raise
                    gate = {"passed": False, "forced": True, "refusal": str(exc)}
                if old is not None:
                    old["state"] = "deprecated"
                    data["history"].append(
                        _event(old["version"], "active", "deprecated", actor, f"superseded by {version}")
                    )
            record["state"] = state
            event = _event(version, current, state, actor, reason)
            if gate is not None:
                event["gate"] = gate
            data["history"].append(event)
            return dict(record)

    def set_rollout(
        self,
        canary_share: float | None = None,
        interleave: tuple[str, str] | list[str] | None = None,
        actor: str = "unknown",
        reason: str = "",
        interleave_share: float | None = None,
    ) -> dict:
        """Set how the served versions share traffic; a service serving this registry applies it on
        its next reload, over its own ``--canary-share`` and ``--interleave``. ``None`` hands each
        back to the service's setting. An interleaved pair must name two versions that are served
        (canary, active or deprecated); ``interleave_share`` is the share of searches it merges
        (None: all of them)."""
        for name, share in (("canary share", canary_share), ("interleave share", interleave_share)):
            if share is not None and not 0.0 <= float(share) <= 1.0:
                raise RegistryError(f"{name} must be within 0..1, got {share}")
        if interleave_share is not None and interleave is None:
            raise RegistryError("an interleave share needs an interleaved pair")
        pair = None
        if interleave is not None:
            pair = [str(v) for v in interleave]
            if len(pair) != 2 or pair[0] == pair[1]:
                raise RegistryError(f"interleaving compares two different versions, got {interleave!r}")
        with self._writing() as data:
            if pair is not None:
                for name in pair:
                    record = data["versions"].get(name)
                    if record is None or record["state"] not in ("canary", "active", "deprecated"):
                        state = record["state"] if record else "not registered"
                        raise RegistryError(f"cannot interleave {name!r}: it is {state}, not served")
            before = _rollout_of(data)
            after = {
                "canary_share": None if canary_share is None else float(canary_share),
                "interleave": pair,
                "interleave_share": None if interleave_share is None else float(interleave_share),
            }
            data["rollout"] = after
            data["history"].append(
                {"time": time.time(), "rollout": after, "from": before, "actor": actor, "reason": reason}
            )
            return after

    def check_gate(self, candidate: dict, active: dict | None, report: str | Path | None = None) -> dict:
        """The quality gate for ``candidate`` to replace ``active``: its evaluation report (``report``,
        else the one it was added with) must score at least the active version on the same data,
        with a flip rate of at most :data:`MAX_FLIP_RATE`. Returns what it checked."""
        if report is not None:
            source, raw = str(report), _read_json(Path(report), "evaluation report")
        elif candidate.get("report"):
            source = str(self.folder / "versions" / candidate["version"] / candidate["report"])
            raw = _read_json(Path(source), "evaluation report")
        else:
            raise GateError(
                f"version {candidate['version']!r} has no evaluation report: pass --report FILE (an isacir adapt "
                "report or a benchmark report against the active version), or --force --reason TEXT"
            )
        ev = Evaluation.from_report(raw, source, candidate)
        if active is not None:
            active_id = {
                "query_encoder": active["fingerprint"],
                "adapter": (active.get("adapter") or {}).get("fingerprint"),
            }
            if ev.baseline != active_id:
                raise GateError(
                    f"{source} compares with {ev.baseline}, but the active version {active['version']!r} is "
                    f"{active_id}: evaluate against the active version on the same data"
                )
        checked = {
            "report": source,
            "metric": ev.metric,
            "score": ev.score,
            "active_score": ev.baseline_score if active is not None else None,
            "flip_rate": ev.flip_rate,
            "max_flip_rate": MAX_FLIP_RATE,
        }
        problems = []
        if active is not None and ev.score < ev.baseline_score:
            problems.append(f"{ev.metric} {ev.score:.3f} is below the active version's {ev.baseline_score:.3f}")
        if ev.flip_rate > MAX_FLIP_RATE:
            problems.append(f"flip rate {ev.flip_rate:.3f} exceeds {MAX_FLIP_RATE}")
        if problems:
            raise GateError(f"version {candidate['version']!r} fails the quality gate: " + "; ".join(problems))
        return {"passed": True, **checked}


def _rollout_of(data: dict) -> dict:
    return {**DEFAULT_ROLLOUT, **data.get("rollout", {})}


def _oldest_first(data: dict) -> list[dict]:
    return sorted(data["versions"].values(), key=lambda v: (v["created"], v["version"]))


def _event(version: str, before: str | None, after: str, actor: str, reason: str) -> dict:
    return event("version", version, before, after, actor, reason)


def _check_format(data: dict, path: Path) -> None:
    if data.get("format") != REGISTRY_FORMAT:
        raise RegistryError(f"{path} has format {data.get('format')!r}; this isacir reads {REGISTRY_FORMAT}")


def _parent_name(versions: dict, record: dict) -> str | None:
    """The registered version a new one descends from: for an adapter version, its query encoder
    served without an adapter; otherwise the encoder it was trained from (``train --init-from``)."""
    if record["adapter"] is not None:
        for v in versions.values():
            if v["fingerprint"] == record["fingerprint"] and v.get("adapter") is None:
                return v["version"]
    parent = record["parent_fingerprint"] if record["adapter"] is None else record["fingerprint"]
    if parent is None:
        return None
    for v in versions.values():
        if v["fingerprint"] == parent and v.get("adapter") is None:
            return v["version"]
    return parent  # descends from an encoder that was never registered: keep its fingerprint


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise RegistryError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{what} {path} is not a JSON object")
    return data
