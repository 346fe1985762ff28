"""Composed search: thin-client (the photo travels) and asymmetric (only the device's tokens do).

Both modes run the one search pipeline, :meth:`isacir.search.Retriever.search_tokens`, with the
service's batched composition; this module adds what HTTP needs around it: parsing, version
routing, interleaving, the query log and the response body.
"""

from __future__ import annotations

import base64
import binascii
import random
import time
import uuid
from typing import Optional

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import ValidationError

from ....edge.payload import PayloadError, decode_payload, encode_payload
from ....search import UnknownReference, exclusions
from ...lineup import Lineup, Served, VersionRefused
from ...schemas import _FILTER, FILTER_DOC, MAX_K, InfoOut, RefineIn, SearchOut, TokenSearch, errors
from ...state import ServiceState
from ..deps import StateDep, api_error, decode_upload, item_json, require

router = APIRouter(tags=["search"], dependencies=require("search"))


@router.get("/v1/info", responses=errors(), response_model=InfoOut, response_model_exclude_unset=True)
def info(state: StateDep) -> dict:
    """What a device must match: the served query encoder's fingerprint, token count and dim."""
    return state.info()


def _search(
    state: ServiceState,
    served: Served,
    tokens,
    text: str,
    k: int,
    rerank: int,
    exclude: set[int],
    where: Optional[dict] = None,
):
    retriever = served.model.retriever
    return retriever.search_tokens(
        tokens,
        text,
        k,
        rerank,
        exclude=sorted(exclude),
        where=where,
        compose=state.compose,
        note=lambda query: state.note_query(retriever.gallery, query),
    )


def _excluded(
    state: ServiceState, reference_id: Optional[int], exclude_ids: list[int], reference_hash: Optional[str]
) -> set[int]:
    try:
        return exclusions(state.gallery, reference_id, reference_hash, exclude_ids)
    except UnknownReference as exc:
        raise api_error(404, str(exc), "not_found") from None


def _parse_filter(raw: Optional[str]) -> Optional[dict]:
    if raw is None or not raw.strip():
        return None
    try:
        return _FILTER.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise api_error(422, f"bad filter{' at ' + where if where else ''}: {first['msg']}", "bad_filter") from None


def _respond(
    state: ServiceState,
    lineup: Lineup,
    served: Served,
    mode: str,
    text: str,
    hits,
    k: int,
    payload: bytes | None,
    t0: float,
    reranker: str,
    query_id: Optional[str] = None,
    interleave: Optional[dict] = None,
) -> dict:
    m = served.model
    ids = [h.id for h in hits]
    took_ms = round(1000 * (time.perf_counter() - t0), 2)
    state.metrics.searches.labels(mode, served.version).inc()
    qid = state.query_log.log(
        mode,
        text,
        payload,
        k,
        ids,
        m.qe_fingerprint,
        state.foundation_fingerprint,
        latency_ms=took_ms,
        adapter_fingerprint=m.adapter_fingerprint,
        model_version=m.name,
        interleave=interleave,
        query_id=query_id,
    )
    state.review.consider(qid, [float(h.score) for h in hits], text)
    teams = interleave["teams"] if interleave else {}
    out = {
        "query_id": qid,
        "mode": mode,
        "text": text,
        "took_ms": took_ms,
        "model_version": m.name,
        "version_state": served.state,
        "query_encoder_fingerprint": m.qe_fingerprint,
        "adapter_version": m.adapter_fingerprint,
        "reranker": reranker,
        "results": [
            {
                **item_json(h.id, h.path),
                "score": round(float(h.score), 6),
                "metadata": h.metadata,
                **({"team": teams[str(h.id)]} if teams else {}),
            }
            for h in hits
        ],
    }
    upgrade = lineup.upgrade_for(served)
    if upgrade is not None:
        out["upgrade"] = upgrade
    if interleave:
        out["interleaving"] = {"A": interleave["A"], "B": interleave["B"]}
    return out


@router.post("/v1/search", responses=errors(404, 415), response_model=SearchOut, response_model_exclude_unset=True)
def search(
    state: StateDep,
    image: UploadFile = File(..., description="The reference photo."),
    text: str = Form("", max_length=1000),
    k: int = Form(10, ge=1, le=MAX_K),
    rerank: int = Form(0, ge=0, le=MAX_K),
    reference_id: Optional[int] = Form(None, ge=0, le=2**63 - 1, description="The reference's gallery id."),
    keep_copies: bool = Form(False, description="Also return gallery items identical to the photo."),
    filter: Optional[str] = Form(None, max_length=100_000, description="A JSON object. " + FILTER_DOC),
) -> dict:
    """Thin-client mode: the server runs the light query side on the uploaded photo.

    A gallery item identical to the uploaded photo (same content) is the reference itself, not
    an answer: it is left out unless ``keep_copies``."""
    from ....data.sources import content_hash

    t0 = time.perf_counter()
    where = _parse_filter(filter)
    data = image.file.read()
    pil = decode_upload(data, image.filename or "image")
    exclude = _excluded(state, reference_id, [], None if keep_copies else content_hash(data))
    lineup = state.lineup
    pair = lineup.interleaved_pair(random.random())
    if pair is not None:
        tokens_of = lambda served: served.model.retriever.pseudo_tokens(pil)  # noqa: E731
        return _interleaved(state, lineup, pair, tokens_of, "image", text, k, rerank, exclude, where, t0)
    served = lineup.for_thin_client(random.random())
    tokens = served.model.retriever.pseudo_tokens(pil)
    hits, reranker = _search(state, served, tokens, text, k, rerank, exclude, where)
    payload = encode_payload(tokens[0].float().cpu().numpy(), served.model.qe_fingerprint, "fp16")
    return _respond(state, lineup, served, "image", text, hits, k, payload, t0, reranker)


def _interleaved(
    state: ServiceState,
    lineup: Lineup,
    pair: tuple[Served, Served],
    tokens_of,
    mode: str,
    text: str,
    k: int,
    rerank: int,
    exclude: set[int],
    where,
    t0: float,
    raw: bytes | None = None,
):
    """Both compared versions answer (``tokens_of(served)``: the pseudo tokens each reads); the
    operator sees their rankings merged by team draft. ``raw``: the device's payload, logged as sent."""
    from ....pilot.interleaving import query_seed, team_draft

    assert lineup.interleave is not None
    answers = []
    for served in pair:
        tokens = tokens_of(served)
        answers.append((tokens, *_search(state, served, tokens, text, k, rerank, exclude, where)))
    qid = uuid.uuid4().hex
    merged = team_draft([h.id for h in answers[0][1]], [h.id for h in answers[1][1]], k, query_seed(qid))
    by_team = {"A": {h.id: h for h in answers[0][1]}, "B": {h.id: h for h in answers[1][1]}}
    hits = [by_team[merged.teams[i]][i] for i in merged.items]
    a = pair[0]
    record = {
        "A": lineup.interleave[0],
        "B": lineup.interleave[1],
        "teams": {str(i): team for i, team in merged.teams.items()},
    }
    payload = (
        raw
        if raw is not None
        else encode_payload(answers[0][0][0].float().cpu().numpy(), a.model.qe_fingerprint, "fp16")
    )
    reranker = answers[0][2]
    return _respond(state, lineup, a, mode, text, hits, k, payload, t0, reranker, query_id=qid, interleave=record)


@router.post(
    "/v1/search/tokens", responses=errors(404, 409), response_model=SearchOut, response_model_exclude_unset=True
)
def search_tokens(state: StateDep, body: TokenSearch) -> dict:
    """Asymmetric mode: only the device's pseudo-word tokens travel, never the photo."""
    import torch

    t0 = time.perf_counter()
    try:
        raw = base64.b64decode(body.payload, validate=True)
    except (binascii.Error, ValueError):
        raise api_error(422, "payload is not valid base64", "payload_base64") from None
    try:
        decoded = decode_payload(raw)
    except PayloadError as exc:
        raise api_error(422, f"bad token payload: {exc}", f"payload_{exc.code}") from None
    lineup = state.lineup
    try:
        served = lineup.for_tokens(decoded.fingerprint, random.random())
    except VersionRefused as exc:
        state.metrics.refused.labels(exc.code).inc()
        raise HTTPException(
            status_code=409, detail={"detail": str(exc), "code": exc.code, "active_version": exc.active_version}
        ) from None
    qe = served.model.query_encoder.config
    if decoded.tokens.shape != (qe.num_tokens, qe.word_dim):
        raise api_error(
            422,
            f"payload holds {decoded.tokens.shape[0]}x{decoded.tokens.shape[1]} tokens; the served "
            f"encoder produces {qe.num_tokens}x{qe.word_dim}",
            "payload_shape",
        )
    tokens = torch.from_numpy(decoded.tokens)[None]
    exclude = _excluded(state, body.reference_id, body.exclude_ids, None)
    pair = lineup.interleaved_pair(random.random(), decoded.fingerprint)
    if pair is not None:  # both compared versions read these tokens (an adapter on the same encoder)
        return _interleaved(state, lineup, pair, lambda _: tokens, "tokens", body.text, body.k, body.rerank,
                            exclude, body.filter, t0, raw)  # fmt: skip
    hits, reranker = _search(state, served, tokens, body.text, body.k, body.rerank, exclude, body.filter)
    return _respond(state, lineup, served, "tokens", body.text, hits, body.k, raw, t0, reranker)


@router.post(
    "/v1/search/{query_id}/refine",
    responses=errors(404, 409),
    response_model=SearchOut,
    response_model_exclude_unset=True,
)
def refine(state: StateDep, query_id: str, body: RefineIn) -> dict:
    """Search again from an answered query, moved toward the items marked right or close and away
    from those marked wrong (which leave the list), over the stored gallery vectors; no model runs
    but the text tower that composes the logged query. Logged as a query of its own (mode
    ``refine``), so its verdicts teach the next adapter like any other."""
    import torch

    from ....refine import RefineError, marked_vectors, refined_query, wrong_ids

    t0 = time.perf_counter()
    logged = state.feedback.logged_query(query_id)
    if logged is None:
        raise api_error(404, f"unknown query_id {query_id!r}: refine a search this server answered", "not_found")
    if logged["tokens"] is None:
        raise api_error(409, f"query {query_id} has no tokens left (the log's retention dropped them)", "no_tokens")
    decoded = decode_payload(logged["tokens"])
    lineup = state.lineup
    try:
        served = lineup.for_tokens(decoded.fingerprint, random.random())
    except VersionRefused as exc:
        raise api_error(409, str(exc), exc.code) from None
    marks = {m.id: m.mark for m in body.marks}
    retriever = served.model.retriever
    try:
        toward, away = marked_vectors(retriever.gallery, marks)
        tokens = retriever.prepare_tokens(torch.from_numpy(decoded.tokens)[None])
        query = state.compose(retriever, tokens, logged["text"])
        moved = refined_query(query, toward, away, state.refine_weights)
    except RefineError as exc:
        raise api_error(422, str(exc), "refine") from None
    hits = retriever.search_vector(moved, body.k, exclude=wrong_ids(marks))
    out = _respond(state, lineup, served, "refine", logged["text"], hits, body.k, logged["tokens"], t0, "none")
    out["refined_from"] = query_id
    return out
