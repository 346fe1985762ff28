"""``isacir adapt``: learn a :class:`~isacir.adapter.QueryAdapter` from operator feedback.

The loss is contrastive between the adapted composed query and its positive's stored gallery
vector, with the query's rejected candidates as hard negatives and the other positives of the
batch as in-batch negatives. Against forgetting, unjudged logged queries are distilled toward the
previous behaviour (replay), and the result can be interpolated toward zero-shot. Held-out
feedback measures the adapter before anyone serves it; the report says whether it may be promoted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..adapter import QueryAdapter, new_adapter
from ..adapter.guard import flip_rate, guard_hits
from ..errors import ConfigError, IsacirError
from ..intervals import gain_interval, wilson
from ..progress import progress_bar
from .data import FeedbackData, FeedbackExample, domain_vocabulary, load_feedback, stack_tokens
from .soup import soup

if TYPE_CHECKING:
    from ..feedback import FeedbackStore
    from ..foundation import Foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder

CHECKPOINT_NAME = ".adapt-checkpoint.pt"
#: the refit's own checkpoint: a run killed during the refit resumes it, the judged run being done
REFIT_CHECKPOINT_NAME = ".adapt-refit-checkpoint.pt"
#: one per fold of ``--folds``: a killed run resumes the fold it was in, the done ones load at once
FOLD_CHECKPOINT_NAME = ".adapt-fold{}-checkpoint.pt"
#: Held-out flip rate above which an adapter is not promotable.
MAX_FLIP_RATE = 0.05
#: the serving settings ``--tune`` weighs on held-out feedback: interpolation by top-1 guard margin
TUNE_INTERPOLATIONS = (0.25, 0.5, 0.75, 1.0)
TUNE_MARGINS = (0.0, 0.02, 0.04, 0.06)
#: the guard margins ``--tune --folds`` weighs. The pooled folds count flips on every top-1 hit of
#: the feedback, a few hundred, where one flip moves the rate by under half a point, so they can
#: tell margins 0.01 apart; a held-out fifth's few dozen move it by 2 points a query, and weigh the
#: coarser grid. A soup's gain within the flip limit can sit between two margins 0.02 apart.
FOLD_TUNE_MARGINS = tuple(round(0.01 * i, 2) for i in range(9))
#: Two gallery items whose stored vectors agree this closely are one picture to the system (the
#: same photo indexed twice): no query tells them apart, so either one answers a query that the
#: operator answered with the other, and neither may be the other's negative.
DUPLICATE_COSINE = 1.0 - 1e-5
#: a logit far below any cosine / temperature, for candidates that must not count
_MASKED = -1e4


@dataclass
class AdaptSettings:
    holdout: float = 0.2
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    temperature: float = 0.05
    hidden: int = 256
    #: train the residual token adapter (off: it stays the identity, only the vocabulary learns)
    token_adapter: bool = True
    vocab: bool = True
    vocab_min_count: int = 2
    vocab_max_rows: int = 512
    #: LoRA rank on the text tower's linear layers (0: off, the default until a benchmark shows
    #: it helps) and its alpha (the update is scaled by alpha / rank)
    lora_rank: int = 0
    lora_alpha: float = 8.0
    #: LoRA (at ``lora_rank``) also on the text tower's attention projections
    lora_attention: bool = False
    #: a residual linear map on the composed query (a learned metric on the stored vectors)
    query_head: bool = False
    #: random gallery items per step as extra negatives (drawn from a pool of ``negative_pool``)
    gallery_negatives: int = 1024
    negative_pool: int = 50000
    replay_weight: float = 1.0
    #: also replay training tokens paired with other queries' texts (needed when every query was judged)
    replay_shuffled: bool = True
    weight_decay: float = 0.0
    max_replay: int = 2000
    interpolation: float = 1.0
    #: the previous version's top N on each training query join its negatives (0: off). The
    #: operator saw them and named another item, so they are the near ties that steal first place
    hard_negatives: int = 0
    #: focal distillation (positive-congruent training): keep the previous version's score
    #: distribution over the candidates on queries it answered right at rank 1, with this weight
    #: (0: off), plus ``focal_base`` on every query
    focal_weight: float = 0.0
    focal_base: float = 0.0
    #: the top-1 guard's cosine margin (0: off); see :mod:`isacir.adapter.guard`
    guard_margin: float = 0.0
    #: choose interpolation and guard margin on the held-out feedback (the given ones stand if
    #: no pair is promotable there)
    tune: bool = False
    #: after judging (and with ``tune``, tuning) the recipe on the held-out feedback, train it once
    #: more on every learnable query, held-out ones included, and save that adapter
    refit: bool = False
    #: judge the recipe (and with ``tune``, choose the pair) by K-fold cross-validation instead of
    #: one hold-out: K adapters, each trained without one K-th of the queries, answer that K-th,
    #: and the counts are pooled over every query; the saved adapter is then trained on all of
    #: them, as with ``refit`` (0: off, ``holdout`` judges)
    folds: int = 0
    #: every adapter the recipe trains (the judged ones, the refit, each fold) is the uniform soup
    #: of this many, trained with seeds ``seed``, ``seed + 1``, ... (1: one adapter); see
    #: :mod:`isacir.adapt.soup`. Averaging damps what each learned by chance, which is what flips
    #: earlier first places; it costs this many trainings and nothing at serving time
    soup: int = 1
    #: learn from the oldest N logged queries only (None: all of them)
    max_queries: int | None = None
    save_every: int = 50

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.hidden < 1:
            raise ConfigError("steps, batch size and hidden width must be at least 1")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"--holdout must be within [0, 1), got {self.holdout}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("learning rate and temperature must be positive")
        if not 0.0 <= self.interpolation <= 1.0:
            raise ConfigError(f"--interpolation must be within 0..1, got {self.interpolation}")
        if not 0.0 <= self.guard_margin <= 2.0:
            raise ConfigError(f"--guard-margin must be within 0..2 (a cosine difference), got {self.guard_margin}")
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise ConfigError(f"--lora-rank must be >= 0 and --lora-alpha > 0, got {self.lora_rank}, {self.lora_alpha}")
        if self.lora_attention and not self.lora_rank:
            raise ConfigError("--lora-attention needs --lora-rank above 0")
        if self.replay_weight < 0:
            raise ConfigError("--replay-weight must not be negative")
        if self.hard_negatives < 0 or self.focal_weight < 0 or self.focal_base < 0:
            raise ConfigError(
                f"--hard-negatives, --focal-weight and --focal-base must not be negative, got "
                f"{self.hard_negatives}, {self.focal_weight}, {self.focal_base}"
            )
        if self.soup < 1:
            raise ConfigError(f"--soup must be at least 1 (one adapter), got {self.soup}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ConfigError("--max-queries must be at least 1")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(f"--folds must be 0 (one hold-out) or at least 2, got {self.folds}")
        if self.refit and self.holdout <= 0 and not self.folds:
            raise ConfigError("--refit trains again on the held-out feedback after judging: it needs --holdout > 0")


class ComposedQueries:
    """Composes (adapted) queries in chunks: ``a photo of <tokens> that <text>``."""

    def __init__(self, foundation: Foundation, template: str, num_tokens: int):
        self.foundation, self.template, self.num_tokens = foundation, template, num_tokens

    def __call__(self, tokens: torch.Tensor, texts: Sequence[str], adapter: QueryAdapter | None) -> torch.Tensor:
        if adapter is None:
            return self.foundation.encode_composed(tokens, list(texts), self.template, expected_tokens=self.num_tokens)
        return adapter.compose(self.foundation, tokens, list(texts), self.template, self.num_tokens)

    @torch.no_grad()
    def many(self, examples: list[FeedbackExample], adapter: QueryAdapter | None, chunk: int = 256) -> torch.Tensor:
        parts = [
            self(stack_tokens(examples[i : i + chunk]), [e.text for e in examples[i : i + chunk]], adapter).float()
            for i in range(0, len(examples), chunk)
        ]
        return torch.cat(parts) if parts else torch.zeros(0)


def feedback_metrics(
    compose: ComposedQueries, gallery: Gallery, examples: list[FeedbackExample], adapter: QueryAdapter | None
) -> tuple[dict[str, Any], np.ndarray]:
    """hit@1 / hit@10 of the positives over the whole gallery, and each query's top-1 flag
    (as served: with the adapter's top-1 guard, when it has one)."""
    if not examples:
        return {"n": 0, "hit@1": None, "hit@10": None}, np.zeros(0, dtype=bool)
    queries = compose.many(examples, adapter).numpy()
    hits = gallery.search(queries, 10)
    if adapter is not None and adapter.guard_margin > 0:
        # the anchor is the zero-shot search's first place at the same depth, so that exact ties
        # break as they would for the zero-shot service
        anchors = gallery.search(compose.many(examples, None).numpy(), 10)
        hits = [
            guard_hits(gallery, h, q, a[0] if a else None, adapter.guard_margin)
            for h, q, a in zip(hits, queries, anchors, strict=True)
        ]
    same = _duplicates(gallery, hits, examples)
    top1 = np.array([bool(h) and h[0].id in s for h, s in zip(hits, same, strict=True)])
    top10 = np.array([any(x.id in s for x in h) for h, s in zip(hits, same, strict=True)])
    return {"n": len(examples), "hit@1": float(top1.mean()), "hit@10": float(top10.mean())}, top1


def _duplicates(gallery: Gallery, hits: list[list[Any]], examples: list[FeedbackExample]) -> list[set[int]]:
    """Per example, its positive and the hits that are the same picture (see :data:`DUPLICATE_COSINE`)."""
    ids = sorted({h.id for row in hits for h in row} | {e.positive for e in examples if e.positive is not None})
    vid, vecs = gallery.vectors(ids)
    vec = {int(i): v for i, v in zip(vid.tolist(), np.asarray(vecs, dtype=np.float32), strict=True)}
    out: list[set[int]] = []
    for row, e in zip(hits, examples, strict=True):
        if e.positive is None:
            out.append(set())
            continue
        p = vec.get(e.positive)
        twins = {h.id for h in row if p is not None and h.id in vec and float(vec[h.id] @ p) >= DUPLICATE_COSINE}
        out.append({e.positive} | twins)
    return out


def tune_serving(
    compose: ComposedQueries,
    gallery: Gallery,
    held: list[FeedbackExample],
    adapter: QueryAdapter,
    previous: QueryAdapter | None = None,
) -> dict[str, Any]:
    """Weigh every interpolation and top-1 guard margin of the grid on held-out feedback, and set
    ``adapter`` to the best promotable pair: the highest hit@1, no lower than before, with a flip
    rate within :data:`MAX_FLIP_RATE` (ties: fewer flips, then higher hit@10). Without one, the
    adapter keeps its settings. Returns the grid and the choice.

    The held-out report computed afterwards judges the chosen pair on the same queries that chose
    it, so it flatters the choice; the grid is recorded whole so that a reader can see by how much.
    """
    if not held:
        return {"grid": [], "chosen": None, "reason": "no held-out feedback to tune on"}
    before, top1_before = feedback_metrics(compose, gallery, held, previous)
    kept = (adapter.interpolation, adapter.guard_margin)
    grid = []
    for (a, m), metrics, top1 in _served_pairs(compose, gallery, held, adapter, _tune_pairs()):
        rate, lost, _ = flip_rate(top1_before, top1)
        grid.append({"interpolation": a, "guard_margin": m, **metrics, "flip_rate": rate, "flips": lost})
    chosen = _choose(grid, before["hit@1"])
    a, m = (chosen["interpolation"], chosen["guard_margin"]) if chosen else kept
    adapter.set_interpolation(a)
    adapter.set_guard_margin(m)
    out: dict[str, Any] = {"before": before, "grid": grid, "chosen": chosen}
    if chosen is None:
        out["reason"] = "no pair keeps held-out hit@1 with a flip rate within the limit; the given settings stand"
    return out


def _tune_pairs(folds: bool = False) -> list[tuple[float, float]]:
    """The (interpolation, guard margin) grid that ``--tune`` weighs (with ``folds``, on pooled folds)."""
    return [(a, m) for a in TUNE_INTERPOLATIONS for m in (FOLD_TUNE_MARGINS if folds else TUNE_MARGINS)]


def _served_pairs(
    compose: ComposedQueries,
    gallery: Gallery,
    held: list[FeedbackExample],
    adapter: QueryAdapter,
    pairs: Sequence[tuple[float, float]],
) -> Iterator[tuple[tuple[float, float], dict[str, Any], np.ndarray]]:
    """``adapter`` served at each (interpolation, guard margin) pair on ``held``: the pair, its
    :func:`feedback_metrics` and top-1 flags. The adapter is left at the last pair."""
    for a, m in pairs:
        adapter.set_interpolation(a)
        adapter.set_guard_margin(m)
        metrics, top1 = feedback_metrics(compose, gallery, held, adapter)
        yield (a, m), metrics, top1


def _choose(grid: list[dict[str, Any]], hit1_before: float) -> dict[str, Any] | None:
    """The best promotable pair of a tuning grid: the highest hit@1, no lower than before, with a
    flip rate within :data:`MAX_FLIP_RATE` (ties: fewer flips, then higher hit@10)."""
    ok = [g for g in grid if g["hit@1"] >= hit1_before and (g["flip_rate"] is None or g["flip_rate"] <= MAX_FLIP_RATE)]
    return max(ok, key=lambda g: (g["hit@1"], -(g["flip_rate"] or 0.0), g["hit@10"])) if ok else None


def tune_adapter(
    gallery: Gallery,
    foundation: Foundation,
    query_encoder: QueryEncoder,
    store: FeedbackStore,
    adapter: QueryAdapter,
    settings: AdaptSettings,
    previous: QueryAdapter | None = None,
) -> dict[str, Any]:
    """:func:`tune_serving` for a trained adapter, on the held-out split that ``settings`` (its
    training settings) gave: the same log, seed and share give the same held-out queries."""
    adapter.check(query_encoder.fingerprint, foundation.fingerprint)
    data = load_feedback(
        store,
        query_encoder.fingerprint,
        query_encoder.num_tokens,
        foundation.word_dim,
        gallery,
        0,
        settings.seed,
        settings.max_queries,
    )
    _, held = data.split(settings.holdout, settings.seed)
    compose = ComposedQueries(foundation, query_encoder.config.template, query_encoder.num_tokens)
    return tune_serving(compose, gallery, held, adapter, previous)


def _setup_key(settings: AdaptSettings, train: list[FeedbackExample], qe_fp: str, previous: str | None) -> str:
    """What a checkpoint must agree with to be resumed (settings that change the run, and the data)."""
    s = asdict(settings)
    s.pop("save_every")
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([s, qe_fp, previous, [t.query_id for t in train]], sort_keys=True).encode())
    return h.hexdigest()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def adapt(
    gallery: Gallery,
    foundation: Foundation,
    query_encoder: QueryEncoder,
    store: FeedbackStore,
    out: str | os.PathLike,
    settings: AdaptSettings | None = None,
    previous: QueryAdapter | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate on held-out feedback, and save the adapter folder; returns the report.

    With ``settings.refit``, the recipe judged on the held-out queries (and tuned there, with
    ``settings.tune``) is trained once more on every learnable query, held-out ones included, and
    that adapter is saved: the report's held-out numbers then describe the recipe, not weights that
    never saw those queries.
    """
    settings = settings or AdaptSettings()
    settings.check()
    t_start = time.perf_counter()
    gallery.check_foundation(foundation)
    query_encoder.check_foundation(foundation)
    qe_fp = query_encoder.fingerprint
    if previous is not None:
        previous.check(qe_fp, foundation.fingerprint)
    data: FeedbackData = load_feedback(
        store,
        qe_fp,
        query_encoder.num_tokens,
        foundation.word_dim,
        gallery,
        settings.max_replay,
        settings.seed,
        settings.max_queries,
    )
    train, held = data.split(settings.holdout, settings.seed)
    if not train:
        raise IsacirError(
            f"no feedback to learn from: {len(data.triplets)} learnable queries of this query encoder "
            f"({qe_fp}) in the log, {len(train)} left for training after the hold-out; skipped: "
            f"{dict(data.skipped) or 'none'}"
        )
    if settings.refit and not held:
        raise ConfigError(
            f"--refit needs held-out feedback to judge the recipe first: --holdout {settings.holdout} of "
            f"{len(data.triplets)} learnable queries holds none out"
        )
    if settings.folds and len(data.triplets) < settings.folds:
        raise ConfigError(
            f"--folds {settings.folds} needs at least {settings.folds} learnable queries; "
            f"the log has {len(data.triplets)}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    compose = ComposedQueries(foundation, query_encoder.config.template, query_encoder.num_tokens)
    fit = _Fit(gallery, foundation, qe_fp, compose, data, settings, previous, progress)
    if settings.folds:
        adapter, report = _adapt_by_folds(fit, compose, gallery, data, settings, previous, out)
        return _save(adapter, report, out, settings, t_start)
    adapter, losses = fit(train, out / CHECKPOINT_NAME)
    adapter.set_interpolation(settings.interpolation)
    adapter.set_guard_margin(settings.guard_margin)
    tuning = tune_serving(compose, gallery, held, adapter, previous) if settings.tune else None

    report = _report(compose, gallery, train, held, adapter, previous, data, settings, losses)
    if tuning is not None:
        report["tuning"] = tuning
    if settings.refit:
        everything = list(data.triplets)  # in log order: what --holdout 0 would train on
        final, refit_losses = fit(everything, out / REFIT_CHECKPOINT_NAME, desc="refit")
        final.set_interpolation(adapter.interpolation)
        final.set_guard_margin(adapter.guard_margin)
        report["refit"] = {
            "judged_by_holdout": "the recipe: the saved adapter was trained again on every query, held-out ones too",
            "train": len(everything),
            "vocab_rows": len(final.config.vocab_ids),
            "judged_adapter": adapter.fingerprint,
            "train_after": feedback_metrics(compose, gallery, everything, final)[0],
            "loss": {"first": refit_losses[0], "last": refit_losses[-1]},
        }
        report["counts"] = {**report["counts"], "refit": len(everything), "vocab_rows": len(final.config.vocab_ids)}
        adapter = final
    return _save(adapter, report, out, settings, t_start)


def _save(
    adapter: QueryAdapter, report: dict[str, Any], out: Path, settings: AdaptSettings, t_start: float
) -> dict[str, Any]:
    """Record the run in the adapter and write its folder; the report gains the adapter's version."""
    report["took_s"] = round(time.perf_counter() - t_start, 2)
    adapter.config.training = {"settings": asdict(settings), "counts": report["counts"]}
    adapter.save_pretrained(out, report)  # replaces the folder, checkpoints included: the run is done
    report["fingerprint"] = adapter.fingerprint
    return report


def _adapt_by_folds(
    fit: _Fit,
    compose: ComposedQueries,
    gallery: Gallery,
    data: FeedbackData,
    settings: AdaptSettings,
    previous: QueryAdapter | None,
    out: Path,
) -> tuple[QueryAdapter, dict[str, Any]]:
    """``--folds K``: every learnable query answered once by an adapter trained without it, the
    counts pooled over all of them to judge the recipe (and with ``--tune``, to choose the pair),
    then the recipe trained on every query.

    One hold-out of a fifth judges flips on a few dozen top-1 hits, where one query moves the rate
    by 2 points and each fifth may choose another pair; pooled folds judge on all of them, for K
    more trainings."""
    k = settings.folds
    given = (settings.interpolation, settings.guard_margin)
    tuned = _tune_pairs(folds=True) if settings.tune else []
    pairs = tuned + ([given] if given not in tuned else [])
    before = {"n": 0, "hit@1": 0, "hit@10": 0}  # hit@1 counts the top-1 hits that can flip
    cells = {pair: {"hit@1": 0, "hit@10": 0, "lost": 0, "gained": 0} for pair in pairs}
    sizes = []
    for f, (train, held) in enumerate(data.folds(k, settings.seed)):
        adapter, _ = fit(train, out / FOLD_CHECKPOINT_NAME.format(f), desc=f"fold {f + 1}/{k}")
        metrics, top1_before = feedback_metrics(compose, gallery, held, previous)
        n = len(held)
        sizes.append({"train": len(train), "holdout": n})
        before["n"] += n
        before["hit@1"] += int(top1_before.sum())
        before["hit@10"] += round(metrics["hit@10"] * n)
        for pair, metrics, top1 in _served_pairs(compose, gallery, held, adapter, pairs):
            cell = cells[pair]
            cell["hit@1"] += int(top1.sum())
            cell["hit@10"] += round(metrics["hit@10"] * n)
            cell["lost"] += int((top1_before & ~top1).sum())
            cell["gained"] += int((top1 & ~top1_before).sum())
    total, had = before["n"], before["hit@1"]

    def pooled(pair: tuple[float, float]) -> dict[str, Any]:
        c = cells[pair]
        return {
            "interpolation": pair[0],
            "guard_margin": pair[1],
            "n": total,
            "hit@1": c["hit@1"] / total,
            "hit@10": c["hit@10"] / total,
            "flip_rate": c["lost"] / had if had else None,
            "flips": c["lost"],
            "gained": c["gained"],
        }

    held_before = {"n": total, "hit@1": before["hit@1"] / total, "hit@10": before["hit@10"] / total}
    tuning: dict[str, Any] | None = None
    pair = given
    if settings.tune:
        grid = [pooled(p) for p in tuned]
        chosen = _choose(grid, held_before["hit@1"])
        tuning = {"before": held_before, "grid": grid, "chosen": chosen, "folds": k}
        if chosen is None:
            tuning["reason"] = "no pair keeps pooled hit@1 with a flip rate within the limit; the given settings stand"
        else:
            pair = (chosen["interpolation"], chosen["guard_margin"])
    served = pooled(pair)

    everything = list(data.triplets)  # in log order: what --holdout 0 would train on
    final, losses = fit(everything, out / REFIT_CHECKPOINT_NAME, desc="refit")
    final.set_interpolation(pair[0])
    final.set_guard_margin(pair[1])
    held_after = {"n": total, "hit@1": served["hit@1"], "hit@10": served["hit@10"]}
    report: dict[str, Any] = {
        **_judgement(held_before, held_after, served["flips"], had, served["gained"], previous),
        "cross_validation": {
            "folds": k,
            "judged": "the recipe: each query answered once by an adapter trained without it; the saved "
            "adapter was trained on all of them",
            "sizes": sizes,
        },
        "train": {
            "before": feedback_metrics(compose, gallery, everything, previous)[0],
            "after": feedback_metrics(compose, gallery, everything, final)[0],
        },
        "counts": {
            "train": len(everything),
            "holdout": total,
            "folds": k,
            "replay": len(data.replay),
            "vocab_rows": len(final.config.vocab_ids),
            "lora_layers": len(final.config.lora_targets),
            "lora_attention": len(final.config.lora_attention),
            "query_head": final.config.query_head,
            "soup": settings.soup,
            "skipped": dict(data.skipped),
        },
        "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
        "settings": asdict(settings),
    }
    if tuning is not None:
        report["tuning"] = tuning
    return final, report


class _Fit:
    """One training run of the recipe on a list of feedback queries, resumable from its checkpoint.

    A class so that a refit trains exactly as the judged run did, on more queries: the settings,
    the replay set, the previous version and the composer are fixed here once.
    """

    def __init__(
        self,
        gallery: Gallery,
        foundation: Foundation,
        qe_fp: str,
        compose: ComposedQueries,
        data: FeedbackData,
        settings: AdaptSettings,
        previous: QueryAdapter | None,
        progress: bool,
    ):
        self.gallery, self.foundation, self.qe_fp, self.compose = gallery, foundation, qe_fp, compose
        self.data, self.settings, self.previous, self.progress = data, settings, previous, progress
        self._replay_targets: torch.Tensor | None = None

    def replay_targets(self) -> torch.Tensor | None:
        if self._replay_targets is None and self.data.replay and self.settings.replay_weight > 0:
            self._replay_targets = self.compose.many(self.data.replay, self.previous)
        return self._replay_targets

    def __call__(
        self, train: list[FeedbackExample], ckpt_path: Path, desc: str = "adapt"
    ) -> tuple[QueryAdapter, list[float]]:
        """The recipe's adapter on ``train``: one, or the soup of ``settings.soup`` members (each
        resumable from a checkpoint of its own; the losses are their mean per step)."""
        k = self.settings.soup
        if k == 1:
            return self._one(train, ckpt_path, desc, self.settings)
        members, losses = [], []
        for i in range(k):
            # a member is the single adapter its seed trains: member 0 is the run without --soup
            one = replace(self.settings, soup=1, seed=self.settings.seed + i)
            path = ckpt_path.with_name(f"{ckpt_path.stem}-member{i}{ckpt_path.suffix}")
            adapter, member_losses = self._one(train, path, f"{desc} {i + 1}/{k}", one)
            members.append(adapter)
            losses.append(member_losses)
        return soup(members), [round(sum(step) / k, 6) for step in zip(*losses, strict=True)]

    def _one(
        self, train: list[FeedbackExample], ckpt_path: Path, desc: str, settings: AdaptSettings
    ) -> tuple[QueryAdapter, list[float]]:
        gallery, compose, previous = self.gallery, self.compose, self.previous
        ids, words = (
            domain_vocabulary(
                [t.text for t in train], self.foundation.tokenizer, settings.vocab_min_count, settings.vocab_max_rows
            )
            if settings.vocab
            else ([], [])
        )
        adapter = new_adapter(
            self.foundation,
            self.qe_fp,
            compose.num_tokens,
            compose.template,
            ids,
            words,
            settings.hidden,
            settings.seed,
            lora_rank=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            query_head=settings.query_head,
            lora_attention=settings.lora_attention,
        )

        # stored vectors, read once and never re-encoded: the positives, the rejected candidates,
        # and a pool of random gallery items standing for "everything else" the query must not
        # drift to
        pool_ids = gallery.ids()
        if len(pool_ids) > settings.negative_pool:
            pool_ids = np.sort(
                np.random.default_rng(settings.seed).choice(pool_ids, settings.negative_pool, replace=False)
            )
        needed = {t.positive for t in train if t.positive is not None} | {r for t in train for r in t.rejected}
        if settings.gallery_negatives > 0:
            needed |= set(pool_ids.tolist())
        before = _previous_view(compose, gallery, train, previous, settings)
        needed |= {i for top in before.top for i in top}
        vid, vecs = gallery.vectors(sorted(needed))
        bank = Bank(vid, vecs)
        pool = torch.from_numpy(np.array([bank.row[int(i)] for i in pool_ids if int(i) in bank.row], dtype=np.int64))
        replay_targets = self.replay_targets()

        if not settings.token_adapter:
            adapter.tokens.requires_grad_(False)
        trainable = [p for p in adapter.parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError(
                "nothing to train: the token adapter is off, the vocabulary is empty or off, and LoRA is off"
            )
        optim = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
        key = _setup_key(settings, train, self.qe_fp, previous.fingerprint if previous is not None else None)
        step, losses = 0, []
        if ckpt_path.is_file():
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            if state.get("key") == key:
                adapter.load_state_dict(state["adapter"])
                optim.load_state_dict(state["optim"])
                step, losses = int(state["step"]), list(state["losses"])

        adapter.train()
        bar = progress_bar(total=settings.steps, initial=step, desc=desc, unit="step", disable=not self.progress)
        while step < settings.steps:
            g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
            picked = torch.randperm(len(train), generator=g)[: settings.batch_size].tolist()
            batch = [train[i] for i in picked]
            extra = pool[torch.randperm(len(pool), generator=g)[: settings.gallery_negatives]] if len(pool) else None
            loss = _contrastive_loss(compose, adapter, batch, bank, extra, settings, before, picked)
            if settings.replay_weight > 0:
                loss = loss + settings.replay_weight * _replay_loss(
                    compose, adapter, previous, self.data.replay, replay_targets, train, settings, g
                )
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            step += 1
            value = float(loss.detach())
            losses.append(round(value, 6))
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if step % settings.save_every == 0 or step == settings.steps:
                state = {"key": key, "step": step, "losses": losses}
                _save_checkpoint(ckpt_path, {**state, "adapter": adapter.state_dict(), "optim": optim.state_dict()})
        bar.close()
        adapter.eval()
        return adapter, losses


class Bank:
    """Stored gallery vectors by row, with the row of every id."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        self.vectors = torch.from_numpy(np.array(vectors, dtype=np.float32))
        self.row = {int(i): r for r, i in enumerate(ids.tolist())}


@dataclass
class PreviousView:
    """How the previous version (zero-shot without one) answered each training query: its composed
    query, its top ids over the whole gallery, and whether its first place was the positive."""

    queries: torch.Tensor | None
    top: list[list[int]]
    right: torch.Tensor


def _previous_view(
    compose: ComposedQueries,
    gallery: Gallery,
    train: list[FeedbackExample],
    previous: QueryAdapter | None,
    settings: AdaptSettings,
) -> PreviousView:
    """Computed once: the previous version is frozen, so its answers do not change during training."""
    if not (settings.hard_negatives or settings.focal_weight or settings.focal_base):
        return PreviousView(None, [[] for _ in train], torch.zeros(len(train)))
    queries = compose.many(train, previous)
    hits = gallery.search(queries.numpy(), max(1, settings.hard_negatives))
    top = [[h.id for h in row] for row in hits]
    same = _duplicates(gallery, hits, train)
    right = torch.tensor([float(bool(t) and t[0] in s) for t, s in zip(top, same, strict=True)])
    return PreviousView(queries, [t[: settings.hard_negatives] for t in top], right)


def _contrastive_loss(
    compose: ComposedQueries,
    adapter: QueryAdapter,
    batch: list[FeedbackExample],
    bank: Bank,
    extra_rows: torch.Tensor | None,
    settings: AdaptSettings,
    before: PreviousView,
    picked: list[int],
) -> torch.Tensor:
    """Softmax over the batch's positives, its rejected candidates, the previous version's top
    places and random gallery items; plus focal distillation toward the previous version.

    Every column is a distinct gallery item, so a query's positive is never also its negative.
    """
    rows: dict[int, int] = {}
    for e, i_ in zip(batch, picked, strict=True):
        for i in (e.positive, *e.rejected, *before.top[i_]):
            if i is not None and i in bank.row:
                rows.setdefault(bank.row[i], len(rows))
    if extra_rows is not None:
        for r in extra_rows.tolist():
            rows.setdefault(r, len(rows))
    cand = bank.vectors[torch.tensor(list(rows))]
    q = compose(stack_tokens(batch), [e.text for e in batch], adapter).float()
    labels = torch.tensor([rows[bank.row[e.positive]] for e in batch if e.positive is not None])
    # a duplicate of a query's positive is not its negative: it does not count for that query
    twins = cand[labels] @ cand.T >= DUPLICATE_COSINE
    twins[torch.arange(len(labels)), labels] = False
    logits = (q @ cand.T / settings.temperature).masked_fill(twins, _MASKED)
    loss = F.cross_entropy(logits, labels)
    if before.queries is not None and (settings.focal_weight or settings.focal_base):
        old_logits = (before.queries[picked] @ cand.T / settings.temperature).masked_fill(twins, _MASKED)
        old = F.softmax(old_logits, dim=-1)
        kl = F.kl_div(F.log_softmax(logits, dim=-1), old, reduction="none").sum(-1)
        weight = settings.focal_base + settings.focal_weight * before.right[picked]
        loss = loss + (weight * kl).mean()
    return loss


def _replay_loss(
    compose: ComposedQueries,
    adapter: QueryAdapter,
    previous: QueryAdapter | None,
    replay: list[FeedbackExample],
    replay_targets: torch.Tensor | None,
    train: list[FeedbackExample],
    settings: AdaptSettings,
    g: torch.Generator,
) -> torch.Tensor:
    """Cosine distillation toward the previous behaviour on queries the feedback does not cover.

    Logged queries without a verdict come first; training tokens paired with another query's text
    add compositions that no operator judged (a pilot where every query got a verdict has no
    unjudged queries at all).
    """
    parts: list[torch.Tensor] = []
    half = max(1, settings.batch_size // 2)
    if replay_targets is not None and replay:
        pick = torch.randperm(len(replay), generator=g)[:half].tolist()
        q = compose(stack_tokens([replay[i] for i in pick]), [replay[i].text for i in pick], adapter).float()
        parts.append(1 - (q * replay_targets[pick]).sum(-1))
    if settings.replay_shuffled and len(train) > 1:
        a = torch.randperm(len(train), generator=g)[:half].tolist()
        b = torch.randint(1, len(train), (len(a),), generator=g).tolist()
        tokens = stack_tokens([train[i] for i in a])
        texts = [train[(i + s) % len(train)].text for i, s in zip(a, b, strict=True)]
        with torch.no_grad():
            target = compose(tokens, texts, previous).float()
        parts.append(1 - (compose(tokens, texts, adapter).float() * target).sum(-1))
    return torch.cat(parts).mean() if parts else torch.zeros(())


def _judgement(
    held_before: dict[str, Any],
    held_after: dict[str, Any],
    lost: int,
    had: int,
    gained: int,
    previous: QueryAdapter | None,
) -> dict[str, Any]:
    """The report's verdict and its held-out block, from the held-out counts: ``had`` queries right
    at rank 1 before, ``lost`` of them no longer, ``gained`` right only after."""
    rate = lost / had if had else None
    reasons = _reasons(held_before, held_after, rate)
    return {
        "promotable": not reasons,
        "reasons": reasons,
        "before": "previous adapter " + previous.fingerprint if previous is not None else "zero-shot (no adapter)",
        "holdout": {
            "before": held_before,
            "after": held_after,
            "flip_rate": rate,
            "flips": lost,
            "top1_before": had,
            "gained": gained,
            "intervals": _held_out_intervals(gained, lost, had, held_after["n"]),
        },
    }


def _reasons(held_before: dict[str, Any], held_after: dict[str, Any], rate: float | None) -> list[str]:
    """Why an adapter may not be promoted, from its held-out numbers (none: it may)."""
    if not held_after["n"]:
        return ["no held-out feedback to judge it by (raise --holdout or gather more feedback)"]
    reasons = []
    if held_after["hit@1"] < held_before["hit@1"]:
        reasons.append(f"held-out hit@1 dropped ({held_before['hit@1']:.3f} -> {held_after['hit@1']:.3f})")
    if rate is not None and rate > MAX_FLIP_RATE:
        reasons.append(f"held-out flip rate {rate:.3f} exceeds {MAX_FLIP_RATE:.2f}")
    return reasons


def _held_out_intervals(gained: int, lost: int, had: int, n: int) -> dict[str, list[float] | None]:
    """95 % intervals of the held-out hit@1 change and flip rate: a few dozen held-out queries
    decide promotability, and these say how far their sampling alone could move the verdict."""
    return {
        "hit@1_change": list(gain_interval(gained, lost, n)) if n else None,
        "flip_rate": list(wilson(lost, had) or ()) or None,
    }


def _report(
    compose: ComposedQueries,
    gallery: Gallery,
    train: list[FeedbackExample],
    held: list[FeedbackExample],
    adapter: QueryAdapter,
    previous: QueryAdapter | None,
    data: FeedbackData,
    settings: AdaptSettings,
    losses: list[float],
) -> dict[str, Any]:
    held_before, top1_before = feedback_metrics(compose, gallery, held, previous)
    held_after, top1_after = feedback_metrics(compose, gallery, held, adapter)
    train_before, _ = feedback_metrics(compose, gallery, train, previous)
    train_after, _ = feedback_metrics(compose, gallery, train, adapter)
    _, lost, had = flip_rate(top1_before, top1_after)
    gained = int((top1_after & ~top1_before).sum())
    return {
        **_judgement(held_before, held_after, lost, had, gained, previous),
        "train": {"before": train_before, "after": train_after},
        "counts": {
            "train": len(train),
            "holdout": len(held),
            "replay": len(data.replay),
            "vocab_rows": len(adapter.config.vocab_ids),
            "lora_layers": len(adapter.config.lora_targets),
            "lora_attention": len(adapter.config.lora_attention),
            "query_head": adapter.config.query_head,
            "soup": settings.soup,
            "skipped": dict(data.skipped),
        },
        "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
        "settings": asdict(settings),
    }
