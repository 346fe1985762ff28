"""``isacir-lab bench shapes``: generate -> foundation -> train each method -> evaluate, every stage cached.

Each stage lands in a folder named by a hash of everything that determines it (world config,
foundation recipe, method recipe), so a rerun with the same settings reuses it and a changed
setting rebuilds only what depends on it. The three trained methods go through the ordinary
trainer on the world's unlabeled ``train/`` images: no stage ever sees a (reference, modifier,
target) triplet.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from isacir._fs import atomic_write_text, replace_dir
from isacir.evaluation.metrics import recall_any_at_k
from isacir.query.methods import get_method
from isacir.training.config import TrainConfig, load_config

from .bench_report import METRICS, bar_chart, check_goals, checklist, language_goals, markdown_table
from .world import ShapesConfig, generate

if TYPE_CHECKING:
    import numpy as np

TRAINING_FREE = ("image_only", "text_only", "image_plus_text", "pixel_only")
#: Result rows of the trained methods. The names are the bench's JSON keys, which dashboards read;
#: each maps to a registered method through :func:`canonical_method` (``isa_symmetric`` is an alias).
TRAINED = ("pic2word", "isa_symmetric", "isa")
METHODS = TRAINING_FREE + TRAINED
# The tiny foundation's language is its captions, which read "<description>, <edit>"; this is the
# world's counterpart of "a photo of {} that {}" for a web-trained CLIP (same for every method).
SHAPES_TEMPLATE = "{} , {}"
#: The same per language: Japanese captions read "<description>、<edit>". Both cut to "{}" for an
#: empty modifier, so one trained encoder serves both.
SHAPES_TEMPLATES = {"en": SHAPES_TEMPLATE, "ja": "{}、{}"}
LANGUAGES = tuple(SHAPES_TEMPLATES)
#: The share of Japanese captions of the bilingual world that ``--language ja|both`` runs on.
BILINGUAL_JAPANESE_FRACTION = 0.5
#: The training preset every trained method shares, so the comparison is like for like.
PRESET = "shapes-cir"
#: Settings that change how a run is carried out, never what it learns: left out of cache keys.
_NOT_IN_KEY = (
    "progress",
    "num_workers",
    "cache_dir",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "stop_after",
)


#: Training settings added after the key derivation of 0.2.0 (left out of keys while unset).
_ADDED_LATER = ("init_from",)


def _key(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def _preset() -> TrainConfig:
    return load_config(PRESET)


#: the demo's budget: a cold ``make demo`` within 10 minutes on 2 cores (see :meth:`ShapesBenchConfig.demo`)
DEMO_FOUNDATION_STEPS = 250
DEMO_ISA_STEPS = 400


@dataclass
class ShapesBenchConfig:
    seed: int = 0
    world: ShapesConfig = field(default_factory=ShapesConfig)
    foundation_steps: int = 600
    foundation_batch: int = 256
    #: How the trained methods train: the ``shapes-cir`` preset; ``method`` and ``seed`` are set per run.
    train: TrainConfig = field(default_factory=_preset)
    methods: tuple[str, ...] = METHODS
    #: The modifiers' languages to evaluate. Japanese needs a bilingual world: asking for it makes
    #: the world bilingual (:data:`BILINGUAL_JAPANESE_FRACTION`) unless it already writes Japanese.
    languages: tuple[str, ...] = ("en",)

    def __post_init__(self) -> None:
        self.world = replace(self.world, seed=self.seed)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        self.languages = tuple(dict.fromkeys(self.languages))
        bad = [lang for lang in self.languages if lang not in LANGUAGES]
        if bad or not self.languages:
            raise ValueError(f"unknown language(s) {bad or 'none'}; choose from {', '.join(LANGUAGES)}")
        if "ja" in self.languages and not self.world.japanese_fraction:
            self.world = replace(self.world, japanese_fraction=BILINGUAL_JAPANESE_FRACTION)

    @property
    def template(self) -> str:
        return self.train.template

    def language_template(self, language: str) -> str:
        """The composition template for modifiers in ``language`` (English: the training template)."""
        return self.template if language == "en" else SHAPES_TEMPLATES[language]

    @property
    def stem(self) -> str:
        """Results file stem: ``results-seed{S}``, with the world's Japanese share where it has one."""
        share = self.world.japanese_fraction
        return f"results-seed{self.seed}" + (f"-ja{round(share * 100)}" if share else "")

    @classmethod
    def small(cls, seed: int = 0) -> ShapesBenchConfig:
        """A scaled-down run for tests: the same pipeline in about two minutes on 2 cores."""
        world = ShapesConfig(train_images=256, caption_pairs=1500, test_queries=60, distractors=100)
        # 200 steps are too few for the tone jitter to pay off: ISA's R@10 on this run is 11.7 with
        # light augmentation and 6.7 with medium (60 queries, chance 2.7), so the small run keeps light.
        train = _preset().replace(
            max_steps=200,
            batch_size=32,
            warmup_steps=10,
            backbone="mobilenetv3_small_050",
            augment="light",
            checkpoint_every=100,
        )
        return cls(seed=seed, world=world, foundation_steps=100, foundation_batch=64, train=train)

    @classmethod
    def demo(cls, seed: int = 0) -> ShapesBenchConfig:
        """The first run a new user makes (``make demo``): the standard world, with a foundation and
        an ISA encoder trained for minutes rather than half an hour on 2 cores. It reaches less
        than the bench's recipe; the demo measures and prints what it reaches."""
        train = _preset().replace(max_steps=DEMO_ISA_STEPS, batch_size=64, warmup_steps=25, checkpoint_every=100)
        return cls(seed=seed, foundation_steps=DEMO_FOUNDATION_STEPS, foundation_batch=256, train=train)

    def foundation_key(self) -> str:
        return _key([self.world.key(), self.foundation_steps, self.foundation_batch, self.seed])

    def train_config(self, method: str) -> TrainConfig:
        """The settings that train result row ``method`` (the shared preset, this seed, that method)."""
        impl = get_method(method)
        return self.train.replace(
            method=impl.name, seed=self.seed, output_stride=self.train.output_stride if impl.has_backbone else None
        )

    def method_key(self, method: str) -> str:
        """Everything that determines the trained model, and nothing a method does not read."""
        skip = set(_NOT_IN_KEY) | set(get_method(method).unused_settings)
        settings = {k: v for k, v in self.train_config(method).to_dict().items() if k not in skip}
        # settings added after 0.2.0 count only when set, so that caches built before them stay valid
        for name in _ADDED_LATER:
            if settings.get(name) is None:
                settings.pop(name, None)
        return _key([self.foundation_key(), settings])


def build_foundation(
    world: Path, out: Path, config: ShapesBenchConfig, log: Callable = print, progress: bool = True
) -> str:
    """The cached tiny foundation for ``config`` (trained once per world and recipe)."""
    from .foundation import ARCH, train_foundation

    folder = out / "foundations" / config.foundation_key()
    if (folder / "open_clip_config.json").is_file():
        log(f"foundation: reusing {folder}")
        return f"openclip:{ARCH}@{folder}"
    tmp = folder.with_name(folder.name + ".partial")
    train_foundation(
        world,
        tmp,
        steps=config.foundation_steps,
        batch_size=config.foundation_batch,
        seed=config.seed,
        progress=progress,
        log=log,
    )
    replace_dir(tmp, folder)
    return f"openclip:{ARCH}@{folder}"


def train_method(
    method: str,
    world: Path,
    foundation,
    out: Path,
    config: ShapesBenchConfig,
    log: Callable = print,
    progress: bool = True,
) -> Path:
    """A trained query encoder for ``method`` (resumes an interrupted run from its checkpoints)."""
    from isacir.training import train

    run = out / "methods" / f"{method}-{config.method_key(method)}"
    final = run / "final"
    if (final / "config.json").is_file():
        log(f"{method}: reusing {final}")
        return final
    tc = config.train_config(method).replace(
        cache_dir=str(out / "teacher-cache" / config.foundation_key()), progress=progress
    )
    train(str(world / "train"), foundation, run, tc, resume=True, log=log)
    return final


def cached_isa(out: Path, config: ShapesBenchConfig, log: Callable = print, progress: bool = True):
    """``(world folder, foundation, ISA encoder folder, ISA encoder)`` of a bench cache (built where missing).

    What the benches that build on ``bench shapes`` start from.
    """
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder

    world = generate(out / "worlds" / config.world.key(), config.world)
    fnd = create_foundation(build_foundation(world, out, config, log, progress))
    path = train_method("isa", world, fnd, out, config, log, progress)
    return world, fnd, path, QueryEncoder.from_pretrained(path, foundation=fnd).eval()


def run_shapes_bench(
    out: str | Path, config: ShapesBenchConfig | None = None, log: Callable = print, progress: bool = True
) -> dict:
    """Run every stage for ``config`` under ``out``; returns ``{"seed", "methods"}`` for the English
    world, ``{"seed", "languages": {lang: {"methods"}}, "language_goals"}`` for a bilingual one.

    Writes ``{stem}.json`` (with per-edit-type recall and timings), ``{stem}.md`` and ``{stem}.png``
    into ``out`` (:attr:`ShapesBenchConfig.stem`: ``results-seed{S}``, ``-ja50`` for the bilingual world).
    """
    import torch

    from isacir.evaluation.benchmarks import load_shapes
    from isacir.evaluation.evaluate import encode_gallery
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder

    config = config or ShapesBenchConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    world = generate(out / "worlds" / config.world.key(), config.world)
    timings["world_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    name = build_foundation(world, out, config, log, progress)
    fnd = create_foundation(name)
    timings["foundation_s"] = time.perf_counter() - t

    encoders = {}
    for method in config.methods:
        if method in TRAINED:
            t = time.perf_counter()
            torch.manual_seed(config.seed)
            path = train_method(method, world, fnd, out, config, log, progress)
            encoders[method] = QueryEncoder.from_pretrained(path, foundation=fnd).eval()
            timings[f"train_{method}_s"] = time.perf_counter() - t

    t = time.perf_counter()
    base_bench = load_shapes(world)
    names = list(base_bench.gallery)
    gallery = encode_gallery(fnd, [base_bench.gallery[n] for n in names], progress=progress)
    per_language = {
        language: evaluate_language(world, base_bench, language, fnd, gallery, names, encoders, config)
        for language in config.languages
    }
    timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    common = {
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "foundation": name,
        "queries": len(base_bench.queries),
        "gallery": len(names),
        "config": asdict(config),
    }
    stem = out / config.stem
    if config.languages == ("en",) and not config.world.japanese_fraction:
        # the English world's record keeps the layout the results pages and dashboards read
        english = per_language["en"]
        summary = {"seed": config.seed, "methods": english["methods"]}
        detail = {**summary, **{k: v for k, v in english.items() if k != "methods"}, **common}
        markdown = markdown_table(
            english["methods"], english["recall_at_1_by_edit"], english["goals"], config.seed,
            english["oracles"], english["modifier_response"],
        )  # fmt: skip
    else:
        languages = {lang: {"methods": r["methods"]} for lang, r in per_language.items()}
        summary = {"seed": config.seed, "languages": languages, "language_goals": language_goals(per_language)}
        detail = {"seed": config.seed, "languages": per_language, "language_goals": summary["language_goals"],
                  "japanese_fraction": config.world.japanese_fraction, **common}  # fmt: skip
        markdown = "\n".join(
            markdown_table(
                r["methods"], r["recall_at_1_by_edit"], r["goals"], config.seed, r["oracles"],
                r["modifier_response"], title=f"Shapes-CIR, seed {config.seed}, modifiers in {LANGUAGE_NAMES[lang]}",
            )
            for lang, r in per_language.items()
        )  # fmt: skip
        if summary["language_goals"]:
            goals = summary["language_goals"]
            markdown += "\nAcross languages:\n\n" + checklist(goals)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(detail, indent=2, ensure_ascii=False))
    atomic_write_text(stem.with_suffix(".md"), markdown)
    bar_chart({f"{m} ({lang})" if len(per_language) > 1 else m: v for lang, r in per_language.items()
               for m, v in r["methods"].items()}, stem.with_suffix(".png"), config.seed)  # fmt: skip
    return summary


LANGUAGE_NAMES = {"en": "English", "ja": "Japanese"}


def in_language(world: Path, bench, language: str):
    """``bench`` with every query's modifier in ``language`` (the world's ``relative_caption_ja``)."""
    from dataclasses import replace as replace_

    if language == "en":
        return bench
    anns = _test_annotations(world)
    field_ = f"relative_caption_{language}"
    if not all(field_ in anns[q.qid] for q in bench.queries):
        raise ValueError(f"this world has no modifiers in {LANGUAGE_NAMES[language]}: generate it bilingual")
    return replace_(bench, queries=[replace_(q, modifiers=[anns[q.qid][field_]]) for q in bench.queries])


def evaluate_language(world: Path, base_bench, language: str, fnd, gallery, names, encoders, config) -> dict:
    """Every method, the oracles and the modifier response with modifiers in ``language``."""
    import torch

    from isacir.evaluation.evaluate import evaluate

    bench = in_language(world, base_bench, language)
    template = config.language_template(language)
    results: dict[str, dict] = {}
    by_kind: dict[str, dict] = {}
    kinds = _query_kinds(world)
    for method in config.methods:
        mode = "isa" if method in TRAINED else method
        metrics, rankings = evaluate(
            bench,
            fnd,
            mode,
            query_encoder=encoders.get(method),
            template=template,
            gallery_vecs=gallery,
            progress=False,
        )
        results[method] = {k: round(metrics[k], 2) for k in METRICS}
        by_kind[method] = _recall_by_kind(bench, rankings, kinds)
    diagnostics, oracle_rankings = oracle_rows(world, bench, fnd, gallery, names, template, language)
    for oracle, rankings in oracle_rankings.items():
        by_kind[oracle] = _recall_by_kind(bench, rankings, kinds)
    response = {}
    if diagnostics:  # the world carries true captions
        anns = _test_annotations(world)
        captions = [anns[q.qid][_caption_field("reference", language)] for q in bench.queries]
        refs = [bench.gallery[q.reference] for q in bench.queries]
        for method, enc in encoders.items():
            with torch.no_grad():
                tokens = torch.cat(
                    [enc.encode_images(refs[i : i + 64], foundation=fnd) for i in range(0, len(refs), 64)]
                )
            resp = modifier_response(fnd, template, tokens, [q.modifiers for q in bench.queries], captions)
            response[method] = summarize_response(resp, [kinds[q.qid] for q in bench.queries])
    return {
        "methods": results,
        "recall_at_1_by_edit": by_kind,
        "oracles": diagnostics,
        "modifier_response": response,
        "goals": check_goals(results),
    }


def _caption_field(which: str, language: str) -> str:
    """``reference_caption`` / ``target_caption``, with the language's suffix outside English."""
    return f"{which}_caption" + ("" if language == "en" else f"_{language}")


def oracle_rows(
    world: Path, bench, fnd, gallery, names: list[str], template: str, language: str = "en"
) -> tuple[dict[str, dict], dict[str, list[list[str]]]]:
    """Upper bounds that read the generator's true captions (diagnostics, never methods).

    ``target_caption``: the text encoder given the target's description, i.e. how well the
    foundation's text and image towers agree. ``reference_caption + modifier``: the composed prompt
    with the reference's true description in the slot, i.e. the best a perfect inversion could do.
    Returns the metrics and the rankings (for the per-edit breakdown), both keyed by oracle.
    """
    import numpy as np
    import torch.nn.functional as F

    from isacir.compose import PromptTemplate
    from isacir.evaluation.evaluate import score_benchmark
    from isacir.evaluation.metrics import rank_gallery

    anns = _test_annotations(world)
    ref_field, target_field = _caption_field("reference", language), _caption_field("target", language)
    if not all(ref_field in anns[q.qid] for q in bench.queries):
        return {}, {}
    tpl = PromptTemplate.parse(template)
    prompts = {
        "oracle_target_caption": [anns[q.qid][target_field] for q in bench.queries],
        "oracle_reference_caption_plus_modifier": [
            tpl.render(anns[q.qid][ref_field], q.modifiers[0]) for q in bench.queries
        ],
    }
    out, ranked = {}, {}
    for name, texts in prompts.items():
        vecs = np.concatenate(
            [
                F.normalize(fnd.encode_text(texts[i : i + 256]).float(), dim=-1).detach().cpu().numpy()
                for i in range(0, len(texts), 256)
            ]
        )
        rankings = rank_gallery(vecs @ gallery.T, names, exclude=[q.reference for q in bench.queries], top=51)
        metrics = score_benchmark(bench, rankings)
        out[name] = {k: round(metrics[k], 2) for k in METRICS}
        ranked[name] = rankings
    return out, ranked


def modifier_response(
    fnd, template: str, slot, modifiers: list, reference_captions: list[str], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """How far a modifier moves a composed query, relative to the reference's true caption.

    Diagnoses why pseudo sentences compose worse than words: for each query, the cosine distance
    between ``slot + modifier`` and ``slot`` alone (``slot`` being pseudo tokens ``[Q, N, D]`` or
    plain texts), the same distance with the true caption in the slot, and the cosine between the
    two shift vectors. Returns ``{"shift", "caption_shift", "direction"}``, each ``[Q]``. Text slots
    read each query's first modifier (Shapes queries have exactly one).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from isacir.compose import PromptTemplate

    tpl = PromptTemplate.parse(template)

    def encode(items, mods):
        if isinstance(items, torch.Tensor):
            return fnd.encode_composed(items, mods, tpl, expected_tokens=items.shape[1])
        texts = (
            [tpl.render(t, m[0] if isinstance(m, (list, tuple)) else m) for t, m in zip(items, mods, strict=True)]
            if mods
            else [tpl.render(t) for t in items]
        )
        return fnd.encode_text(texts)

    parts: dict[str, list] = {"shift": [], "caption_shift": [], "direction": []}
    with torch.no_grad():
        for i in range(0, len(modifiers), batch_size):
            mods = modifiers[i : i + batch_size]
            caps = reference_captions[i : i + batch_size]
            pairs = [
                (F.normalize(encode(x, mods).float(), dim=-1), F.normalize(encode(x, None).float(), dim=-1))
                for x in (slot[i : i + batch_size], caps)
            ]
            (pm, pe), (rm, re_) = pairs
            parts["shift"].append(1 - (pm * pe).sum(-1))
            parts["caption_shift"].append(1 - (rm * re_).sum(-1))
            parts["direction"].append((F.normalize(pm - pe, dim=-1) * F.normalize(rm - re_, dim=-1)).sum(-1))
    return {k: torch.cat(v).cpu().numpy().astype(np.float64) for k, v in parts.items()}


def summarize_response(resp: dict, kinds: list[str]) -> dict[str, dict]:
    """Per edit type (and ``all``): shift ratio (pseudo / caption) and mean shift-direction cosine."""
    out = {}
    for kind in ["all"] + sorted(set(kinds)):
        sel = [i for i, k in enumerate(kinds) if kind in ("all", k)]
        out[kind] = {
            "shift_ratio": round(float(resp["shift"][sel].sum() / resp["caption_shift"][sel].sum()), 3),
            "direction_cos": round(float(resp["direction"][sel].mean()), 3),
        }
    return out


def _test_annotations(world: Path) -> dict[str, dict]:
    """The world's test annotations by query id (as ``CIRBenchmark`` names its queries)."""
    return {str(a["id"]): a for a in json.loads((world / "annotations" / "test.json").read_text())}


def _query_kinds(world: Path) -> dict[str, str]:
    return {qid: a["shared_concept"] for qid, a in _test_annotations(world).items()}


def _recall_by_kind(bench, rankings: list[list[str]], kinds: dict[str, str]) -> dict[str, float]:
    groups: dict[str, tuple[list, list]] = {}
    for q, r in zip(bench.queries, rankings, strict=True):
        ranked, relevant = groups.setdefault(kinds[q.qid], ([], []))
        ranked.append(r)
        relevant.append(set(q.targets))
    return {k: round(recall_any_at_k(ranked, relevant, [1])[1], 1) for k, (ranked, relevant) in sorted(groups.items())}
