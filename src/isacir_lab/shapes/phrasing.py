"""Which phrasing a Shapes-CIR modifier uses, and the same edit in other words.

The world's test modifiers use phrasings the foundation never saw. Two diagnostics need to take a
modifier apart: the known-phrasings copy of the test set (the same edit in a *training* phrasing)
and the pilot's unseen-phrasing split (test queries whose phrasing no pilot operator used).
"""

from __future__ import annotations

import json
import re
import zlib
from functools import cache
from pathlib import Path

from .world import COMPARATIVE, PHRASES


@cache
def _pattern(template: str) -> re.Pattern:
    body = (
        re.escape(template).replace(r"\{value\}", r"(?P<value>.+)").replace(r"\{comparative\}", r"(?P<comparative>\w+)")
    )
    return re.compile(f"^{body}$")


def parse_modifier(kind: str, text: str, split: str = "test") -> tuple[str, str, str]:
    """``(selector, phrasing template, value)`` of a modifier, e.g. ``("the red circle", "now in {value}", "blue")``.

    Raises ``ValueError`` when no phrasing of ``split`` for that edit type matches.
    """
    selector, _, phrase = text.rpartition(": ")
    for template in PHRASES[kind][split]:
        match = _pattern(template).match(phrase)
        if match:
            found = match.groupdict()
            value = found.get("value") or found["comparative"]
            # "make it {value}" also reads "make it bigger": a comparative always names its size
            value = {v: k for k, v in COMPARATIVE.items()}.get(value, value)
            return selector.removeprefix("the "), template, value
    raise ValueError(f"no {split} phrasing of {kind!r} matches {phrase!r}")


def parse_any(kind: str, text: str) -> tuple[str, str, str]:
    """:func:`parse_modifier` over the test phrasings, then the training ones (an operator who
    searches again may fall back on the plain words everyone knows)."""
    for split in ("test", "train"):
        try:
            return parse_modifier(kind, text, split)
        except ValueError:
            continue
    raise ValueError(f"no phrasing of {kind!r} matches {text!r}")


def rephrase(annotation: dict) -> str:
    """The annotation's modifier in a training phrasing (picked by id) of the same edit and value."""
    kind = annotation["shared_concept"]
    try:
        selector, _, value = parse_modifier(kind, annotation["relative_caption"])
    except ValueError as exc:
        raise ValueError(f"query {annotation['id']}: {exc}") from None
    train = PHRASES[kind]["train"]
    text = train[zlib.crc32(str(annotation["id"]).encode()) % len(train)].format(
        value=value, comparative=COMPARATIVE.get(value, "")
    )
    return f"the {selector}: {text}" if selector else text


def known_phrasings_copy(world: Path, dest: Path) -> Path:
    """A copy of ``world`` (images linked, not copied) whose test modifiers use training phrasings."""
    anns = json.loads((world / "annotations" / "test.json").read_text())
    for a in anns:
        a["relative_caption"] = rephrase(a)
    dest.mkdir(parents=True, exist_ok=True)
    for p in world.iterdir():
        if p.name != "annotations" and not (dest / p.name).exists():
            (dest / p.name).symlink_to(p.resolve())
    (dest / "annotations").mkdir(exist_ok=True)
    info = dest / "annotations" / "image_info_unlabeled2017.json"
    if not info.exists():
        info.symlink_to((world / "annotations" / "image_info_unlabeled2017.json").resolve())
    (dest / "annotations" / "test.json").write_text(json.dumps(anns))
    return dest
