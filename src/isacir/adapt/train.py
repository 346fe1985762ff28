"""``isacir adapt``: learn a :class:`~isacir.adapt.QueryAdapter` from operator feedback.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, IsacirError
from ..progress import progress_bar
from .adapter import QueryAdapter, new_adapter
from .data import FeedbackData, FeedbackExample, domain_vocabulary, load_feedback, stack_tokens

if TYPE_CHECKING:
    from ..foundation import Foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder
    from ..serve.feedback import FeedbackStore

CHECKPOINT_NAME = ".adapt-checkpoint.pt"
#: Held-out flip rate above which an adapter is not promotable.
MAX_FLIP_RATE = 0.05


@dataclass
class AdaptSettings:
    holdout: float = 0.2
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    temperature: float = 0.05
    hidden: int = 256
    vocab: bool = True
    vocab_min_count: int = 2
    vocab_max_rows: int = 512
    replay_weight: float = 1.0
    max_replay: int = 2000
    interpolation: float = 1.0
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
        if self.replay_weight < 0:
            raise ConfigError("--replay-weight must not be negative")


class ComposedQueries:
    """Composes (adapted) queries in chunks: ``a photo of <tokens> that <text>``."""

    def __init__(self, foundation: Foundation, template: str, num_tokens: int):
        self.foundation, self.template, self.num_tokens = foundation, template, num_tokens

    def __call__(self, tokens: torch.Tensor, texts: Sequence[str], adapter: QueryAdapter | None) -> torch.Tensor:
        if adapter is None:
            return self.foundation.encode_composed(tokens, list(texts), self.template, expected_tokens=self.num_tokens)
        adapter.attach(self.foundation)
        with adapter.applied():
            t = adapter.adapt_tokens(tokens)
            return self.foundation.encode_composed(t, list(texts), self.template, expected_tokens=self.num_tokens)

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
    """hit@1 / hit@10 of the positives over the whole gallery, and each query's top-1 flag."""
    if not examples:
        return {"n": 0, "hit@1": None, "hit@10": None}, np.zeros(0, dtype=bool)
    queries = compose.many(examples, adapter).numpy()
    hits = gallery.search(queries, 10)
    top1 = np.array([bool(h) and h[0].id == e.positive for h, e in zip(hits, examples, strict=True)])
    top10 = np.array([any(x.id == e.positive for x in h) for h, e in zip(hits, examples, strict=True)])
    return {"n": len(examples), "hit@1": float(top1.mean()), "hit@10": float(top10.mean())}, top1


def flip_rate(before_top1: np.ndarray, after_top1: np.ndarray) -> tuple[float | None, int, int]:
    """Among queries whose positive was top-1 before, the share that lost it: (rate, lost, had)."""
    had = int(before_top1.sum())
    lost = int((before_top1 & ~after_top1).sum())
    return (lost / had if had else None), lost, had


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
    """Train, evaluate on held-out feedback, and save the adapter folder; returns the report."""
    settings = settings or AdaptSettings()
    settings.check()
    t_start = time.perf_counter()
    gallery.check_foundation(foundation)
    query_encoder.check_foundation(foundation)
    qe_fp = query_encoder.fingerprint
    if previous is not None:
        previous.check(qe_fp, foundation.fingerprint)
    num_tokens, template = query_encoder.num_tokens, query_encoder.config.template
    data: FeedbackData = load_feedback(
        store, qe_fp, num_tokens, foundation.word_dim, gallery, settings.max_replay, settings.seed
    )
    train, held = data.split(settings.holdout, settings.seed)
    if not train:
        raise IsacirError(
            f"no feedback to learn from: {len(data.triplets)} learnable queries of this query encoder "
            f"({qe_fp}) in the log, {len(train)} left for training after the hold-out; skipped: "
            f"{dict(data.skipped) or 'none'}"
        )
    ids, words = (
        domain_vocabulary(
            [t.text for t in train], foundation.tokenizer, settings.vocab_min_count, settings.vocab_max_rows
        )
        if settings.vocab
        else ([], [])
    )
    adapter = new_adapter(foundation, qe_fp, num_tokens, template, ids, words, settings.hidden, settings.seed)
    compose = ComposedQueries(foundation, template, num_tokens)

    # the positives' and negatives' stored vectors: read once, never re-encoded
    needed = sorted({t.positive for t in train if t.positive is not None} | {r for t in train for r in t.rejected})
    vid, vecs = gallery.vectors(needed)
    vectors = {int(i): torch.from_numpy(np.array(v, dtype=np.float32)) for i, v in zip(vid, vecs, strict=True)}
    replay_targets = compose.many(data.replay, previous) if data.replay and settings.replay_weight > 0 else None

    optim = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=settings.lr, weight_decay=0.0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    key = _setup_key(settings, train, qe_fp, previous.fingerprint if previous is not None else None)
    step, losses = 0, []
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("key") == key:
            adapter.load_state_dict(state["adapter"])
            optim.load_state_dict(state["optim"])
            step, losses = int(state["step"]), list(state["losses"])

    adapter.train()
    bar = progress_bar(total=settings.steps, initial=step, desc="adapt", unit="step", disable=not progress)
    while step < settings.steps:
        g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        batch = [train[i] for i in torch.randperm(len(train), generator=g)[: settings.batch_size].tolist()]
        loss = _contrastive_loss(compose, adapter, batch, vectors, settings.temperature)
        if replay_targets is not None:
            pick = torch.randperm(len(data.replay), generator=g)[: settings.batch_size].tolist()
            q = compose(stack_tokens([data.replay[i] for i in pick]), [data.replay[i].text for i in pick], adapter)
            loss = loss + settings.replay_weight * (1 - (q.float() * replay_targets[pick]).sum(-1)).mean()
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
    adapter.set_interpolation(settings.interpolation)

    report = _report(compose, gallery, train, held, adapter, previous, data, settings, losses)
    report["took_s"] = round(time.perf_counter() - t_start, 2)
    adapter.config.training = {"settings": asdict(settings), "counts": report["counts"]}
    adapter.save_pretrained(out, report)  # replaces the folder, checkpoint included: the run is done
    report["fingerprint"] = adapter.fingerprint
    return report


def _contrastive_loss(
    compose: ComposedQueries,
    adapter: QueryAdapter,
    batch: list[FeedbackExample],
    vectors: dict[int, torch.Tensor],
    temperature: float,
) -> torch.Tensor:
    columns: dict[int, int] = {}
    for e in batch:
        for i in (e.positive, *e.rejected):
            if i is not None and i in vectors:
                columns.setdefault(i, len(columns))
    cand = torch.stack([vectors[i] for i in columns])
    q = compose(stack_tokens(batch), [e.text for e in batch], adapter).float()
    labels = torch.tensor([columns[e.positive] for e in batch if e.positive is not None])
    return F.cross_entropy(q @ cand.T / temperature, labels)


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
    rate, lost, had = flip_rate(top1_before, top1_after)
    reasons = []
    if not held:
        reasons.append("no held-out feedback to judge it by (raise --holdout or gather more feedback)")
    else:
        if held_after["hit@1"] < held_before["hit@1"]:
            reasons.append(f"held-out hit@1 dropped ({held_before['hit@1']:.3f} -> {held_after['hit@1']:.3f})")
        if rate is not None and rate > MAX_FLIP_RATE:
            reasons.append(f"held-out flip rate {rate:.3f} exceeds {MAX_FLIP_RATE:.2f}")
    return {
        "promotable": not reasons,
        "reasons": reasons,
        "before": "previous adapter " + previous.fingerprint if previous is not None else "zero-shot (no adapter)",
        "holdout": {"before": held_before, "after": held_after, "flip_rate": rate, "flips": lost, "top1_before": had},
        "train": {"before": train_before, "after": train_after},
        "counts": {
            "train": len(train),
            "holdout": len(held),
            "replay": len(data.replay),
            "vocab_rows": len(adapter.config.vocab_ids),
            "skipped": dict(data.skipped),
        },
        "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
        "settings": asdict(settings),
    }
