"""The fit loop of one adapter: contrastive loss on verdicts, replay against forgetting, resumable."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..adapter import QueryAdapter, new_adapter
from ..errors import ConfigError
from ..progress import progress_bar
from .data import FeedbackData, FeedbackExample, domain_vocabulary, stack_tokens
from .settings import _MASKED, DUPLICATE_COSINE, AdaptSettings
from .soup import soup
from .tuning import ComposedQueries, _duplicates

if TYPE_CHECKING:
    from ..foundation import Foundation
    from ..gallery import Gallery


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
        adapter.follow(self.foundation)  # before the optimiser: it trains where the foundation runs
        device = adapter.device

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
        bank = Bank(vid, vecs, device)
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
            if settings.word_dropout > 0:
                batch = [replace(e, text=_drop_words(e.text, settings.word_dropout, g)) for e in batch]
            loss = _contrastive_loss(compose, adapter, batch, bank, extra, settings, before, picked)
            if settings.vocab_decay > 0 and adapter.vocab is not None:
                loss = loss + settings.vocab_decay * adapter.vocab.delta.pow(2).sum(-1).mean()
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


def _drop_words(text: str, p: float, g: torch.Generator) -> str:
    """``text`` with each word dropped with chance ``p`` (never all of them: then it stays whole)."""
    words = text.split()
    keep = (torch.rand(len(words), generator=g) >= p).tolist()
    kept = [w for w, k in zip(words, keep, strict=True) if k]
    return " ".join(kept) if kept else text


class Bank:
    """Stored gallery vectors by row, with the row of every id."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, device: torch.device | str = "cpu"):
        self.vectors = torch.from_numpy(np.array(vectors, dtype=np.float32)).to(device)
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
    dev = bank.vectors.device
    cand = bank.vectors[torch.tensor(list(rows), device=dev)]
    q = compose(stack_tokens(batch), [e.text for e in batch], adapter).float().to(dev)
    labels = torch.tensor([rows[bank.row[e.positive]] for e in batch if e.positive is not None], device=dev)
    # a duplicate of a query's positive is not its negative: it does not count for that query
    twins = cand[labels] @ cand.T >= DUPLICATE_COSINE
    twins[torch.arange(len(labels), device=dev), labels] = False
    logits = (q @ cand.T / settings.temperature).masked_fill(twins, _MASKED)
    loss = F.cross_entropy(logits, labels)
    if before.queries is not None and (settings.focal_weight or settings.focal_base):
        old_logits = (before.queries[picked].to(dev) @ cand.T / settings.temperature).masked_fill(twins, _MASKED)
        old = F.softmax(old_logits, dim=-1)
        kl = F.kl_div(F.log_softmax(logits, dim=-1), old, reduction="none").sum(-1)
        weight = settings.focal_base + settings.focal_weight * before.right[picked].to(dev)
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
        parts.append(1 - (q * replay_targets[pick].to(q.device)).sum(-1))
    if settings.replay_shuffled and len(train) > 1:
        a = torch.randperm(len(train), generator=g)[:half].tolist()
        b = torch.randint(1, len(train), (len(a),), generator=g).tolist()
        tokens = stack_tokens([train[i] for i in a])
        texts = [train[(i + s) % len(train)].text for i, s in zip(a, b, strict=True)]
        with torch.no_grad():
            target = compose(tokens, texts, previous).float()
        parts.append(1 - (compose(tokens, texts, adapter).float() * target).sum(-1))
    return torch.cat(parts).mean() if parts else torch.zeros(())
