"""A learning cycle's policy: when to learn, how, and what a candidate must show before it serves.

Written by the people who own the loop, in TOML, one table per concern::

    [trigger]
    min_new_verdicts = 1000      # judged queries since the active version became active
    min_hours_between = 24       # since the last cycle started
    window = "01:00-05:00"       # local time in which training may start (default: any time)

    [adapt]                      # isacir adapt's settings (default: its default recipe)
    recipe = "auto"

    [rollout]
    canary_share = 0.1           # the share of searches the candidate answers while it is compared
    compare = "interleave"       # or "canary": its own pilot metrics against the active version's
    min_comparisons = 200        # judged interleaved queries (or judged canary queries) before a decision
    max_days = 14                # undecided by then: rolled back

    [notify]
    webhook = "https://ops.example/isacir"   # each decision is POSTed here as JSON (optional)

Plain Python, no torch: the service and the console read it without loading a model stack.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..adapt.settings import AdaptSettings

COMPARE = ("interleave", "canary")
_WINDOW = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


@dataclass(frozen=True)
class CyclePolicy:
    min_new_verdicts: int = 1000
    min_hours_between: float = 0.0
    #: ``(start, end)`` in minutes after local midnight; a window past midnight wraps (22:00-04:00)
    window: tuple[int, int] | None = None
    #: :class:`~isacir.adapt.AdaptSettings` fields (the default: its default recipe)
    adapt: dict[str, Any] = field(default_factory=dict)
    canary_share: float = 0.1
    compare: str = "interleave"
    min_comparisons: int = 200
    max_days: float = 14.0
    webhook: str | None = None

    def __post_init__(self) -> None:
        if self.min_new_verdicts < 1:
            raise ConfigError(f"trigger.min_new_verdicts must be at least 1, got {self.min_new_verdicts}")
        if self.min_hours_between < 0:
            raise ConfigError(f"trigger.min_hours_between must not be negative, got {self.min_hours_between}")
        if not 0.0 < self.canary_share <= 1.0:
            raise ConfigError(f"rollout.canary_share must be within (0, 1], got {self.canary_share}")
        if self.compare not in COMPARE:
            raise ConfigError(f"rollout.compare must be one of {', '.join(COMPARE)}, got {self.compare!r}")
        if self.min_comparisons < 1:
            raise ConfigError(f"rollout.min_comparisons must be at least 1, got {self.min_comparisons}")
        if self.max_days <= 0:
            raise ConfigError(f"rollout.max_days must be positive, got {self.max_days}")
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise ConfigError(f"notify.webhook must be an http(s) URL, got {self.webhook!r}")
        self.adapt_settings()  # bad adapt settings fail when the policy is read, not hours later

    def adapt_settings(self) -> AdaptSettings:
        """The :class:`~isacir.adapt.AdaptSettings` a cycle trains with, checked."""
        from ..adapt.settings import AdaptSettings

        known = {f.name for f in fields(AdaptSettings)}
        unknown = sorted(set(self.adapt) - known)
        if unknown:
            raise ConfigError(f"[adapt] has unknown setting(s) {', '.join(unknown)}; see isacir adapt --help")
        settings = AdaptSettings(**self.adapt) if "recipe" in self.adapt else AdaptSettings.auto(**self.adapt)
        settings.check()
        return settings

    def in_window(self, minute_of_day: int) -> bool:
        """Whether training may start at ``minute_of_day`` (local time)."""
        if self.window is None:
            return True
        start, end = self.window
        return start <= minute_of_day < end if start <= end else minute_of_day >= start or minute_of_day < end

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.window is not None:
            d["window"] = "-".join(f"{m // 60:02d}:{m % 60:02d}" for m in self.window)
        return d

    @classmethod
    def from_toml(cls, path: str | Path) -> CyclePolicy:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"policy file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
        try:
            return cls.from_tables(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_tables(cls, raw: dict[str, Any]) -> CyclePolicy:
        """A policy from its TOML tables (``trigger``, ``adapt``, ``rollout``, ``notify``)."""
        tables = {
            "trigger": {"min_new_verdicts", "min_hours_between", "window"},
            "adapt": None,
            "rollout": {"canary_share", "compare", "min_comparisons", "max_days"},
            "notify": {"webhook"},
        }
        unknown = sorted(set(raw) - set(tables))
        if unknown:
            raise ConfigError(f"unknown table(s) {', '.join(unknown)}; a policy has {', '.join(tables)}")
        values: dict[str, Any] = {}
        for table, names in tables.items():
            part = raw.get(table, {})
            if not isinstance(part, dict):
                raise ConfigError(f"[{table}] must be a table")
            if names is None:
                values["adapt"] = dict(part)
                continue
            extra = sorted(set(part) - names)
            if extra:
                raise ConfigError(
                    f"[{table}] has unknown key(s) {', '.join(extra)}; it takes {', '.join(sorted(names))}"
                )
            values.update(part)
        if "window" in values:
            values["window"] = parse_window(values["window"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None


def parse_window(text: Any) -> tuple[int, int]:
    """``"01:00-05:00"`` as minutes after midnight, ``(60, 300)``."""
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f'trigger.window must read "HH:MM-HH:MM" (local time), got {text!r}')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start > 24 * 60 or end > 24 * 60 or start == end:
        raise ConfigError(f"trigger.window {text!r} is empty or past 24:00")
    return start, end
