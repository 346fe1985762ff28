"""Retriever: (reference image or pseudo tokens) + modifier -> composed query -> top-K -> re-rank.

Modes:
  * ``isa``: the query encoder's pseudo tokens spliced into ``a photo of {} that {}`` (the method);
  * ``image_plus_text``: normalised sum of the image feature and the modifier's text feature,
    training-free (the fallback when no query encoder is available);
  * ``image_only`` / ``text_only``: the two halves alone (baselines).
"""

from __future__ import annotations

import contextlib
import tarfile
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .adapter import guard_hits
from .compose import DEFAULT_TEMPLATE, validate_pseudo_tokens
from .data.imageio import ImageSource, load_image
from .errors import IsacirError
from .itm_cache import HiddenStateCache

if TYPE_CHECKING:
    from .adapter import QueryAdapter
    from .foundation import Foundation
    from .gallery import Gallery, Hit
    from .query import QueryEncoder

MODES = ("isa", "image_plus_text", "image_only", "text_only")


#: ``compose(retriever, prepared tokens, text) -> query vector``
Composer = Callable[["Retriever", torch.Tensor, "str | Sequence[str]"], np.ndarray]


def _compose_one(retriever: Retriever, tokens: torch.Tensor, text: str | Sequence[str]) -> np.ndarray:
    return retriever.compose(tokens, [text])[0]


class SearchError(IsacirError, ValueError):
    pass


class UnknownReference(SearchError):
    """A search names a reference gallery item that does not exist."""


def exclusions(
    gallery: Gallery, reference_id: int | None = None, reference_hash: str | None = None, exclude: Sequence[int] = ()
) -> set[int]:
    """What a search must not return: the reference itself (by gallery id, or by the content hash
    of the reference photo) and its exact copies, plus ``exclude``. An unknown ``reference_id`` is
    an :class:`UnknownReference`."""
    out = set(exclude)
    if reference_id is not None:
        digest = gallery.hash_of(reference_id)
        if digest is None:
            raise UnknownReference(f"no gallery item {reference_id} (reference_id)")
        out.add(reference_id)
        reference_hash = reference_hash or digest
    if reference_hash:
        out.update(gallery.ids_with_hash(reference_hash))
    return out


def read_gallery_image(key: str):
    """Open a gallery entry's image: a file path, or ``shard.tar::member``."""
    if "::" in key:
        shard, member = key.split("::", 1)
        with tarfile.open(shard, "r:") as tf:
            return load_image(tf.extractfile(member).read())
    return load_image(key)


class Retriever:
    def __init__(
        self,
        gallery: Gallery,
        foundation: Foundation,
        query_encoder: QueryEncoder | None = None,
        template: str | None = None,
        adapter: QueryAdapter | None = None,
        itm_cache_bytes: int = 2 * 2**30,
        itm_concurrency: int = 1,
    ):
        """``template`` defaults to the one the query encoder was trained with.

        With a matching head (BLIP ITM), re-ranking keeps the candidates' vision hidden states in
        ``GALLERY/itm-cache`` up to ``itm_cache_bytes`` (0: no cache), and at most
        ``itm_concurrency`` requests run the head at once (each one is a burst of large-model work).

        An ``adapter`` (learned from operator feedback) must belong to this query encoder and
        foundation; its word-embedding hook stays attached while this retriever lives and acts only
        inside this retriever's adapted queries (:meth:`close` removes it).
        """
        gallery.check_foundation(foundation)
        if query_encoder is not None:
            query_encoder.check_foundation(foundation)
        if adapter is not None:
            if query_encoder is None:
                raise SearchError("an adapter needs the query encoder it was trained for")
            adapter.check(query_encoder.fingerprint, foundation.fingerprint)
        self.gallery = gallery
        self.foundation = foundation
        self.query_encoder = query_encoder
        self.adapter = adapter
        if adapter is not None:
            adapter.attach(foundation)
        self.template = template or (query_encoder.config.template if query_encoder is not None else DEFAULT_TEMPLATE)
        self.itm_cache: HiddenStateCache | None = None
        if foundation.has_matching_head and itm_cache_bytes > 0:
            try:
                self.itm_cache = HiddenStateCache(gallery.dir / "itm-cache", foundation.fingerprint, itm_cache_bytes)
            except OSError:  # a read-only gallery folder: re-rank without a cache
                self.itm_cache = None
        self._itm_slots = threading.BoundedSemaphore(max(1, itm_concurrency))
        #: with a guarded adapter, the plain retriever whose composed query anchors the top-1
        self.zero_shot: Retriever | None = (
            self.sibling(query_encoder) if adapter is not None and adapter.guard_margin > 0 else None
        )

    def sibling(self, query_encoder: QueryEncoder | None, adapter: QueryAdapter | None = None) -> Retriever:
        """A retriever for another query-side version over the same gallery and foundation.

        It shares this one's re-ranking cache and its bound on concurrent matching-head work:
        the cache is keyed by gallery item and foundation, so every version of one foundation
        reads the same hidden states, and the bound is on the large model, which they share."""
        other = Retriever(
            self.gallery, self.foundation, query_encoder, adapter=adapter, itm_cache_bytes=0, itm_concurrency=1
        )
        other.itm_cache = self.itm_cache
        other._itm_slots = self._itm_slots
        return other

    def close(self) -> None:
        """Unhook the adapter from the foundation."""
        if self.adapter is not None:
            self.adapter.detach()

    def _adapted(self) -> contextlib.AbstractContextManager:
        return self.adapter.applied() if self.adapter is not None else contextlib.nullcontext()

    @property
    def default_mode(self) -> str:
        return "isa" if self.query_encoder is not None else "image_plus_text"

    @torch.no_grad()
    def pseudo_tokens(self, image: ImageSource) -> torch.Tensor:
        if self.query_encoder is None:
            raise SearchError("mode 'isa' needs a query encoder (--query-encoder) or client-side pseudo tokens")
        return self.query_encoder.encode_images([image], foundation=self.foundation)

    @torch.no_grad()
    def query_vector(
        self,
        image: ImageSource | None = None,
        text: str | Sequence[str] = "",
        tokens: torch.Tensor | None = None,
        mode: str | None = None,
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """The composed query vector (and the pseudo tokens used, if any)."""
        mode = mode or self.default_mode
        if mode not in MODES:
            raise SearchError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        fnd = self.foundation
        texts = [text] if isinstance(text, str) else list(text)
        if mode == "isa":
            if tokens is None:
                if image is None:
                    raise SearchError("mode 'isa' needs a reference image or pseudo tokens")
                tokens = self.pseudo_tokens(image)
            tokens = self.prepare_tokens(tokens)
            return self.compose(tokens, [texts])[0], tokens
        if mode in ("image_plus_text", "image_only") and image is None:
            raise SearchError(f"mode {mode!r} needs a reference image")
        img = fnd.encode_image(fnd.preprocess_batch([image])) if image is not None else None
        if mode == "image_only":
            return img[0].float().cpu().numpy(), None
        if not any(t.strip() for t in texts):
            if mode == "text_only":
                raise SearchError("mode 'text_only' needs a modifier text")
            return img[0].float().cpu().numpy(), None
        txt = F.normalize(fnd.encode_text([t for t in texts if t.strip()]).mean(0, keepdim=True), dim=-1)
        if mode == "text_only":
            return txt[0].float().cpu().numpy(), None
        return F.normalize(img + txt, dim=-1)[0].float().cpu().numpy(), None

    def prepare_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Device tokens as the text side reads them: checked, then through the adapter if one is served."""
        if self.adapter is None:
            return tokens
        expected = self.query_encoder.num_tokens if self.query_encoder is not None else None
        validate_pseudo_tokens(tokens, self.foundation.word_dim, expected_tokens=expected)  # before the adapter
        return self.adapter.adapt_tokens(tokens)

    @torch.no_grad()
    def compose(self, tokens: torch.Tensor, texts: Sequence[str | Sequence[str]]) -> np.ndarray:
        """Composed query vectors of a batch: ``tokens`` (B, n, d) from :meth:`prepare_tokens`, one
        modifier (or list of modifiers) per row. One forward pass of the text tower for all B."""
        expected = self.query_encoder.num_tokens if self.query_encoder is not None else None
        mods = [[t] if isinstance(t, str) else list(t) for t in texts]
        with self._adapted():  # the vocabulary hook was attached once, in __init__
            q = self.foundation.encode_composed(tokens, mods, self.template, expected_tokens=expected)
            if self.adapter is not None:
                q = self.adapter.adapt_query(q)
        return q.float().cpu().numpy()

    def search_vector(
        self,
        query: np.ndarray,
        k: int = 10,
        rerank: int = 0,
        tokens: torch.Tensor | None = None,
        text: str | Sequence[str] = "",
        exclude: Sequence[int] = (),
        where: dict | None = None,
        anchor: np.ndarray | None = None,
    ) -> list[Hit]:
        """The gallery side of :meth:`search`, for a composed query vector computed elsewhere.

        ``where`` keeps only items whose metadata passes it (see :func:`isacir.gallery.check_filter`).
        ``anchor``: the zero-shot composed query, for a guarded adapter's top-1 guard (composed by
        :attr:`zero_shot`); re-ranking, when asked, re-scores the guarded order."""
        if k < 1:
            raise SearchError("k must be >= 1")
        excluded = set(exclude)
        fetch = max(k, rerank) + len(excluded)
        hits = [h for h in self.gallery.search(query[None], fetch, where=where)[0] if h.id not in excluded]
        if anchor is not None and self.adapter is not None and self.adapter.guard_margin > 0 and hits:
            first = [
                # as deep as the adapted search, so exact ties break as the zero-shot service breaks them
                h
                for h in self.gallery.search(anchor[None], fetch, where=where)[0]
                if h.id not in excluded
            ]
            hits = guard_hits(self.gallery, hits, query, first[0] if first else None, self.adapter.guard_margin)
        if rerank and hits and self.reranker(tokens is not None) != "none":
            # the top ``rerank`` are re-scored; below them the store's order stands
            hits = self.rerank(hits[:rerank], query, tokens, text) + hits[rerank:]
        return hits[:k]

    def reranker(self, has_tokens: bool) -> str:
        """What ``rerank`` does here: ``itm`` (the foundation's matching head on the pseudo
        sentence), ``exact`` (stored full-precision vectors, when the store is approximate), or
        ``none`` (the store's scores are already exact; re-scoring would change nothing)."""
        if self.foundation.has_matching_head and has_tokens:
            return "itm"
        return "none" if self.gallery.store_is_exact else "exact"

    def search_tokens(
        self,
        tokens: torch.Tensor,
        text: str | Sequence[str] = "",
        k: int = 10,
        rerank: int = 0,
        exclude: Sequence[int] = (),
        where: dict | None = None,
        compose: Composer | None = None,
        note: Callable[[np.ndarray], None] | None = None,
    ) -> tuple[list[Hit], str]:
        """The one search pipeline for pseudo tokens, which the service and the command line share:
        the adapter on the tokens, composition by the text tower, the zero-shot query for a guarded
        adapter's top-1 guard, the gallery, then re-ranking. Returns the hits and the re-ranker
        that ran (``none`` when ``rerank`` is 0).

        ``compose(retriever, tokens, text)`` composes one query vector (the service batches
        concurrent requests through it; default: one forward pass here); ``note(query)`` is told
        each composed query (the service keeps real queries to tune the index on).
        """
        if k < 1:
            raise SearchError("k must be >= 1")
        compose = compose or _compose_one
        prepared = self.prepare_tokens(tokens)
        query = compose(self, prepared, text)
        # a guarded adapter weighs its top-1 against the zero-shot query's (composed the same way)
        anchor = compose(self.zero_shot, tokens, text) if self.zero_shot is not None else None
        if note is not None:
            note(query)
        hits = self.search_vector(query, k, rerank, prepared, text, exclude, where, anchor=anchor)
        return hits, self.reranker(True) if rerank else "none"

    def search(
        self,
        image: ImageSource | None = None,
        text: str | Sequence[str] = "",
        tokens: torch.Tensor | None = None,
        k: int = 10,
        rerank: int = 0,
        mode: str | None = None,
        exclude: Sequence[int] = (),
        where: dict | None = None,
    ) -> list[Hit]:
        """Search with a reference image (or its tokens) and a modifier, in ``mode``; ``isa`` runs
        :meth:`search_tokens`, the training-free modes compose from the large model's features."""
        if k < 1:
            raise SearchError("k must be >= 1")
        if (mode or self.default_mode) == "isa" and (image is not None or tokens is not None):
            raw = tokens if tokens is not None else self.pseudo_tokens(image)
            return self.search_tokens(raw, text, k, rerank, exclude, where)[0]
        query, used_tokens = self.query_vector(image, text, tokens, mode)
        return self.search_vector(query, k, rerank, used_tokens, text, exclude, where)

    def _hidden_states(self, hits: list[Hit]) -> torch.Tensor:
        """The candidates' vision hidden states, from the cache where it has them."""
        fnd, cache = self.foundation, self.itm_cache
        hashes = self.gallery.hashes_of([h.id for h in hits]) if cache is not None else {}
        rows: list[np.ndarray | None] = [cache.get(h.id, hashes.get(h.id)) if cache is not None else None for h in hits]
        todo = [j for j, r in enumerate(rows) if r is None]
        if todo:
            images = [read_gallery_image(hits[j].path) for j in todo]
            fresh = fnd.encode_image_features(fnd.preprocess_batch(images)).hidden.float().cpu().numpy()
            for j, state in zip(todo, fresh, strict=True):
                rows[j] = state
                if cache is not None:
                    cache.put(hits[j].id, hashes.get(hits[j].id), state)
        return torch.from_numpy(np.stack(rows).astype(np.float32)).to(fnd.device)

    @torch.no_grad()
    def rerank(self, hits: list[Hit], query: np.ndarray, tokens: torch.Tensor | None, text) -> list[Hit]:
        """Matching-head scores where the foundation has one (and tokens exist), else exact similarity."""
        fnd = self.foundation
        if not (fnd.has_matching_head and tokens is not None):
            return self.gallery.rescore(hits, query)
        texts = [text] if isinstance(text, str) else list(text)
        with self._itm_slots:
            hidden = self._hidden_states(hits)
            with self._adapted():
                scores = fnd.match_score(
                    hidden,
                    pseudo_tokens=tokens.expand(len(hits), -1, -1),
                    modifiers=[texts] * len(hits),
                    template=self.template,
                )
        scores = scores.float().cpu().numpy()
        for h, s in zip(hits, scores, strict=True):
            h.score = float(s)
        return sorted(hits, key=lambda h: -h.score)
