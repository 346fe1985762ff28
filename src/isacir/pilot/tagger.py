"""A small keyword tagger that files a modifier under edit categories (for the pilot breakdown).

Deliberately simple and configurable: a JSON file maps each category to its keywords, so a
customer's own vocabulary ("navy", "sleeveless") can be added without code. A modifier can name
several changes ("same dress but sleeveless, in red"), so it gets every category it mentions, and
``other`` when it mentions none.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IsacirError

CATEGORIES = ("colour", "shape", "size", "position", "add", "remove", "material", "other")

DEFAULT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "colour": (
        "colour",
        "color",
        "recolour",
        "recolor",
        "red",
        "green",
        "blue",
        "yellow",
        "orange",
        "purple",
        "pink",
        "black",
        "white",
        "grey",
        "gray",
        "brown",
        "navy",
        "beige",
        "dark",
        "light",
        "bright",
    ),
    "shape": ("shape", "circle", "square", "triangle", "star", "round", "oval", "rectangle", "cross", "heart"),
    "size": (
        "size",
        "big",
        "bigger",
        "large",
        "larger",
        "small",
        "smaller",
        "tiny",
        "huge",
        "long",
        "short",
        "longer",
        "shorter",
        "wide",
        "narrow",
    ),
    "position": (
        "left",
        "right",
        "top",
        "bottom",
        "above",
        "below",
        "corner",
        "centre",
        "center",
        "middle",
        "move",
        "relocate",
        "shift",
    ),
    "add": ("add", "with", "plus", "another", "extra", "more"),
    "remove": ("remove", "without", "no", "delete", "drop", "rid", "less", "sleeveless"),
    "material": (
        "leather",
        "cotton",
        "wool",
        "silk",
        "denim",
        "wood",
        "wooden",
        "metal",
        "glass",
        "plastic",
        "fabric",
        "velvet",
        "linen",
    ),
}


@dataclass
class Tagger:
    keywords: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_KEYWORDS))

    def tags(self, text: str) -> list[str]:
        words = set(re.findall(r"[a-z]+", text.lower()))
        found = [c for c, kws in self.keywords.items() if words & set(kws)]
        return found or ["other"]

    @classmethod
    def from_file(cls, path: str | Path) -> Tagger:
        """``{"category": ["keyword", ...], ...}``; categories replace the defaults of the same name."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise IsacirError(f"cannot read category keywords from {path}: {exc}") from None
        if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(w, str) for w in v) for v in data.values()
        ):
            raise IsacirError(f"{path}: expected {{category: [keyword, ...]}}")
        merged = dict(DEFAULT_KEYWORDS)
        merged.update({k: tuple(w.lower() for w in v) for k, v in data.items()})
        return cls(merged)


DEFAULT_TAGGER = Tagger()
