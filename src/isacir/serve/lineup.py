"""Which query-side versions a service answers with, and which one answers each request.

Every query-side version trained for one foundation writes tokens for the same frozen text
tower and gallery, so a service can serve several at once: a device that has not updated yet
keeps working while the others move on. A :class:`Lineup` is one immutable snapshot of what is
served. A request takes the snapshot once and uses it to the end; a registry change builds a new
snapshot beside it (loading only the models it did not hold yet) and swaps it in with one
assignment, so no request is ever answered by a half-loaded model.

Routing:
  * a token payload goes to the served version with the payload's fingerprint (when an active
    version and a canary share it, the canary gets its share of requests); a ``deprecated``
    version answers with an ``upgrade`` notice naming the active version;
  * a fingerprint the registry holds only as ``staged``, or does not hold, is refused with
    ``encoder_unknown``; a ``retired`` one with ``encoder_retired``; one that belongs to another
    foundation with ``foundation_mismatch``; every refusal names the version to update to;
  * a thin-client search (the photo is uploaded) uses the active version, or the canary for the
    configured share of requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IsacirError
from ..feedback import served_version

if TYPE_CHECKING:
    from ..adapter import QueryAdapter
    from ..foundation import Foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder
    from ..registry import Registry
    from ..search import Retriever

log = logging.getLogger(__name__)

#: the registry states a service answers with, best first (``staged`` and ``retired`` never answer)
SERVED_STATES = ("active", "canary", "deprecated")
#: how long a model that left the lineup stays loaded, for requests that took the old snapshot
RELEASE_AFTER_S = 60.0


class LineupError(IsacirError):
    pass


class VersionRefused(IsacirError):
    """A token payload no served version answers: HTTP 409 with ``code`` and the version to update to."""

    def __init__(self, message: str, code: str, active_version: str | None):
        super().__init__(message)
        self.code = code
        self.active_version = active_version


@dataclass(frozen=True, eq=False)
class LiveGeneration:
    """A generation of the gallery that a service answers from, with the foundation that indexed it."""

    name: str
    gallery: Gallery
    foundation: Foundation

    @property
    def foundation_fingerprint(self) -> str:
        return str(self.gallery.info["foundation_fingerprint"])

    def close(self) -> None:
        self.gallery.close()


@dataclass(eq=False)
class Model:
    """One loaded query-side version: the light encoder, its adapter, and the retriever over both.

    Immutable while served; the registry state lives in the :class:`Served` that wraps it, so a
    promotion swaps a few small objects and never reloads weights."""

    name: str | None
    query_encoder: QueryEncoder
    adapter: QueryAdapter | None
    retriever: Retriever
    edge: dict | None = None
    #: the folder of the version's edge package (``model.onnx`` + ``edge.json``), if it ships one
    edge_dir: Path | None = None
    #: the generation whose gallery this version searches (None: the only one)
    generation: str | None = None
    qe_fingerprint: str = field(init=False)
    adapter_fingerprint: str | None = field(init=False)

    def __post_init__(self) -> None:
        # hashing the weights is slow; they are frozen while served, so hash once
        self.qe_fingerprint = self.query_encoder.fingerprint
        self.adapter_fingerprint = self.adapter.fingerprint if self.adapter is not None else None

    @property
    def foundation_fingerprint(self) -> str:
        return str(self.retriever.foundation.fingerprint)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.qe_fingerprint, self.adapter_fingerprint)

    def close(self) -> None:
        self.retriever.close()


@dataclass(frozen=True, eq=False)
class Served:
    """A model with the registry state it is served in."""

    model: Model
    state: str

    @property
    def name(self) -> str | None:
        return self.model.name

    @property
    def version(self) -> str:
        """What answered, by fingerprint: the query encoder, plus the adapter when one is served."""
        return served_version(self.model.qe_fingerprint, self.model.adapter_fingerprint)

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {
            "version": m.name,
            "state": self.state,
            "fingerprint": m.qe_fingerprint,
            "adapter_fingerprint": m.adapter_fingerprint,
            "edge": m.edge_dir is not None,
            "generation": m.generation,
        }


@dataclass(frozen=True, eq=False)
class Lineup:
    """An immutable snapshot of the served versions and of what the registry says about others."""

    served: tuple[Served, ...]
    #: every registry record (all foundations, every state); empty when serving one encoder alone
    records: tuple[dict, ...] = ()
    foundation_fingerprint: str = ""
    foundation_name: str = ""
    #: the share of thin-client requests (and of a shared fingerprint's payloads) the canary answers
    canary_share: float = 0.0
    #: two served version names compared by team-draft interleaving: photo searches, and token
    #: searches whose payload both read
    interleave: tuple[str, str] | None = None
    #: the gallery generations answered from; the first is the serving one (empty: the service's
    #: one gallery, when no registry is served)
    generations: tuple[LiveGeneration, ...] = ()
    #: when the snapshot was built, and from which registry and generations file states
    built: float = field(default_factory=time.time)
    stamp: Any = None
    #: the share of the searches ``interleave`` could merge that are interleaved (the rest are
    #: routed as usual); a learning cycle sets it to its canary share
    interleave_share: float = 1.0

    def __post_init__(self) -> None:
        if not self.served:
            raise LineupError("a service needs at least one version to serve")
        if not 0.0 <= self.canary_share <= 1.0:
            raise LineupError(f"canary share must be within 0..1, got {self.canary_share}")
        if not 0.0 <= self.interleave_share <= 1.0:
            raise LineupError(f"interleave share must be within 0..1, got {self.interleave_share}")
        if self.interleave is not None:
            for name in self.interleave:
                if self.by_name(name) is None:
                    serving = ", ".join(str(s.name) for s in self.served)
                    raise LineupError(f"--interleave names {name!r}, which is not served (serving: {serving})")

    # ----- lookups --------------------------------------------------------------------------------
    def _first(self, state: str) -> Served | None:
        """The first version in ``state`` of the serving generation's foundation."""
        return next(
            (
                s
                for s in self.served
                if s.state == state
                and (not self.generations or s.model.foundation_fingerprint == self.foundation_fingerprint)
            ),
            None,
        )

    @property
    def serving_generation(self) -> LiveGeneration | None:
        return self.generations[0] if self.generations else None

    def served_foundations(self) -> set[str]:
        return (
            {s.model.foundation_fingerprint for s in self.served} if self.generations else {self.foundation_fingerprint}
        )

    @property
    def active(self) -> Served | None:
        return self._first("active")

    @property
    def canary(self) -> Served | None:
        return self._first("canary")

    @property
    def primary(self) -> Served:
        """What thin-client searches use by default, and what ``/v1/info`` describes."""
        return self.active or self.canary or self.served[0]

    def by_name(self, name: str) -> Served | None:
        return next((s for s in self.served if s.name == name), None)

    def models(self) -> dict[tuple[str, str | None], Model]:
        return {s.model.key: s.model for s in self.served}

    def split(self) -> dict[str, Any]:
        """How traffic is shared now: the canary share, the interleaved pair and its share."""
        return {
            "canary_share": self.canary_share,
            "interleave": list(self.interleave) if self.interleave else None,
            "interleave_share": self.interleave_share,
        }

    # ----- routing --------------------------------------------------------------------------------
    def interleaved_pair(self, draw: float, fingerprint: str | None = None) -> tuple[Served, Served] | None:
        """The two versions to merge for one search, or None to route it as usual: interleaving is
        on, ``draw`` (uniform in [0, 1)) falls within its share, and, for a token payload with
        ``fingerprint``, both versions read it."""
        if self.interleave is None or draw >= self.interleave_share:
            return None
        a, b = self.by_name(self.interleave[0]), self.by_name(self.interleave[1])
        if a is None or b is None:
            return None
        if fingerprint is not None and not (a.model.qe_fingerprint == b.model.qe_fingerprint == fingerprint):
            return None
        return a, b

    def for_thin_client(self, draw: float) -> Served:
        """The version a thin-client search uses; ``draw`` is uniform in [0, 1)."""
        active, canary = self.active, self.canary
        if canary is not None and (active is None or draw < self.canary_share):
            return canary
        return self.primary

    def for_tokens(self, fingerprint: str, draw: float) -> Served:
        """The served version that reads a payload with ``fingerprint``, or :class:`VersionRefused`."""
        matching = [s for s in self.served if s.model.qe_fingerprint == fingerprint]
        if matching:
            by_state = {s.state: s for s in reversed(matching)}
            if "active" in by_state and "canary" in by_state:
                return by_state["canary"] if draw < self.canary_share else by_state["active"]
            return min(matching, key=lambda s: SERVED_STATES.index(s.state))
        primary = self.primary
        update_to = primary.name or primary.model.qe_fingerprint
        known = [r for r in self.records if r["fingerprint"] == fingerprint]
        served_foundations = self.served_foundations()
        ours = [r for r in known if r["foundation_fingerprint"] in served_foundations]
        where = f"update the device to version {update_to} (GET /v1/edge/manifest)"
        if known and not ours:
            r = known[0]
            raise VersionRefused(
                f"token payload fingerprint {fingerprint} is version {r['version']!r}, which belongs to foundation "
                f"{r.get('foundation_id')} ({r['foundation_fingerprint']}); this gallery is indexed by "
                f"{self.foundation_name} ({self.foundation_fingerprint}): {where}",
                "foundation_mismatch",
                primary.name,
            )
        if any(r["state"] == "retired" for r in ours):
            r = next(r for r in ours if r["state"] == "retired")
            raise VersionRefused(
                f"token payload fingerprint {fingerprint} is version {r['version']!r}, which is retired: {where}",
                "encoder_retired",
                primary.name,
            )
        if ours:
            r = ours[0]
            raise VersionRefused(
                f"token payload fingerprint {fingerprint} is version {r['version']!r}, which is {r['state']} and not "
                f"served yet: {where}",
                "encoder_unknown",
                primary.name,
            )
        raise VersionRefused(
            f"token payload fingerprint {fingerprint} does not match a served query encoder (serving "
            f"{', '.join(s.model.qe_fingerprint for s in self.served)}; foundation {self.foundation_name}, "
            f"fingerprint {self.foundation_fingerprint}, which indexed this gallery): {where}, or serve the "
            "matching query encoder",
            "encoder_unknown",
            primary.name,
        )

    def upgrade_for(self, served: Served) -> dict | None:
        """The notice the answers of a ``deprecated`` version, or of a version of a generation that
        no longer serves, carry: which version to update to."""
        active = self.active
        if active is None or served is active:
            return None
        if served.model.foundation_fingerprint != active.model.foundation_fingerprint and self.generations:
            created = {r["version"]: r.get("created", 0.0) for r in self.records}
            if created.get(str(served.name), 0.0) >= created.get(str(active.name), 0.0):
                return None  # a device ahead of the switch (its generation is not serving yet)
            reason = (
                f"version {served.name} belongs to generation {served.model.generation}, which is not the serving one; "
                f"{active.name} is active on generation {active.model.generation}"
            )
        elif served.state == "deprecated":
            reason = f"version {served.name} is deprecated; {active.name} is active"
        else:
            return None
        return {
            "version": active.name,
            "fingerprint": active.model.qe_fingerprint,
            "manifest_url": "/v1/edge/manifest",
            "reason": reason,
        }


# ----- building lineups from a registry -----------------------------------------------------------
ModelFactory = Callable[
    [str | None, "QueryEncoder", "QueryAdapter | None", dict | None, Path | None, LiveGeneration], Model
]


def registry_stamp(registry: Registry) -> tuple | None:
    """What changes whenever ``registry.json`` is replaced (every registry write replaces it)."""
    return registry.ledger.stamp()


def lineup_from_registry(
    registry: Registry,
    generations: Sequence[LiveGeneration],
    make_model: ModelFactory,
    previous: Lineup | None = None,
    canary_share: float = 0.0,
    interleave: tuple[str, str] | None = None,
    stamp: Any = None,
) -> Lineup:
    """The registry versions of the live generations' foundations, reusing ``previous``'s loaded
    models. ``generations[0]`` is the serving one. ``canary_share`` and ``interleave`` are the
    service's own settings; the registry's rollout (:meth:`Registry.set_rollout`) overrides them.

    Models are loaded here, before anything is swapped, so a version that fails to load fails
    this build and leaves the running lineup as it was."""
    from ..adapter import QueryAdapter
    from ..query import QueryEncoder

    if not generations:
        raise LineupError("no live gallery generation to serve")
    by_foundation = {g.foundation_fingerprint: g for g in generations}
    records, rollout = registry.snapshot()
    if rollout["canary_share"] is not None:
        canary_share = float(rollout["canary_share"])
    from_registry = rollout["interleave"] is not None
    interleave_share = 1.0
    if from_registry:
        interleave = (rollout["interleave"][0], rollout["interleave"][1])
        if rollout["interleave_share"] is not None:
            interleave_share = float(rollout["interleave_share"])
    held = previous.models() if previous is not None else {}
    served: list[Served] = []
    for rec in records:
        gen = by_foundation.get(rec["foundation_fingerprint"])
        if rec["state"] not in SERVED_STATES or gen is None:
            continue
        key = (rec["fingerprint"], (rec.get("adapter") or {}).get("fingerprint"))
        model = held.get(key)
        if model is None or model.name != rec["version"] or model.retriever.gallery is not gen.gallery:
            qe = QueryEncoder.from_pretrained(registry.path_of(rec["version"]), foundation=gen.foundation).eval()
            qa = None
            if rec.get("adapter"):
                qa = QueryAdapter.from_pretrained(registry.path_of(rec["version"], "adapter"))
            edge_dir = registry.path_of(rec["version"], "edge") if rec.get("edge") else None
            model = make_model(rec["version"], qe, qa, rec.get("edge"), edge_dir, gen)
            if model.key != key:
                raise LineupError(
                    f"version {rec['version']!r} in {registry.folder} holds {model.key}, but the registry "
                    f"records {key}: its files were changed after it was added"
                )
        served.append(Served(model, rec["state"]))
    serving_fp = generations[0].foundation_fingerprint
    # the serving generation's versions first, then by state
    served.sort(key=lambda s: (s.model.foundation_fingerprint != serving_fp, SERVED_STATES.index(s.state)))
    if not any(s.model.foundation_fingerprint == serving_fp for s in served):
        states = ", ".join(f"{r['version']} ({r['state']})" for r in records) or "none"
        fnd = generations[0].foundation
        raise LineupError(
            f"the registry {registry.folder} has no version of foundation {fnd.name} ({serving_fp}), which "
            f"indexed the serving generation {generations[0].name!r}, to serve (versions: {states}); "
            "promote one: isacir models promote NAME --to active"
        )
    if interleave is not None and (previous is not None or from_registry):
        names = {s.name for s in served}
        if not all(n in names for n in interleave):
            log.warning("interleaving %s stopped: a compared version is no longer served", "/".join(interleave))
            interleave = None
    return Lineup(
        tuple(served),
        tuple(records),
        serving_fp,
        generations[0].foundation.name,
        canary_share,
        interleave,
        tuple(generations),
        stamp=stamp if stamp is not None else registry_stamp(registry),
        interleave_share=interleave_share,
    )


def released_models(old: Lineup, new: Lineup) -> Sequence[Model | LiveGeneration]:
    """The models and generations ``old`` served that ``new`` does not."""
    keep = {id(m) for m in new.models().values()} | {id(g) for g in new.generations}
    return [m for m in old.models().values() if id(m) not in keep] + [g for g in old.generations if id(g) not in keep]
