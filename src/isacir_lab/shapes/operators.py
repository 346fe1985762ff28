"""Simulated operators for a Shapes-CIR pilot: realistic people by default, the oracle on request.

A learning result is only as good as the people it learned from. The **oracle** reads the ground
truth: it confirms the target whenever search shows it, otherwise names it out of the whole
gallery, judges every query and never errs. Nobody works like that, so it is kept only as a
yardstick (``--operators oracle``, named as such wherever it is reported).

The **realistic** operators (the default) work as people at the operator UI do:

* there are several of them, and each words a change in habits of their own: per edit type a
  favourite phrasing of the pilot's family, used most of the time, and now and then another;
* they judge only the K candidates they are shown;
* when the target is not among them, they search once more in other words (the same photo, so the
  same tokens) and, if the target shows up there, confirm it there and correct the first query with
  it; otherwise they can only reject what they were shown (the first three);
* they make mistakes: now and then they confirm a near miss that ranks above the target (one of the
  edit's hard negatives, which differ from the target in one attribute), and now and then they
  overlook a target that was shown;
* many queries are never judged at all.

:func:`decide` is the judgement on one result list, free of any service, so that its behaviour can
be tested on hand-made cases; :func:`~isacir_lab.shapes.pilot.simulate_pilot` plays it over HTTP.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from isacir.errors import ConfigError

from .phrasing import parse_any, reword, wording

OPERATOR_KINDS = ("realistic", "oracle")


@dataclass(frozen=True)
class OperatorConfig:
    """Who judges the pilot. Every field but the ``seconds_*`` of the time model is an
    ``isacir-lab bench feedback`` option of the same name."""

    #: ``realistic`` (the default) or ``oracle`` (reads the ground truth, judges all, never errs)
    kind: str = "realistic"
    #: how many operators share the pilot, each with phrasing habits of their own
    count: int = 5
    #: the share of an operator's queries of one edit type worded in their favourite phrasing
    habit: float = 0.8
    #: the share of queries nobody ever judges
    unjudged: float = 0.3
    #: on a judged query where a near miss is shown above any shown target, the chance that the
    #: operator confirms that near miss
    wrong_confirm: float = 0.03
    #: the chance that an operator overlooks a target that was shown (and acts as on a miss)
    wrong_reject: float = 0.03
    #: on a miss, search once more in other words, and correct the query if the target shows up
    search_again: bool = True
    #: how many of the shown candidates a miss rejects
    reject_top: int = 3
    #: the operators' own random stream (their habits, who judges what, their slips)
    seed: int = 0
    #: how long a verdict takes (seconds): reading the change and the list, each candidate looked
    #: at, and typing the change again before a second search; each time varies by a log-normal
    #: factor (sigma 0.3). The UI measures the same span: from the results shown to the verdict.
    seconds_first: float = 4.0
    seconds_per_candidate: float = 1.5
    seconds_retype: float = 10.0

    def check(self) -> None:
        if self.kind not in OPERATOR_KINDS:
            raise ConfigError(f"--operators must be one of {', '.join(OPERATOR_KINDS)}, got {self.kind!r}")
        if self.count < 1:
            raise ConfigError(f"--operator-count must be at least 1, got {self.count}")
        for name in ("habit", "unjudged", "wrong_confirm", "wrong_reject"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be within 0..1, got {value}")
        if self.unjudged >= 1.0:
            raise ConfigError("--unjudged 1 leaves nothing to learn from: every query unjudged")
        if self.reject_top < 0:
            raise ConfigError(f"--reject-top must not be negative, got {self.reject_top}")
        for name in ("seconds_first", "seconds_per_candidate", "seconds_retype"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")

    @classmethod
    def oracle(cls, seed: int = 0) -> OperatorConfig:
        return cls(
            kind="oracle", count=1, unjudged=0.0, wrong_confirm=0.0, wrong_reject=0.0, search_again=False, seed=seed
        )

    @classmethod
    def of(cls, kind: str, seed: int = 0, **knobs: object) -> OperatorConfig:
        """The operators a command line names, checked: the oracle (which has no knobs) or people
        with ``knobs`` (the fields above)."""
        config = cls.oracle(seed) if kind == "oracle" else cls(kind=kind, seed=seed, **knobs)  # type: ignore[arg-type]
        config.check()
        return config


@dataclass
class Operator:
    """One person: a favourite phrasing per edit type, drawn from ``phrasings`` (in ``language``)."""

    index: int
    favourite: dict[str, str]
    phrasings: dict[str, list[str]]
    habit: float
    language: str = "en"

    @classmethod
    def draw(
        cls, index: int, phrasings: dict[str, list[str]], habit: float, rng: random.Random, language: str = "en"
    ) -> Operator:
        return cls(index, {kind: rng.choice(ts) for kind, ts in phrasings.items()}, phrasings, habit, language)

    def word(self, kind: str, text: str, rng: random.Random) -> str:
        """How this operator types the change that ``text`` describes."""
        others = [t for t in self.phrasings[kind] if t != self.favourite[kind]]
        template = self.favourite[kind] if not others or rng.random() < self.habit else rng.choice(others)
        return reword(kind, text, template, self.language)

    def word_again(self, kind: str, text: str, rng: random.Random) -> str:
        """Other words for the same change, after a search that missed: another phrasing of the
        pilot's family where there is one, else one of the plain phrasings everyone knows."""
        used = parse_any(kind, text, self.language)[1]
        pool = [t for t in self.phrasings[kind] if t != used] or [
            t for t in wording(self.language).templates(kind, "train") if t != used
        ]
        return reword(kind, text, rng.choice(pool), self.language)


@dataclass
class Decision:
    """What an operator does with one result list."""

    #: the id confirmed (None: nothing confirmed here)
    confirm: int | None = None
    #: the ids rejected
    reject: list[int] = field(default_factory=list)
    #: the confirmed id is a near miss, not a target (a wrong confirmation)
    wrong: bool = False
    #: a shown target was overlooked (a wrong rejection when it is among ``reject``)
    overlooked: bool = False

    @property
    def missed(self) -> bool:
        return self.confirm is None


def seconds_to_verdict(shown: Sequence[int], decision: Decision, config: OperatorConfig, rng: random.Random) -> float:
    """How long an operator takes over one result list: the candidates up to the one confirmed are
    looked at, all of them on a miss."""
    looked = shown.index(decision.confirm) + 1 if decision.confirm in shown else len(shown)
    base = config.seconds_first + config.seconds_per_candidate * looked
    return round(base * rng.lognormvariate(0.0, 0.3), 2)


def decide(
    shown: Sequence[int],
    targets: set[int],
    near: set[int],
    config: OperatorConfig,
    rng: random.Random,
) -> Decision:
    """The verdict on ``shown`` (the K candidates, best first) of a query whose right answers are
    ``targets``, with ``near`` its near misses. A miss rejects the first ``config.reject_top``.

    The oracle confirms a shown target and never errs; a realistic operator may confirm a near miss
    ranked above every shown target (``wrong_confirm``), or overlook a shown target
    (``wrong_reject``)."""
    first_target = next((i for i in shown if i in targets), None)
    realistic = config.kind == "realistic"
    if realistic:
        above = shown[: shown.index(first_target)] if first_target is not None else list(shown)
        lure = next((i for i in above if i in near), None)
        if lure is not None and rng.random() < config.wrong_confirm:
            return Decision(confirm=lure, wrong=True)
        if first_target is not None and rng.random() < config.wrong_reject:
            return Decision(reject=list(shown[: config.reject_top]), overlooked=True)
    if first_target is not None:
        return Decision(confirm=first_target)
    return Decision(reject=list(shown[: config.reject_top]))
