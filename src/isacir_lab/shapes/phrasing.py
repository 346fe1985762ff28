"""Which phrasing a Shapes-CIR modifier uses, and the same edit in other words, in either language.

The world's test modifiers use phrasings the foundation never saw. Several diagnostics need to
take a modifier apart: the known-phrasings copy of the test set (the same edit in a *training*
phrasing), the pilot's unseen-phrasing split (test queries whose phrasing no pilot operator used)
and the simulated operators, who word a change in their own habits. Each language has a
:class:`Wording`: its phrasings, its comparatives, and how a modifier names the object it edits
(English ``the red circle: now in blue``, Japanese ``赤の円は今度は青``).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from . import japanese
from .world import COMPARATIVE, PHRASES


def _alternatives(words) -> str:
    """A regex group matching any of ``words``, longest first (``左上`` before ``上``)."""
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w))) + ")"


@dataclass(frozen=True)
class Wording:
    """How one language writes a modifier.

    ``values`` holds, per edit type, a regex for the words a template's ``{value}`` takes; English
    leaves it open (its words are separated by spaces and templates are unambiguous), Japanese
    lists them, since with no spaces ``大きいサイズにして`` would also read as a comparative followed
    by ``サイズにして``.
    """

    language: str
    phrases: Mapping[str, Mapping[str, list[str]]]
    #: the comparative each size word takes (``large`` -> ``bigger``; ``大きい`` -> ``もっと大きく``)
    comparative: Mapping[str, str]
    selector: re.Pattern
    #: the form of a modifier that names its object (``{selector}`` and ``{body}``)
    named: str
    values: Mapping[str, str]
    comparative_pattern: str

    def split(self, text: str) -> tuple[str, str]:
        """``(selector, phrase)``: the named object ("" when there is none) and the edit's words."""
        match = self.selector.match(text)
        return (match["selector"], match["body"]) if match else ("", text)

    def join(self, selector: str, body: str) -> str:
        return self.named.format(selector=selector, body=body) if selector else body

    def fill(self, template: str, value: str) -> str:
        return template.format(value=value, comparative=self.comparative.get(value, ""))

    def templates(self, kind: str, split: str) -> list[str]:
        return self.phrases[kind][split]


WORDINGS = {
    "en": Wording(
        "en",
        PHRASES,
        COMPARATIVE,
        re.compile(r"^the (?P<selector>.+?): (?P<body>.+)$"),
        "the {selector}: {body}",
        {},
        r"\w+",
    ),
    "ja": Wording(
        "ja",
        japanese.PHRASES_JA,
        {japanese.SIZES_JA[size]: word for size, word in japanese.COMPARATIVE_JA.items()},
        re.compile(
            f"^(?P<selector>{_alternatives(japanese.COLOURS_JA.values())}の"
            f"{_alternatives(japanese.SHAPES_JA.values())})は(?P<body>.+)$"
        ),
        "{selector}は{body}",
        {
            "colour": _alternatives(japanese.COLOURS_JA.values()),
            "shape": _alternatives(japanese.SHAPES_JA.values()),
            "size": _alternatives(japanese.SIZES_JA.values()),
            "move": _alternatives(japanese.CELLS_JA),
            "add": f"(?:{_alternatives(japanese.CELLS_JA)}の)?{_alternatives(japanese.SIZES_JA.values())}"
            f"{_alternatives(japanese.COLOURS_JA.values())}の{_alternatives(japanese.SHAPES_JA.values())}",
            "remove": f"{_alternatives(japanese.COLOURS_JA.values())}の{_alternatives(japanese.SHAPES_JA.values())}",
        },
        _alternatives(japanese.COMPARATIVE_JA.values()),
    ),
}


#: The languages the world writes modifiers in.
LANGUAGES = tuple(WORDINGS)


def wording(language: str) -> Wording:
    try:
        return WORDINGS[language]
    except KeyError:
        raise ValueError(f"no wording for language {language!r}; choose from {', '.join(LANGUAGES)}") from None


@cache
def _pattern(template: str, language: str, kind: str) -> re.Pattern:
    words = wording(language)
    value = words.values.get(kind, ".+")
    body = (
        re.escape(template)
        .replace(r"\{value\}", f"(?P<value>{value})")
        .replace(r"\{comparative\}", f"(?P<comparative>{words.comparative_pattern})")
    )
    return re.compile(f"^{body}$")


def parse_modifier(kind: str, text: str, split: str = "test", language: str = "en") -> tuple[str, str, str]:
    """``(selector, phrasing template, value)`` of a modifier, e.g. ``("red circle", "now in {value}", "blue")``.

    Raises ``ValueError`` when no phrasing of ``split`` for that edit type matches. A comparative
    comes back as its size word (``bigger`` as ``large``), so that any template can write it again.
    """
    words = wording(language)
    selector, phrase = words.split(text)
    for template in words.templates(kind, split):
        match = _pattern(template, language, kind).match(phrase)
        if match:
            found = match.groupdict()
            value = found.get("value") or found["comparative"]
            value = {v: k for k, v in words.comparative.items()}.get(value, value)
            return selector, template, value
    raise ValueError(f"no {split} phrasing of {kind!r} in {language!r} matches {phrase!r}")


def parse_any(kind: str, text: str, language: str = "en") -> tuple[str, str, str]:
    """:func:`parse_modifier` over the test phrasings, then the training ones (an operator who
    searches again may fall back on the plain words everyone knows)."""
    wording(language)  # an unknown language is that, not a modifier no phrasing matches
    for split in ("test", "train"):
        try:
            return parse_modifier(kind, text, split, language)
        except ValueError:
            continue
    raise ValueError(f"no phrasing of {kind!r} in {language!r} matches {text!r}")


def reword(kind: str, text: str, template: str, language: str = "en") -> str:
    """``text`` (a modifier in one of the world's phrasings of edit ``kind``) in ``template``'s words."""
    words = wording(language)
    selector, _, value = parse_any(kind, text, language)
    return words.join(selector, words.fill(template, value))


def modifier_field(language: str) -> str:
    """The test annotation's field that holds a modifier in ``language``."""
    return "relative_caption" if language == "en" else f"relative_caption_{language}"


def rephrase(annotation: dict, language: str = "en") -> str:
    """The annotation's modifier in a training phrasing (picked by id) of the same edit and value."""
    kind = annotation["shared_concept"]
    try:
        parse_modifier(kind, annotation[modifier_field(language)], "test", language)
    except ValueError as exc:
        raise ValueError(f"query {annotation['id']}: {exc}") from None
    train = wording(language).templates(kind, "train")
    template = train[zlib.crc32(str(annotation["id"]).encode()) % len(train)]
    return reword(kind, annotation[modifier_field(language)], template, language)


def known_phrasings_copy(world: Path, dest: Path, language: str = "en") -> Path:
    """A copy of ``world`` (images linked, not copied) whose test modifiers in ``language`` use
    training phrasings."""
    anns = json.loads((world / "annotations" / "test.json").read_text())
    for a in anns:
        a[modifier_field(language)] = rephrase(a, language)
    dest.mkdir(parents=True, exist_ok=True)
    for p in world.iterdir():
        if p.name != "annotations" and not (dest / p.name).exists():
            (dest / p.name).symlink_to(p.resolve())
    (dest / "annotations").mkdir(exist_ok=True)
    info = dest / "annotations" / "image_info_unlabeled2017.json"
    if not info.exists():
        info.symlink_to((world / "annotations" / "image_info_unlabeled2017.json").resolve())
    (dest / "annotations" / "test.json").write_text(json.dumps(anns, ensure_ascii=False))
    return dest


def used_phrasings(texts) -> set[tuple[str, str]]:
    """Every ``(edit type, phrasing)`` that the operators' modifiers match (test or training
    family, either language: the two languages' templates never coincide)."""
    used = set()
    for text in texts:
        for language in LANGUAGES:
            phrases = wording(language).phrases
            for kind, families in phrases.items():
                for split in families:
                    try:
                        used.add((kind, parse_modifier(kind, text, split, language)[1]))
                    except ValueError:
                        continue
    return used


def pilot_phrasings(language: str = "en") -> tuple[dict[str, str], dict[str, list[str]]]:
    """``(left out, pilot phrasings)``: per edit type the test phrasing the pilot never uses (the
    "unseen phrasings") and the rest of the test family, which the pilot's operators use."""
    phrases = wording(language).phrases
    left_out = {kind: p["test"][-1] for kind, p in phrases.items()}
    return left_out, {kind: [t for t in p["test"] if t != left_out[kind]] for kind, p in phrases.items()}
