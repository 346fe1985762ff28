"""Operator feedback as training data: triplets to learn from, unjudged queries to replay.

Everything comes from the query log: the payload tokens that travelled (never a photo), the
modifier, the positive that an operator confirmed or named, and the candidates they rejected. The
positive's vector is read from the gallery, which the frozen image tower indexed, so no image is
ever encoded again.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..edge.payload import PayloadError, decode_payload
from ..feedback import learnable

if TYPE_CHECKING:
    from ..compose import TokenizerAdapter
    from ..feedback import FeedbackStore
    from ..gallery import Gallery


@dataclass
class FeedbackExample:
    query_id: str
    text: str
    tokens: np.ndarray  # [N, D] float32
    positive: int | None = None
    rejected: list[int] = field(default_factory=list)

    def content_key(self) -> str:
        h = hashlib.blake2b(self.tokens.tobytes(), digest_size=12)
        h.update(f"{self.text}|{self.positive}".encode())  # not the query id: ids are random per run
        return h.hexdigest()


@dataclass
class FeedbackData:
    """Learnable triplets and replay queries of one query encoder, with what was left out and why."""

    triplets: list[FeedbackExample]
    replay: list[FeedbackExample]
    skipped: Counter = field(default_factory=Counter)

    def _shuffled(self, seed: int) -> list[int]:
        """Triplet indices in a seeded order of their content, not of their query ids (ids are
        random): a re-run pilot splits the same way."""
        order = sorted(range(len(self.triplets)), key=lambda i: self.triplets[i].content_key())
        return [order[i] for i in np.random.default_rng(seed).permutation(len(order))]

    def _apart(self, held: set[int]) -> tuple[list[FeedbackExample], list[FeedbackExample]]:
        """(the rest, the held ones), each in log order."""
        train = [t for i, t in enumerate(self.triplets) if i not in held]
        return train, [t for i, t in enumerate(self.triplets) if i in held]

    def split(self, holdout: float, seed: int) -> tuple[list[FeedbackExample], list[FeedbackExample]]:
        """A deterministic split by query: the same log and seed give the same two sets."""
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"holdout must be within [0, 1), got {holdout}")
        shuffled = self._shuffled(seed)
        return self._apart(set(shuffled[: int(round(holdout * len(shuffled)))]))

    def folds(self, k: int, seed: int) -> list[tuple[list[FeedbackExample], list[FeedbackExample]]]:
        """``k`` deterministic (train, held-out) splits whose held-out parts cover every query
        exactly once, in sizes that differ by at most one."""
        if not 2 <= k <= len(self.triplets):
            raise ValueError(f"{k} folds need 2 <= k <= the {len(self.triplets)} learnable queries")
        shuffled, n = self._shuffled(seed), len(self.triplets)
        return [self._apart(set(shuffled[f * n // k : (f + 1) * n // k])) for f in range(k)]


def load_feedback(
    store: FeedbackStore,
    query_encoder_fingerprint: str,
    num_tokens: int,
    word_dim: int,
    gallery: Gallery,
    max_replay: int = 2000,
    seed: int = 0,
    max_queries: int | None = None,
) -> FeedbackData:
    """Read the log; keep the queries whose tokens came from this query encoder.

    Tokens of another encoder live elsewhere in the word-embedding space and are skipped, as are
    triplets whose positive has since left the gallery. Replay queries (logged, no verdict) are
    subsampled to ``max_replay``, deterministically. ``max_queries`` reads only the oldest that many
    logged queries of this encoder (a learning curve over the first N of a pilot).
    """
    triplets: list[FeedbackExample] = []
    replay: list[FeedbackExample] = []
    skipped: Counter = Counter()
    for q in store.queries():
        if q["tokens"] is None:
            skipped["no_tokens"] += 1
            continue
        try:
            decoded = decode_payload(q["tokens"])
        except PayloadError:
            skipped["bad_payload"] += 1
            continue
        if decoded.fingerprint != query_encoder_fingerprint:
            skipped["other_encoder"] += 1
            continue
        if max_queries is not None and len(triplets) + len(replay) + skipped["rejected_only"] >= max_queries:
            skipped["beyond_max_queries"] += 1
            continue
        if decoded.tokens.shape != (num_tokens, word_dim):
            skipped["bad_shape"] += 1
            continue
        tokens = np.asarray(decoded.tokens, dtype=np.float32)
        t = learnable(q)
        if t is None:
            if q["verdicts"]:
                skipped["rejected_only"] += 1  # no positive: not a triplet, and not unjudged either
            else:
                replay.append(FeedbackExample(q["query_id"], q["text"], tokens))
            continue
        triplets.append(FeedbackExample(q["query_id"], q["text"], tokens, int(t["positive_id"]), t["rejected_ids"]))
    present = set(gallery.vectors(sorted({t.positive for t in triplets if t.positive is not None}))[0].tolist())
    kept = [t for t in triplets if t.positive in present]
    skipped["positive_not_in_gallery"] += len(triplets) - len(kept)
    if len(replay) > max_replay:
        pick = np.sort(np.random.default_rng(seed).choice(len(replay), max_replay, replace=False))
        skipped["replay_subsampled"] += len(replay) - max_replay
        replay = [replay[i] for i in pick]
    return FeedbackData(kept, replay, +skipped)


_WORD = re.compile(r"[\w'-]+")


def domain_vocabulary(
    texts: Iterable[str], tokenizer: TokenizerAdapter, min_count: int = 2, max_rows: int = 512
) -> tuple[list[int], list[str]]:
    """The word-piece ids that operators' modifiers use at least ``min_count`` times.

    Returns ``(ids, words)``: the ids by falling use (at most ``max_rows``) and, for each, the first
    operator word it came from. Special and placeholder ids never get a row.
    """
    reserved = {tokenizer.placeholder_id, tokenizer.pad_id, *tokenizer.bos, *tokenizer.eos}
    uses: Counter = Counter()
    source: dict[int, str] = {}
    for text in texts:
        for word in _WORD.findall(text.lower()):
            for piece in tokenizer.encode(word):
                if piece in reserved:
                    continue
                uses[piece] += 1
                source.setdefault(piece, word)
    chosen = [i for i, n in sorted(uses.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count][:max_rows]
    return chosen, [source[i] for i in chosen]


def stack_tokens(examples: list[FeedbackExample]) -> Any:
    import torch

    return torch.from_numpy(np.stack([e.tokens for e in examples])) if examples else torch.zeros(0)
