"""Shapes-CIR in Japanese: the world's words, descriptions and modifier phrasings.

Operators of the project's customers type changes in Japanese ("同じ形で赤", "取っ手なし"). The
bilingual world writes every caption and modifier it writes in English also in Japanese, from the
same scene and the same edit, so that a query's two languages ask for exactly the same target and
the languages can be compared query by query.

As in English, each edit type has training phrasings (the foundation's edit-style captions) and
held-out test phrasings that nothing trained on. Japanese writes no spaces; descriptions use the
``の`` form throughout ("左上の大きい赤の円"), objects are joined with ``と``, and a modifier that
must name which object it edits puts the object first, as a topic ("赤の円は青にして").
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .world import Change, Obj, Scene

COLOURS_JA = {
    "red": "赤",
    "green": "緑",
    "blue": "青",
    "yellow": "黄色",
    "purple": "紫",
    "orange": "オレンジ",
    "white": "白",
}
SHAPES_JA = {"circle": "円", "square": "四角", "triangle": "三角", "cross": "十字", "diamond": "ひし形"}
SIZES_JA = {"small": "小さい", "large": "大きい"}
COMPARATIVE_JA = {"large": "もっと大きく", "small": "もっと小さく"}
#: The 3x3 grid, in the order of ``world.CELLS``.
CELLS_JA = ("左上", "上", "右上", "左", "中央", "右", "左下", "下", "右下")

# Train phrasings appear in the foundation's captions; test phrasings are held out of everything.
PHRASES_JA = {
    "colour": {
        "train": ["{value}にして", "色を{value}に変えて", "{value}で", "{value}に塗って"],
        "test": ["{value}に塗り替えて", "今度は{value}", "同じ形で{value}"],
    },
    "shape": {
        "train": ["{value}にして", "{value}に変えて", "形を{value}に変えて"],
        "test": ["{value}の形に作り直して", "{value}と取り替えて"],
    },
    "size": {
        "train": ["{value}サイズにして", "大きさを{value}ほうに変えて", "{comparative}して"],
        "test": ["{value}サイズに直して", "{comparative}お願い", "{comparative}したい"],
    },
    "move": {
        "train": ["{value}に移動して", "{value}に置いて", "{value}へ動かして"],
        "test": ["{value}にずらして", "{value}に移して"],
    },
    "add": {
        "train": ["{value}を足して", "{value}も置いて", "{value}も"],
        "test": ["{value}を入れて", "{value}を加えて"],
    },
    "remove": {
        "train": ["{value}を消して", "{value}を取って", "{value}なしで"],
        "test": ["{value}を削除して", "{value}を取り除いて"],
    },
}
#: Joins a description and an edit in the foundation's Japanese captions (the English ones use ", ").
CAPTION_JOINER_JA = "、"


def object_name(obj: Obj) -> str:
    """Colour and shape, how a modifier names an object: ``赤の円``."""
    return f"{COLOURS_JA[obj.colour]}の{SHAPES_JA[obj.shape]}"


def object_phrase(obj: Obj, with_position: bool = True) -> str:
    """``左上の大きい赤の円``: position, size, colour and shape."""
    where = f"{CELLS_JA[obj.cell]}の" if with_position else ""
    return f"{where}{SIZES_JA[obj.size]}{object_name(obj)}"


def describe_ja(scene: Scene, rng: random.Random) -> str:
    """The scene's objects in a random order, joined with ``と``."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    return "と".join(object_phrase(o) for o in objs)


def modifier_ja(change: Change, template: str) -> str:
    """The Japanese modifier for ``change`` in one of :data:`PHRASES_JA`'s templates (what
    ``world.modifier_text`` is for English)."""
    from .world import Obj

    value = change.value
    if isinstance(value, Obj):
        return template.format(value=object_phrase(value) if change.kind == "add" else object_name(value))
    if change.kind == "move":
        assert isinstance(value, int)
        text = template.format(value=CELLS_JA[value])
    else:
        assert isinstance(value, str)
        words = {"colour": COLOURS_JA, "shape": SHAPES_JA, "size": SIZES_JA}[change.kind]
        text = template.format(value=words[value], comparative=COMPARATIVE_JA.get(value, ""))
    return f"{object_name(change.edited)}は{text}" if change.edited is not None else text


def words_ja() -> list[str]:
    """Every Japanese text the world can write a word of (for a vocabulary that covers them all)."""
    texts = [t for kinds in PHRASES_JA.values() for split in kinds.values() for t in split]
    texts += list(COLOURS_JA.values()) + list(SHAPES_JA.values()) + list(SIZES_JA.values())
    texts += list(COMPARATIVE_JA.values()) + list(CELLS_JA) + ["の", "と", "は", CAPTION_JOINER_JA]
    return texts
