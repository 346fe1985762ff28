"""Shapes-CIR: a synthetic composed-retrieval world (in the spirit of CSS / CLEVR).

No machine of this project can download real weights or data, so quality is measured here: a
deterministic generator of scenes (1-3 objects with shape, colour, size and a 3x3 grid position on
a random background), captions for training a tiny CLIP-style foundation, and composed queries
(change colour / shape / size, move, add, remove) with hard negatives. Everything is written in
CIRCO's layout so the official evaluation path runs unchanged.

Rules that keep the benchmark honest:
  * the test queries use modifier phrasings held out from everything the foundation saw;
  * backgrounds are drawn independently for every image (reference, target, negatives) and never
    mentioned in captions, so raw pixel similarity is no shortcut (``pixel_only`` proves it);
  * hard negatives are partial edits of the reference (wrong value, edit not applied, ...);
  * the ground truth of a query is every gallery image showing exactly the target's objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from . import japanese

SHAPES = ("circle", "square", "triangle", "cross", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
SIZES = ("small", "large")
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
BACKGROUNDS = [
    (30, 30, 30),
    (70, 40, 40),
    (40, 70, 40),
    (40, 40, 80),
    (90, 90, 90),
    (60, 60, 20),
    (20, 60, 70),
    (110, 80, 60),
    (130, 130, 150),
    (75, 55, 95),
]

# A visual shift for domain adaptation: another family of backgrounds (pastel, with a gradient and
# diagonal stripes instead of flat dark colours) and another light (dimmer and warmer). Same count
# as BACKGROUNDS, so a shifted world draws exactly the scenes of the standard one.
SHIFTED_BACKGROUNDS = [
    (200, 170, 150),
    (170, 200, 160),
    (160, 180, 210),
    (215, 200, 140),
    (190, 160, 200),
    (150, 200, 200),
    (220, 180, 180),
    (180, 180, 140),
    (200, 200, 200),
    (160, 150, 130),
]
#: Per-channel gain of the shifted world's light.
SHIFTED_LIGHT = (0.92, 0.8, 0.62)
VARIANTS = ("", "shifted")

# Modifier phrasings per edit type. The foundation's edit-style captions use TRAIN phrasings only;
# test queries use TEST phrasings only (held out).
PHRASES = {
    "colour": {
        "train": ["make it {value}", "change the colour to {value}", "{value} instead", "paint it {value}"],
        "test": ["recolour it {value}", "now in {value}", "same but {value}"],
    },
    "shape": {
        "train": ["make it a {value}", "turn it into a {value}", "change the shape to a {value}"],
        "test": ["reshape it as a {value}", "swap it for a {value}"],
    },
    "size": {
        "train": ["make it {value}", "change the size to {value}", "make it {comparative}"],
        "test": ["resize it to {value}", "{comparative} please", "it should be {comparative}"],
    },
    "move": {
        "train": ["move it to the {value}", "put it in the {value}", "place it at the {value}"],
        "test": ["shift it to the {value}", "relocate it to the {value}"],
    },
    "add": {
        "train": ["add a {value}", "also put a {value}", "and a {value}"],
        "test": ["include a {value}", "insert a {value}"],
    },
    "remove": {
        "train": ["remove the {value}", "take away the {value}", "without the {value}"],
        "test": ["delete the {value}", "get rid of the {value}"],
    },
}
COMPARATIVE = {"large": "bigger", "small": "smaller"}
#: The Japanese share of a foundation that barely read Japanese (``bench feedback --language ja``).
LOW_RESOURCE_JAPANESE_FRACTION = 0.05
#: Bumped whenever the generator's output changes for the same config.
WORLD_FORMAT = 2


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int

    def phrase(self, with_position: bool = True) -> str:
        where = f" {_cell_phrase(self.cell)}" if with_position else ""
        return f"{self.size} {self.colour} {self.shape}{where}"


@dataclass
class Scene:
    objects: tuple[Obj, ...]
    background: int

    def key(self) -> tuple:
        """Identity for ground truth: the objects, not the background."""
        return tuple(sorted((o.shape, o.colour, o.size, o.cell) for o in self.objects))


def _cell_phrase(cell: int) -> str:
    name = CELLS[cell]
    if name in ("left", "right"):
        return f"on the {name}"
    if name in ("top", "bottom"):
        return f"at the {name}"
    return f"in the {name}"


def describe(scene: Scene, rng: random.Random) -> str:
    objs = list(scene.objects)
    rng.shuffle(objs)
    parts = [f"a {o.phrase()}" for o in objs]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def render(scene: Scene, size: int = 64, supersample: int = 4, variant: str = "") -> Image.Image:
    """The scene as an image; ``variant="shifted"`` draws it in the shifted world's look."""
    s = size * supersample
    if variant == "shifted":
        img = _shifted_background(scene.background, s)
    else:
        img = Image.new("RGB", (s, s), BACKGROUNDS[scene.background])
    d = ImageDraw.Draw(img)
    cell = s / 3
    for o in scene.objects:
        cx, cy = (o.cell % 3 + 0.5) * cell, (o.cell // 3 + 0.5) * cell
        r = cell * (0.42 if o.size == "large" else 0.22)
        box = (cx - r, cy - r, cx + r, cy + r)
        col = COLOURS[o.colour]
        if o.shape == "circle":
            d.ellipse(box, fill=col)
        elif o.shape == "square":
            d.rectangle(box, fill=col)
        elif o.shape == "triangle":
            d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=col)
        elif o.shape == "diamond":
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=col)
        else:  # cross
            w = r / 2.5
            d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=col)
            d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=col)
    img = img.resize((size, size), Image.LANCZOS)
    if variant == "shifted":
        bands = [b.point(lambda v, g=g: int(v * g)) for b, g in zip(img.split(), SHIFTED_LIGHT, strict=True)]
        img = Image.merge("RGB", bands)
    return img


def _shifted_background(index: int, side: int) -> Image.Image:
    """A vertical gradient of the pastel colour with faint diagonal stripes."""
    base = SHIFTED_BACKGROUNDS[index]
    img = Image.new("RGB", (side, side))
    d = ImageDraw.Draw(img)
    for y in range(side):
        k = 0.75 + 0.25 * y / side
        d.line([(0, y), (side, y)], fill=tuple(int(c * k) for c in base))
    step = max(4, side // 8)
    for x in range(-side, side, step):
        d.line([(x, 0), (x + side, side)], fill=tuple(int(c * 0.85) for c in base), width=max(1, side // 64))
    return img


def random_object(rng: random.Random, taken: set[int]) -> Obj:
    cell = rng.choice([c for c in range(9) if c not in taken])
    return Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES), cell)


def random_scene(rng: random.Random, max_objects: int = 3) -> Scene:
    objs: list[Obj] = []
    for _ in range(rng.randint(1, max_objects)):
        objs.append(random_object(rng, {o.cell for o in objs}))
    return Scene(tuple(objs), rng.randrange(len(BACKGROUNDS)))


def _with(obj: Obj, **change) -> Obj:
    return Obj(**{**asdict(obj), **change})


def _new_bg(rng: random.Random, scene: Scene) -> Scene:
    return Scene(scene.objects, rng.randrange(len(BACKGROUNDS)))


@dataclass(frozen=True)
class Change:
    """What an edit asks for, apart from its wording: the slots a phrasing's template fills.

    ``value`` is the new colour, shape or size, the new cell (move), the added object (add) or the
    removed one (remove); ``edited`` is the object a modifier must name because the scene has several.
    """

    kind: str
    value: str | int | Obj
    edited: Obj | None = None


def modifier_text(change: Change, template: str) -> str:
    """The English modifier for ``change`` in ``template`` (one of :data:`PHRASES`'s)."""
    value = change.value
    if isinstance(value, Obj):
        return template.format(value=value.phrase() if change.kind == "add" else f"{value.colour} {value.shape}")
    if change.kind == "move":
        assert isinstance(value, int)
        text = template.format(value=CELLS[value])
    else:
        assert isinstance(value, str)
        text = template.format(value=value, comparative=COMPARATIVE.get(value, value))
    return f"the {change.edited.colour} {change.edited.shape}: {text}" if change.edited is not None else text


def draw_edit(
    rng: random.Random, ref: Scene, split: str, phrasings: dict[str, list[str]] | None = None
) -> tuple[Change, str, Scene, list[Scene]] | None:
    """Pick an edit of ``ref``: ``(change, English template, target, hard negatives)`` or None if impossible.

    ``phrasings`` (per edit type) replaces the ``split`` phrasings, e.g. a subset of them. The
    wording is kept apart from the change so that another language can write the same edit.
    """
    kinds = ["colour", "shape", "size", "move", "add", "remove"]
    kind = rng.choice(kinds)
    objs = list(ref.objects)
    i = rng.randrange(len(objs))
    o = objs[i]
    edited = o if len(objs) > 1 else None  # multi-object modifiers name the edited object
    taken = {x.cell for x in objs}
    template = rng.choice(phrasings[kind] if phrasings is not None else PHRASES[kind][split])
    negatives: list[Obj | None] = []
    value: str | int
    if kind == "colour":
        value = rng.choice([c for c in COLOURS if c != o.colour])
        new = _with(o, colour=value)
        negatives = [_with(o, colour=c) for c in rng.sample([c for c in COLOURS if c not in (o.colour, value)], 2)]
    elif kind == "shape":
        value = rng.choice([s for s in SHAPES if s != o.shape])
        new = _with(o, shape=value)
        negatives = [_with(o, shape=s) for s in rng.sample([s for s in SHAPES if s not in (o.shape, value)], 2)]
    elif kind == "size":
        value = "small" if o.size == "large" else "large"
        new = _with(o, size=value)
        negatives = [_with(o, colour=rng.choice([c for c in COLOURS if c != o.colour]), size=value)]
    elif kind == "move":
        free = [c for c in range(9) if c not in taken]
        if not free:
            return None
        value = rng.choice(free)
        new = _with(o, cell=value)
        negatives = [_with(o, cell=c) for c in rng.sample([c for c in free if c != value], min(2, len(free) - 1))]
    elif kind == "add":
        if len(objs) >= 3:
            return None
        added = random_object(rng, taken)
        target = Scene(tuple(objs + [added]), rng.randrange(len(BACKGROUNDS)))
        wrong = [
            _with(added, colour=rng.choice([c for c in COLOURS if c != added.colour])),
            _with(added, shape=rng.choice([s for s in SHAPES if s != added.shape])),
        ]
        negs = [Scene(tuple(objs + [w]), rng.randrange(len(BACKGROUNDS))) for w in wrong]
        negs.append(_new_bg(rng, ref))  # edit not applied
        return Change(kind, added), template, target, negs
    else:  # remove
        if edited is None:
            return None
        target = Scene(tuple(x for j, x in enumerate(objs) if j != i), rng.randrange(len(BACKGROUNDS)))
        others = [j for j in range(len(objs)) if j != i]
        negs = [Scene(tuple(x for j, x in enumerate(objs) if j != k), rng.randrange(len(BACKGROUNDS))) for k in others]
        negs.append(_new_bg(rng, ref))
        return Change(kind, o), template, target, negs
    objs_new = objs.copy()
    objs_new[i] = new
    target = Scene(tuple(objs_new), rng.randrange(len(BACKGROUNDS)))
    negs = []
    for n in negatives:
        alt = objs.copy()
        alt[i] = n
        negs.append(Scene(tuple(alt), rng.randrange(len(BACKGROUNDS))))
    negs.append(_new_bg(rng, ref))  # the edit not applied
    return Change(kind, value, edited), template, target, negs


def make_edit(
    rng: random.Random, ref: Scene, split: str, phrasings: dict[str, list[str]] | None = None
) -> tuple[str, str, Scene, list[Scene]] | None:
    """Pick an edit of ``ref``: ``(type, English modifier, target, hard negatives)`` or None if impossible."""
    drawn = draw_edit(rng, ref, split, phrasings)
    if drawn is None:
        return None
    change, template, target, negs = drawn
    return change.kind, modifier_text(change, template), target, negs


@dataclass
class ShapesConfig:
    seed: int = 0
    image_size: int = 64
    train_images: int = 4000
    caption_pairs: int = 20000
    edit_caption_fraction: float = 0.3
    test_queries: int = 500
    distractors: int = 1500
    max_objects: int = 3
    #: "" (the standard world) or "shifted" (other backgrounds and light: a domain shift)
    variant: str = ""
    #: Share of the foundation's captions written in Japanese. Above 0 the world is bilingual: every
    #: test query carries its modifier in both languages (``relative_caption_ja``), and its scenes
    #: and English texts are those of the English-only world of the same seed.
    japanese_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown world variant {self.variant!r}; choose from {VARIANTS}")
        if not 0.0 <= self.japanese_fraction <= 1.0:
            raise ValueError(f"japanese_fraction must be within [0, 1], got {self.japanese_fraction}")

    def key(self) -> str:
        d = asdict(self)
        # worlds made before a setting existed keep their keys while it has its default
        if not d["variant"]:
            del d["variant"]
        if not d["japanese_fraction"]:
            del d["japanese_fraction"]
        return hashlib.blake2b(json.dumps([WORLD_FORMAT, d], sort_keys=True).encode(), digest_size=6).hexdigest()


def generate(out: str | os.PathLike, config: ShapesConfig | None = None) -> Path:
    """Write the world to ``out`` (skipped when the same config was written there before)."""
    config = config or ShapesConfig()
    out = Path(out)
    done = out / "shapes.json"
    if done.is_file() and json.loads(done.read_text()).get("key") == config.key():
        return out
    rng = random.Random(config.seed)
    size = config.image_size

    # 1. unlabeled training images for the query side
    train_dir = out / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    for n in range(config.train_images):
        render(random_scene(rng, config.max_objects), size, variant=config.variant).save(train_dir / f"{n:06d}.png")

    # 2. foundation pretraining pairs: descriptions, plus text-only edit-style descriptions of the
    #    resulting image (language pretraining with TRAIN phrasings only; never CIR training)
    #    A bilingual world writes some captions in Japanese, from a stream of its own, so the
    #    scenes and the English texts stay those of the English-only world.
    cap_dir = out / "foundation"
    cap_dir.mkdir(parents=True, exist_ok=True)
    ja_rng = random.Random(f"japanese-{config.seed}") if config.japanese_fraction > 0 else None
    pairs = []
    for n in range(config.caption_pairs):
        scene = random_scene(rng, config.max_objects)
        caption = describe(scene, rng)
        in_japanese = ja_rng is not None and ja_rng.random() < config.japanese_fraction
        if in_japanese:
            caption = japanese.describe_ja(scene, ja_rng)
        if rng.random() < config.edit_caption_fraction:
            drawn = None
            while drawn is None:
                source = random_scene(rng, config.max_objects)
                drawn = draw_edit(rng, source, "train")
            change, template, scene, _ = drawn
            caption = f"{describe(source, rng)}, {modifier_text(change, template)}"
            if in_japanese:
                assert ja_rng is not None
                text = japanese.modifier_ja(change, ja_rng.choice(japanese.PHRASES_JA[change.kind]["train"]))
                caption = japanese.describe_ja(source, ja_rng) + japanese.CAPTION_JOINER_JA + text
        name = f"{n:06d}.png"
        render(scene, size, variant=config.variant).save(cap_dir / name)
        pairs.append({"image": name, "caption": caption})
    (out / "foundation_captions.json").write_text(json.dumps(pairs, ensure_ascii=False))

    # 3. composed test queries over a gallery with hard negatives, in CIRCO's layout
    caption_rng = random.Random(config.seed + 7919)  # separate stream: captions do not move the scenes
    write_test_split(out, config, rng, caption_rng, ja_rng=ja_rng)
    phrases = {"en": PHRASES, "ja": japanese.PHRASES_JA} if config.japanese_fraction > 0 else PHRASES
    done.write_text(json.dumps({"key": config.key(), "config": asdict(config), "phrases": phrases}, ensure_ascii=False))
    return out


def write_test_split(
    out: Path,
    config: ShapesConfig,
    rng: random.Random,
    caption_rng: random.Random,
    avoid: Collection[tuple] = (),
    ja_rng: random.Random | None = None,
) -> list[dict[str, tuple]]:
    """Composed test queries over a gallery with hard negatives, written in CIRCO's layout.

    Scenes come from ``rng`` and reference / target captions (oracle diagnostics only) from
    ``caption_rng``, so that a world and its replicates differ only in the streams they are given.
    A drawn query whose reference or target has an object set in ``avoid`` (:meth:`Scene.key`) is
    drawn again. With ``ja_rng`` every query's modifier and captions are written in Japanese too
    (``relative_caption_ja``, ``reference_caption_ja``, ``target_caption_ja``), worded from that
    stream. Returns each query's ``ref_objects`` and ``target_objects`` (their keys).
    """
    gallery: list[Scene] = []
    queries = []
    while len(queries) < config.test_queries:
        ref = random_scene(rng, config.max_objects)
        drawn = draw_edit(rng, ref, "test")
        if drawn is None:
            continue
        change, template, target, negs = drawn
        if avoid and (ref.key() in avoid or target.key() in avoid):
            continue
        base = len(gallery)
        gallery.extend([ref, target, *negs])
        query = {
            "id": len(queries),
            "ref": base,
            "target": base + 1,
            "kind": change.kind,
            "text": modifier_text(change, template),
            "ref_caption": describe(ref, caption_rng),
            "target_caption": describe(target, caption_rng),
        }
        if ja_rng is not None:
            query["ja"] = {
                "relative_caption_ja": japanese.modifier_ja(
                    change, ja_rng.choice(japanese.PHRASES_JA[change.kind]["test"])
                ),
                "reference_caption_ja": japanese.describe_ja(ref, ja_rng),
                "target_caption_ja": japanese.describe_ja(target, ja_rng),
            }
        queries.append(query)
    for _ in range(config.distractors):
        gallery.append(random_scene(rng, config.max_objects))
    img_dir = out / "unlabeled2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    by_key: dict[tuple, list[int]] = {}
    images = []
    for gid, scene in enumerate(gallery):
        image_id = 1_000_000 + gid
        name = f"{image_id:012d}.png"
        render(scene, config.image_size, variant=config.variant).save(img_dir / name)
        images.append({"id": image_id, "file_name": name})
        by_key.setdefault(scene.key(), []).append(image_id)
    annotations = []
    for q in queries:
        target_id = 1_000_000 + q["target"]
        ref_id = 1_000_000 + q["ref"]
        gt = [i for i in by_key[gallery[q["target"]].key()] if i != ref_id]
        annotations.append(
            {
                "id": q["id"],
                "reference_img_id": ref_id,
                "target_img_id": target_id,
                "relative_caption": q["text"],
                "shared_concept": q["kind"],
                "gt_img_ids": gt,
                # for oracle diagnostics only (no method sees them)
                "reference_caption": q["ref_caption"],
                "target_caption": q["target_caption"],
                **q.get("ja", {}),
            }
        )
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps({"images": images}))
    (out / "annotations" / "test.json").write_text(json.dumps(annotations, ensure_ascii=False))
    return [{"ref_objects": gallery[q["ref"]].key(), "target_objects": gallery[q["target"]].key()} for q in queries]
