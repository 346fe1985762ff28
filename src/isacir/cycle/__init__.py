"""The operations loop: learning cycles that train on new verdicts and roll out only what proves better.

- :mod:`.policy`: when a cycle starts, how it trains, what a candidate must show (TOML);
- :mod:`.evidence`: the decision on a canary from live traffic (interleaving, pilot metrics);
- :mod:`.record`: the cycles on disk, one at a time, resumable;
- :mod:`.run`: :class:`LearningCycle`, the steps.

Above the serving path and training in the layers: it drives both, neither knows it.
"""

from .evidence import Evidence, judge
from .policy import CyclePolicy
from .record import CycleBusy, CycleStore
from .run import LearningCycle

__all__ = ["CycleBusy", "CyclePolicy", "CycleStore", "Evidence", "LearningCycle", "judge"]
