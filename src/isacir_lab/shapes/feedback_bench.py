"""``isacir-lab bench feedback``: does learning from a pilot's operators improve Shapes-CIR?

Reuses a ``bench shapes`` cache (world, foundation, the ISA encoder), then:

1. prepares the pilot: its own split, its own gallery indexed by the frozen image tower, and the
   ISA encoder exported to ONNX for the device side;
2. runs the pilot: every reference photo goes through the ONNX edge runner, its payload to a real
   ``isacir serve`` app over HTTP with an API key, and a simulated operator answers each search;
3. trains query adapters on the first 100, 300 and 1,000 pilot queries' feedback;
4. evaluates the 500 standard test queries (a gallery the pilot never touched) with and without
   each adapter, plus the known-phrasings copy (forgetting) and the test queries in the phrasings
   the pilot left out (what was learned beyond the pilot's own phrases);
5. weighs gains against flips: the final adapter at several interpolations, and two yardsticks
   of how easily top-1 flips on this test at all (a rephrasing, the int4 payload's rounding).
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isacir._fs import atomic_write_text
from isacir.adapt import AdaptSettings
from isacir.bench.machine import cpu_info

from .bench import METRICS, ShapesBenchConfig, cached_isa
from .feedback_goals import feedback_goals
from .phrasing import known_phrasings_copy
from .pilot import LEFT_OUT, PilotConfig, ServiceClient, generate_pilot, simulate_pilot

if TYPE_CHECKING:
    import numpy as np

    from isacir.adapter import QueryAdapter
    from isacir.foundation import Foundation
    from isacir.query import QueryEncoder

    from .world import ShapesConfig

CURVE = (100, 300, 1000)
#: Interpolations of the final adapter at which the gain is weighed against the flips.
TRADEOFF = (0.25, 0.5, 0.75, 1.0)
#: top-1 guard margins tried at the upper interpolations (cosine differences; see isacir.adapter.guard)
GUARD_MARGINS = (0.02, 0.04, 0.06)
GUARD_INTERPOLATIONS = (0.5, 0.75, 1.0)
#: The adapter recipe of the benchmark (chosen on the pilot's own held-out feedback, never on the test set).
BENCH_ADAPT = AdaptSettings()


def prepare_pilot(
    bench_dir: str | Path,
    seed: int = 0,
    pilot: PilotConfig | None = None,
    config: ShapesBenchConfig | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """The pilot's split, gallery and edge model for a ``bench shapes`` cache (each cached).

    Returns the paths a service and a simulator need: ``pilot``, ``gallery``, ``query_encoder``,
    ``edge``, ``foundation``.
    """
    from isacir.export import export_edge
    from isacir.gallery import Gallery

    bench_dir = Path(bench_dir)
    config = config or ShapesBenchConfig(seed=seed)
    pilot = pilot or PilotConfig()
    _, fnd, qe_path, qe = cached_isa(bench_dir, config, log, progress)
    root = bench_dir / "pilots" / pilot.key(config.world)
    split = generate_pilot(root / "split", config.world, pilot)
    edge = root / f"edge-{qe.fingerprint}"
    if not (edge / "edge.json").is_file():
        log(f"pilot: exporting the ISA encoder to ONNX -> {edge}")
        export_edge(qe, edge)
    gallery_dir = root / f"gallery-{fnd.fingerprint}"
    gallery = Gallery.open_or_create(gallery_dir, fnd)
    report = gallery.index([str(split / "gallery")], fnd, progress=progress)
    log(f"pilot gallery {gallery_dir}: {report.summary()}")
    gallery.close()
    paths = {
        "pilot": str(split),
        "gallery": str(gallery_dir),
        "query_encoder": str(qe_path),
        "edge": str(edge),
        "foundation": fnd.name,
    }
    atomic_write_text(root / "pilot-run.json", json.dumps(paths, indent=2))
    return paths


def gallery_ids(gallery_dir: str | Path, split: str | Path) -> dict[str, int]:
    """The served gallery's id of every split image, keyed as the split names them."""
    from isacir.gallery import Gallery

    g = Gallery.open(gallery_dir)
    try:
        root = Path(split).resolve()
        out = {}
        for item in g.items():
            p = Path(item["path"]).resolve()
            if p.is_relative_to(root):
                out[p.relative_to(root).as_posix()] = int(item["id"])
        return out
    finally:
        g.close()


@dataclass(frozen=True)
class FeedbackRun:
    """Which ``bench feedback`` run: the world's seed, and the adapter settings that set a run apart.

    One place names a run's results, its folder and its command-line flags, so that a run with
    another training seed, attention LoRA or the query head never overwrites the run of record, and
    a new variant is one field here rather than a parameter threaded through every caller.
    """

    seed: int
    #: the adapters' training seed; the world's seed when ``None`` (an equal one is stored as ``None``)
    adapt_seed: int | None = None
    lora_attention: bool = False
    query_head: bool = False
    #: adapters trained as soups of this many (1: one adapter)
    soup: int = 1

    def __post_init__(self) -> None:
        if self.adapt_seed == self.seed:
            object.__setattr__(self, "adapt_seed", None)

    @classmethod
    def of(cls, seed: int, settings: AdaptSettings) -> FeedbackRun:
        """The run that ``settings`` train on world ``seed``."""
        return cls(seed, settings.seed, settings.lora_attention, settings.query_head, settings.soup)

    @property
    def suffix(self) -> str:
        return (
            ("" if self.adapt_seed is None else f"-adapt{self.adapt_seed}")
            + ("-attn" if self.lora_attention else "")
            + ("-head" if self.query_head else "")
            + (f"-soup{self.soup}" if self.soup > 1 else "")
        )

    @property
    def stem(self) -> str:
        """The name (without suffix) of the run's results: ``feedback-seed{S}`` and its variant."""
        return f"feedback-seed{self.seed}{self.suffix}"

    @property
    def replicates_stem(self) -> str:
        return f"{self.stem}-replicates"

    def folder(self, out: Path, pilot: PilotConfig, world: ShapesConfig) -> Path:
        """The folder of the run's pilot log and adapters, named apart per variant as its results are."""
        return Path(out) / "feedback" / f"seed{self.seed}-{pilot.key(world)}{self.suffix}"

    def flags(self) -> str:
        """The ``bench`` options that select this variant (empty for the run of record)."""
        return "".join(
            ([f" --adapt-seed {self.adapt_seed}"] if self.adapt_seed is not None else [])
            + ([" --lora-attention"] if self.lora_attention else [])
            + ([" --query-head"] if self.query_head else [])
            + ([f" --soup {self.soup}"] if self.soup > 1 else [])
        )


def run_feedback_bench(
    out: str | Path,
    seed: int = 0,
    pilot: PilotConfig | None = None,
    settings: AdaptSettings | None = None,
    curve: tuple[int, ...] = CURVE,
    k: int = 10,
    config: ShapesBenchConfig | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Pilot, adapters, test evaluation; writes ``feedback-seed{S}.json`` and ``.png`` into ``out``
    (:class:`FeedbackRun`: ``-adapt{A}`` is added when ``settings.seed`` differs from ``seed``,
    ``-attn`` with ``settings.lora_attention`` and ``-head`` with ``settings.query_head``)."""
    import torch

    from isacir.adapt import adapt, tune_adapter
    from isacir.adapter import QueryAdapter
    from isacir.edge.runner import EdgeEncoder
    from isacir.feedback import FeedbackStore
    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.query import QueryEncoder
    from isacir.serve import ServeSettings, ServiceState, create_app
    from isacir.serve.local import LocalServer

    out = Path(out)
    config = config or ShapesBenchConfig(seed=seed)
    pilot = pilot or PilotConfig(queries=max(curve))
    settings = settings or replace(BENCH_ADAPT, seed=seed)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    paths = prepare_pilot(out, seed, pilot, config, log, progress)
    timings["prepare_s"] = time.perf_counter() - t0
    fnd = create_foundation(paths["foundation"])
    qe = QueryEncoder.from_pretrained(paths["query_encoder"], foundation=fnd).eval()

    # the pilot, through the device path and HTTP; a fresh log every run
    run = FeedbackRun.of(seed, settings).folder(out, pilot, config.world)
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    key = secrets.token_hex(16)
    gallery = Gallery.open(paths["gallery"])
    state = ServiceState(
        gallery, fnd, qe, ServeSettings(api_keys=(key,), feedback_db=run / "feedback.sqlite", upload_dir=run / "up")
    )
    t = time.perf_counter()
    with LocalServer(create_app(state)) as server:
        pilot_stats = simulate_pilot(
            paths["pilot"],
            ServiceClient(server.url, key),
            EdgeEncoder(paths["edge"]),
            gallery_ids(paths["gallery"], paths["pilot"]),
            k=k,
            limit=pilot.queries,
            progress=progress,
            log=log,
        )
    timings["pilot_s"] = time.perf_counter() - t
    store = FeedbackStore(run / "feedback.sqlite")

    # the test set: the bench's own queries and gallery, and the two diagnostic views of it
    t = time.perf_counter()
    world = out / "worlds" / config.world.key()
    test = _TestSet(world, fnd, qe, config.template, progress)
    known = _TestSet(
        known_phrasings_copy(world, run / "known-phrasings-world"),
        fnd,
        qe,
        config.template,
        progress,
        gallery_vecs=test.gallery_vecs,
    )
    before, before_rank = test.evaluate(None)
    known_before, known_rank = known.evaluate(None)
    timings["evaluate_before_s"] = time.perf_counter() - t

    results: dict[str, Any] = {"curve": {}}
    adapters: dict[int, QueryAdapter] = {}
    reports: dict[str, Any] = {}
    for n in curve:
        t = time.perf_counter()
        folder = run / f"adapter-{n}"
        torch.manual_seed(settings.seed)
        # the curve judges the recipe on held-out feedback, one adapter per point: a soup is
        # measured where it is served, in the refit and K-fold recipes
        one = replace(settings, max_queries=n, refit=False, folds=0, soup=1)
        report = adapt(gallery, fnd, qe, store, folder, one, progress=progress)
        adapters[n] = QueryAdapter.from_pretrained(folder)
        metrics, _ = test.evaluate(adapters[n])
        results["curve"][str(n)] = metrics
        reports[str(n)] = {f: report[f] for f in ("promotable", "reasons", "holdout", "counts", "fingerprint")}
        timings[f"adapt_{n}_s"] = time.perf_counter() - t
        log(f"after {n} pilot queries: test R@1 {metrics['R@1']} R@10 {metrics['R@10']} (before {before['R@1']})")
    final = adapters[max(curve)]
    after, after_rank = test.evaluate(final)
    known_after, _ = known.evaluate(final)
    unseen = test.subset(lambda a: a["phrasing"] == LEFT_OUT[a["kind"]])
    flip = _flip_rate(test, before_rank, after_rank)
    # yardsticks for the flip rate: the same model and queries, with only the phrasing changed, or
    # with the tokens rounded to the int4 payload (what a slow link would send)
    flip_rephrased = _flip_rate(test, before_rank, known_rank)
    _, int4_rank = test.evaluate(None, token_source=_int4_tokens(qe, fnd))
    tradeoff = {}
    for a in TRADEOFF:
        tradeoff[str(a)] = test.gain_and_flips(
            QueryAdapter.from_pretrained(run / f"adapter-{max(curve)}", interpolation=a), before_rank
        )
    # the top-1 guard: the zero-shot top-1 stays first unless the adapter prefers its own by a margin
    guarded = {}
    for a in GUARD_INTERPOLATIONS:
        for m in GUARD_MARGINS:
            adapter = QueryAdapter.from_pretrained(run / f"adapter-{max(curve)}", interpolation=a, guard_margin=m)
            guarded[f"{a}@{m}"] = {"interpolation": a, "margin": m, **test.gain_and_flips(adapter, before_rank)}
    # what `isacir adapt --tune` would serve: the pair the held-out feedback picks, on the test
    tuned_adapter = QueryAdapter.from_pretrained(run / f"adapter-{max(curve)}")
    tuning = tune_adapter(gallery, fnd, qe, store, tuned_adapter, replace(settings, max_queries=max(curve)))

    def served(adapter: QueryAdapter) -> dict[str, Any]:
        """What an adapter served as it is does on the test: its pair, gains, flips and forgetting."""
        return {
            "interpolation": adapter.interpolation,
            "guard_margin": adapter.guard_margin,
            **test.gain_and_flips(adapter, before_rank),
            "known_phrasings_R@10": known.evaluate(adapter)[0]["R@10"],
        }

    tuned = {**served(tuned_adapter), "held_out": tuning["chosen"], "held_out_before": tuning.get("before")}
    if settings.refit:
        # what `isacir adapt --tune --refit` serves: that recipe and pair, trained on all the feedback
        t = time.perf_counter()
        refit_settings = replace(
            settings,
            max_queries=max(curve),
            holdout=0.0,
            refit=False,
            folds=0,
            interpolation=tuned_adapter.interpolation,
            guard_margin=tuned_adapter.guard_margin,
        )
        adapt(gallery, fnd, qe, store, run / "adapter-refit", refit_settings, progress=progress)
        detail_refit = {**served(QueryAdapter.from_pretrained(run / "adapter-refit")), "trained_on": max(curve)}
        timings["refit_s"] = time.perf_counter() - t
    if settings.folds:
        # what `isacir adapt --tune --folds K` serves: the pair chosen on counts pooled over every
        # pilot query (each answered by an adapter trained without it), trained on all of them
        t = time.perf_counter()
        folds_settings = replace(settings, max_queries=max(curve), tune=True, refit=False)
        cv = adapt(gallery, fnd, qe, store, run / "adapter-folds", folds_settings, progress=progress)
        detail_folds = {
            **served(QueryAdapter.from_pretrained(run / "adapter-folds")),
            "trained_on": max(curve),
            "folds": settings.folds,
            "held_out": cv["tuning"]["chosen"],
            "held_out_before": cv["tuning"]["before"],
            # every pair the pooled folds weighed: how near the runner-up came, and on which grid
            "grid": cv["tuning"]["grid"],
        }
        timings["folds_s"] = time.perf_counter() - t
    gallery.close()
    timings["total_s"] = time.perf_counter() - t0

    oracle = test.oracle(world, config.template)
    summary = {
        "seed": seed,
        "before": before,
        "after": after,
        "curve": results["curve"],
        "known_phrasings": {"before": known_before, "after": known_after},
        "unseen_phrasings": {"before": unseen(before_rank), "after": unseen(after_rank)},
        "flip_rate": flip,
    }
    detail = {
        **summary,
        "goals": check_feedback_goals(summary, oracle),
        "test_queries": len(test.bench.queries),  # turns the rates back into counts (the goals' intervals)
        "cpu": cpu_info(),  # a cache built on another CPU model differs in its last float bits
        "flip_rate_rephrasing_only": flip_rephrased,
        "flip_rate_int4_payload": _flip_rate(test, before_rank, int4_rank),
        "interpolation_tradeoff": tradeoff,
        "guarded_tradeoff": guarded,
        "tuned_on_held_out": tuned,
        **({"tuned_then_refit": detail_refit} if settings.refit else {}),
        **({"tuned_by_folds": detail_folds} if settings.folds else {}),
        "oracle_reference_caption_plus_modifier": oracle,
        "pilot": pilot_stats,
        "adapters": reports,
        "unseen_phrasings_queries": unseen.count,
        "left_out_phrasings": LEFT_OUT,
        "settings": asdict(settings),
        "pilot_config": asdict(pilot),
        "timings": {k_: round(v, 1) for k_, v in timings.items()},
    }
    stem = out / FeedbackRun.of(seed, settings).stem
    atomic_write_text(stem.with_suffix(".json"), json.dumps(detail, indent=2))
    curve_chart(before, results["curve"], stem.with_suffix(".png"), seed, oracle)
    return summary


def run_pilot_versions(
    out: str | Path,
    seed: int = 0,
    pilot: PilotConfig | None = None,
    settings: AdaptSettings | None = None,
    k: int = 10,
    config: ShapesBenchConfig | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """A pilot of two versions: ISA for the first half, ISA + the adapter learned from it for the rest.

    Both halves log into one feedback database, as one service would across a roll-out; the
    pilot report (HTML and CSVs), the per-version chart and the summary land in
    ``out/pilot-versions-seed{S}/``. Returns the per-version summary.
    """
    from isacir.adapt import adapt
    from isacir.adapter import QueryAdapter
    from isacir.edge.runner import EdgeEncoder
    from isacir.feedback import FeedbackStore
    from isacir.foundation import create_foundation
    from isacir.gallery import Gallery
    from isacir.pilot import charts, pilot_summary
    from isacir.pilot.report import write_report
    from isacir.query import QueryEncoder
    from isacir.serve import ServeSettings, ServiceState, create_app
    from isacir.serve.local import LocalServer

    out = Path(out)
    config = config or ShapesBenchConfig(seed=seed)
    pilot = pilot or PilotConfig()
    settings = settings or replace(BENCH_ADAPT, seed=seed)
    paths = prepare_pilot(out, seed, pilot, config, log, progress)
    fnd = create_foundation(paths["foundation"])
    qe = QueryEncoder.from_pretrained(paths["query_encoder"], foundation=fnd).eval()
    run = out / f"pilot-versions-seed{seed}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    db = run / "feedback.sqlite"
    key = secrets.token_hex(16)
    edge = EdgeEncoder(paths["edge"])
    ids = gallery_ids(paths["gallery"], paths["pilot"])
    half = pilot.queries // 2
    gallery = Gallery.open(paths["gallery"])
    halves: list[dict[str, Any]] = []
    adapter: QueryAdapter | None = None
    for part, start in (("first", 0), ("second", half)):
        settings_ = ServeSettings(api_keys=(key,), feedback_db=db, upload_dir=run / "up")
        state = ServiceState(gallery, fnd, qe, settings_, adapter=adapter)
        with LocalServer(create_app(state)) as server:
            stats = simulate_pilot(
                paths["pilot"],
                ServiceClient(server.url, key),
                edge,
                ids,
                k=k,
                start=start,
                limit=half if part == "first" else pilot.queries - half,
                progress=progress,
                log=log,
            )
        state.retriever.close()
        halves.append({"half": part, "version": state.version, **stats})
        if part == "first":
            report = adapt(gallery, fnd, qe, FeedbackStore(db), run / "adapter", settings, progress=progress)
            adapter = QueryAdapter.from_pretrained(run / "adapter")
            halves[-1]["adapter_report"] = {f: report[f] for f in ("promotable", "reasons", "holdout")}
    gallery.close()
    store = FeedbackStore(db)
    queries = list(store.queries())
    summary = pilot_summary(queries, "version", k)
    write_report(queries, run / "report.html", run / "csv")
    atomic_write_text(run / "versions.svg", charts.by_version(queries))
    result = {"seed": seed, "halves": halves, "versions": summary["groups"]}
    atomic_write_text(run / "summary.json", json.dumps(result, indent=2))
    return result


class _TestSet:
    """A Shapes-CIR benchmark with its gallery encoded once, evaluated with or without an adapter."""

    def __init__(
        self, world: Path, fnd: Foundation, qe: QueryEncoder, template: str, progress: bool, gallery_vecs=None
    ):
        from isacir.evaluation.benchmarks import load_shapes
        from isacir.evaluation.evaluate import encode_gallery

        from .bench import _query_kinds

        self.bench, self.fnd, self.qe, self.template = load_shapes(world), fnd, qe, template
        self.kinds = _query_kinds(world)
        bench = self.bench
        self.names = list(bench.gallery)
        self.gallery_vecs = (
            gallery_vecs
            if gallery_vecs is not None
            else encode_gallery(fnd, [bench.gallery[n] for n in self.names], progress=progress)
        )

    def evaluate(
        self, adapter: QueryAdapter | None, token_source: Callable[[list], Any] | None = None
    ) -> tuple[dict[str, float], list[list[str]]]:
        from isacir.evaluation.evaluate import evaluate

        metrics, rankings = evaluate(
            self.bench,
            self.fnd,
            "isa",
            query_encoder=self.qe,
            template=self.template,
            gallery_vecs=self.gallery_vecs,
            progress=False,
            adapter=adapter,
            token_source=token_source,
        )
        return {k: round(metrics[k], 2) for k in METRICS}, rankings

    def scores(self, adapter: QueryAdapter | None) -> np.ndarray:
        """Scores ``[Q, N]`` of the composed queries over :attr:`names`, each query's reference at
        -inf. No top-1 guard: this is what the guard weighs, at the adapter's interpolation."""
        from isacir.evaluation.evaluate import encode_queries
        from isacir.evaluation.metrics import mask_excluded

        bench = self.bench
        queries = encode_queries(
            bench, self.fnd, self.gallery_vecs, self.names, "isa", self.qe, self.template, adapter=adapter
        )
        exclude = [q.reference for q in bench.queries] if bench.exclude_reference else []
        return mask_excluded(queries @ self.gallery_vecs.T, self.names, exclude)

    def gain_and_flips(self, adapter: QueryAdapter, before_rank: list[list[str]]) -> dict[str, Any]:
        """R@1 and R@10 with ``adapter``, and its flip rate against the rankings ``before_rank``."""
        metrics, rank = self.evaluate(adapter)
        return {"R@1": metrics["R@1"], "R@10": metrics["R@10"], "flip_rate": _flip_rate(self, before_rank, rank)}

    def oracle(self, world: Path, template: str) -> dict[str, float] | None:
        """R@K of the zero-shot oracle that reads the reference's true caption (None: no captions)."""
        from .bench import oracle_rows

        metrics, _ = oracle_rows(world, self.bench, self.fnd, self.gallery_vecs, self.names, template)
        return metrics.get("oracle_reference_caption_plus_modifier")

    def subset(self, keep: Callable[[dict], bool]) -> _Subset:
        return _Subset(self, keep)


class _Subset:
    def __init__(self, test: _TestSet, keep: Callable[[dict], bool]):
        from .phrasing import parse_modifier

        self.test = test
        self.index = [
            i
            for i, q in enumerate(test.bench.queries)
            if keep({"kind": test.kinds[q.qid], "phrasing": parse_modifier(test.kinds[q.qid], q.modifiers[0])[1]})
        ]
        self.count = len(self.index)

    def __call__(self, rankings: list[list[str]]) -> dict[str, float]:
        from isacir.evaluation.evaluate import score_benchmark

        sub = replace(self.test.bench, queries=[self.test.bench.queries[i] for i in self.index])
        metrics = score_benchmark(sub, [rankings[i] for i in self.index])
        return {k: round(metrics[k], 2) for k in METRICS}


def _int4_tokens(qe: QueryEncoder, fnd: Foundation) -> Callable[[list], Any]:
    """The encoder's tokens after a round trip through the int4 payload."""
    from .edge_bench import through_payload

    return through_payload(lambda refs: qe.encode_images(refs, foundation=fnd).detach().cpu().numpy(), "int4")


def _flip_rate(test: _TestSet, before: list[list[str]], after: list[list[str]]) -> float | None:
    """Among test queries whose target was at rank 1 before, the share whose target is not after
    (the product's :func:`~isacir.adapter.flip_rate` over the test split's rankings by file)."""
    import numpy as np

    from isacir.adapter import flip_rate

    def top1(ranked: list[list[str]]) -> np.ndarray:
        return np.array(
            [bool(r) and r[0] in q.targets for q, r in zip(test.bench.queries, ranked, strict=True)], dtype=bool
        )

    rate, _, _ = flip_rate(top1(before), top1(after))
    return round(rate, 4) if rate is not None else None


def check_feedback_goals(summary: dict[str, Any], oracle: dict[str, float] | None) -> dict[str, bool]:
    known = summary["known_phrasings"]
    return feedback_goals(
        summary["before"], summary["after"], summary["flip_rate"], known["before"], known["after"], oracle
    )


def curve_chart(
    before: dict[str, float], curve: dict[str, dict], path: Path, seed: int, oracle: dict[str, float] | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0] + [int(n) for n in curve]
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for metric, style in (("R@1", "o-"), ("R@10", "s-")):
        ax.plot(xs, [before[metric]] + [curve[n][metric] for n in curve], style, label=f"test {metric}")
    if oracle is not None:
        ax.axhline(oracle["R@1"], color="grey", ls="--", lw=1, label="R@1 of the oracle: true caption + modifier")
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("pilot queries with operator feedback")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"Shapes-CIR test, learning from a pilot (seed {seed})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
