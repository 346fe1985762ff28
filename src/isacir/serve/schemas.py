"""The API's request and error bodies, and the OpenAPI descriptions the routes share."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from fastapi import Path as PathParam
from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints, TypeAdapter

from ..gallery.items import FILTER_FIELD, FILTER_MAX_FIELDS, FILTER_MAX_VALUES

#: the most results (and re-ranked candidates) one search returns
MAX_K = 200


class ErrorOut(BaseModel):
    """Every error the API answers: a message for people and a stable code for programs."""

    detail: str = Field(..., description="What went wrong, for a person.")
    code: str = Field(..., description="What went wrong, for a program: unauthorized, forbidden, payload_crc, ...")
    errors: Optional[list[dict]] = Field(None, description="Request validation (422): one entry per bad field.")
    active_version: Optional[str] = Field(
        None, description="409 on a token search: the served version a device should update to."
    )


_ERROR_TEXT = {
    401: "No valid API key (send X-API-Key or Authorization: Bearer).",
    403: "The key lacks the scope this route needs.",
    404: "No such item or resource.",
    409: "No served version reads this token payload (encoder_unknown, encoder_retired, foundation_mismatch), "
    "or the registry change cannot be applied.",
    410: "The item is indexed but its file is gone.",
    413: "The request body is over the upload cap.",
    415: "The upload is not an image format the server reads.",
    422: "The request is malformed: a bad field, payload or image.",
    429: "The key is over its rate limit; see Retry-After.",
    503: "The server is saturated; see Retry-After.",
}


def errors(*extra: int) -> dict:
    """The error responses of a keyed route, for the OpenAPI spec: the common ones plus ``extra``."""
    return {
        code: {"model": ErrorOut, "description": _ERROR_TEXT[code]} for code in (401, 403, 413, 422, 429, 503, *extra)
    }


#: gallery ids are non-negative 64-bit integers (FAISS and SQLite ids); larger ones are 422, not 500
ITEM_ID = PathParam(..., ge=0, le=2**63 - 1, description="A gallery item id.")

IMAGE_CONTENT = {"image/*": {"schema": {"type": "string", "format": "binary"}}}


FilterScalar = Annotated[
    Union[StrictBool, StrictInt, Annotated[float, Field(allow_inf_nan=False)], Annotated[str, Field(max_length=1000)]],
    Field(description="A string, number or boolean."),
]
FilterValues = Union[FilterScalar, Annotated[list[FilterScalar], Field(min_length=1, max_length=FILTER_MAX_VALUES)]]
#: the metadata filter of a search: field -> accepted value(s); fields are ANDed
SearchFilter = Annotated[
    dict[Annotated[str, StringConstraints(pattern=FILTER_FIELD)], FilterValues],
    Field(min_length=1, max_length=FILTER_MAX_FIELDS),
]
FILTER_DOC = (
    'Only items whose metadata passes, e.g. {"category": "shoes"} or {"category": ["shoes", "bags"], '
    '"in_stock": true}; fields are ANDed, a list accepts any of its values.'
)

_FILTER: TypeAdapter = TypeAdapter(SearchFilter)


class RefineMark(BaseModel):
    id: int = Field(..., ge=0, le=2**53 - 1, description="A gallery item (a 53-bit id), usually a result.")
    mark: Literal["right", "close", "wrong"] = Field(..., description="right | close (more like this) | wrong")


class RefineIn(BaseModel):
    marks: list[RefineMark] = Field(..., min_length=1, max_length=100)
    k: int = Field(10, ge=1, le=MAX_K)


class TokenSearch(BaseModel):
    payload: str = Field(
        ...,
        min_length=1,
        max_length=2_000_000,
        description="The token payload (ISAT binary), base64-encoded.",
    )
    text: str = Field("", max_length=1000, description="The modification, e.g. 'same but in red'.")
    k: int = Field(10, ge=1, le=MAX_K)
    rerank: int = Field(0, ge=0, le=MAX_K, description="Re-rank this many top candidates with the large model.")
    reference_id: Optional[int] = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="The reference is this gallery item: it and its exact copies are left out.",
    )
    exclude_ids: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] = Field(
        default_factory=list, max_length=MAX_K, description="Gallery items never to return."
    )
    filter: Optional[SearchFilter] = Field(None, description=FILTER_DOC)


class FeedbackIn(BaseModel):
    query_id: str = Field(..., min_length=1, max_length=64)
    verdict: Literal["confirmed", "rejected", "corrected"] = Field(..., description="confirmed | rejected | corrected")
    candidate_id: Optional[int] = Field(None, description="confirmed / rejected: one of the query's results.")
    correct_id: Optional[int] = Field(None, description="corrected: the right item, any gallery id (shown or not).")
    note: Optional[str] = Field(None, max_length=2000)
    verdict_s: Optional[float] = Field(
        None, ge=0, le=86400, description="Seconds from the results shown to this verdict (the client measures it)."
    )


# ----- response bodies: declared so that clients generated from the spec, in any language, get types
class _Out(BaseModel):
    """A response body; a field the server leaves out stays out (routes use exclude_unset)."""

    model_config = {"extra": "forbid"}


class ResultOut(_Out):
    id: int = Field(..., description="The gallery item's id.")
    name: str = Field(..., description="Its file name.")
    image_url: str
    thumbnail_url: str
    score: float = Field(..., description="Cosine similarity to the composed query (or the re-ranker's score).")
    metadata: dict = Field(default_factory=dict, description="What was stored with the item.")
    team: Optional[Literal["A", "B"]] = Field(None, description="Interleaving only: which version placed it.")


class UpgradeOut(_Out):
    version: Optional[str] = Field(..., description="The active version to update to.")
    fingerprint: str
    manifest_url: str
    reason: str


class SearchOut(_Out):
    query_id: str = Field(..., description="Name it in POST /v1/feedback.")
    mode: Literal["image", "tokens", "refine"]
    text: str
    took_ms: float
    model_version: Optional[str] = Field(..., description="The registry version that answered (null: no registry).")
    version_state: str
    query_encoder_fingerprint: str
    adapter_version: Optional[str] = Field(..., description="The served adapter's fingerprint, if any.")
    reranker: Literal["none", "exact", "itm"]
    results: list[ResultOut]
    upgrade: Optional[UpgradeOut] = Field(None, description="Present when the version that answered is outdated.")
    interleaving: Optional[dict[str, str]] = Field(None, description="The two versions compared, A and B.")
    refined_from: Optional[str] = Field(None, description="A refinement: the query it moved from.")


class FeedbackOut(_Out):
    feedback_id: int
    query_id: str
    candidate_id: int = Field(..., description="The item judged (for 'corrected', the right item).")
    verdict: Literal["confirmed", "rejected", "corrected"]
    correct_id: Optional[int] = None


class ReviewItemOut(_Out):
    id: int
    name: str
    image_url: str
    thumbnail_url: str


class ReviewOut(_Out):
    query_id: str
    text: str
    mode: str
    asked: float = Field(..., description="When the query was answered (unix seconds).")
    model_version: Optional[str] = None
    score: float = Field(..., description="How much a verdict would teach, 0..1 (see `reasons`).")
    reasons: dict = Field(..., description="margin (first minus second score), ambiguity, unseen_words.")
    lease_until: float = Field(..., description="The query is held for this key until then (unix seconds).")
    results: list[ReviewItemOut] = Field(..., description="What the search returned, best first.")


class ReviewNextOut(_Out):
    review: Optional[ReviewOut] = Field(..., description="The query to judge; null when the queue is empty.")


class ReviewReleaseOut(_Out):
    query_id: str
    released: bool = Field(..., description="False when this key did not hold it (or it was judged).")


class VersionOut(_Out):
    version: Optional[str] = Field(..., description="The registry name (null: a service of one query encoder).")
    state: str
    fingerprint: str
    adapter_fingerprint: Optional[str]
    edge: bool = Field(..., description="Whether it ships an edge package.")
    generation: str


class GenerationOut(_Out):
    name: str
    foundation: str
    foundation_fingerprint: str


class InfoOut(_Out):
    version: str = Field(..., description="The isacir version of the server.")
    foundation: str
    foundation_fingerprint: str
    generation: str
    generations: list[GenerationOut]
    query_encoder_fingerprint: str = Field(..., description="What a device's token payload must carry.")
    model_version: Optional[str]
    adapter: Optional[dict]
    served_version: str
    served_versions: list[VersionOut]
    canary_share: float
    interleave: Optional[list[str]]
    query_method: str
    num_tokens: int
    token_dim: int
    template: str
    languages: list[str] = Field(
        ..., description='What the foundation\'s text tower reads: ["en"] (English only) or ["multilingual"].'
    )
    gallery_items: int
    store: str


class VersionsOut(_Out):
    versions: list[VersionOut]
    primary: Optional[str]
    canary_share: float
    interleave: Optional[list[str]]
    interleave_share: float = Field(1.0, description="The share of searches the interleaved pair merges.")
    registry: Optional[str]
    last_reload_error: Optional[str]


class PilotMetricsOut(_Out):
    """Every metric of the summary's ``definitions``; rates are null with nothing to count."""

    queries: int
    judged: int
    precision_at_1: Optional[float]
    precision_at_1_ci: Optional[list[float]]
    hit_at_k: Optional[float]
    hit_at_k_ci: Optional[list[float]]
    false_hit_rate: Optional[float]
    false_hit_rate_ci: Optional[list[float]]
    correction_rate: Optional[float]
    correction_rate_ci: Optional[list[float]]
    unjudged_share: Optional[float]
    unjudged_share_ci: Optional[list[float]]
    mrr: Optional[float]
    latency_p50_ms: Optional[float]
    latency_p95_ms: Optional[float]
    operator_timed: int
    operator_s_median: Optional[float]
    operator_s_mean: Optional[float]


class PilotGroupOut(PilotMetricsOut):
    key: str = Field(..., description="The group: a day, a week, a version's fingerprint, a mode or a category.")
    label: Optional[str] = Field(None, description="By version: its registry name with the fingerprint beside it.")


class PilotSummaryOut(_Out):
    definitions: dict[str, str]
    group_by: str
    k: Optional[int]
    groups: list[PilotGroupOut]
    overall: PilotMetricsOut
    review: Optional[dict] = Field(
        None, description="Rates over the queries the review queue drew: weighted (all traffic), plain, uniform slice."
    )


# ----- the operations console (models:admin) -----------------------------------------------------
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class CycleIn(BaseModel):
    start: bool = Field(False, description="Begin a cycle now, whatever the policy's trigger says.")
    reason: Reason = Field(..., description="Why, for the audit log.")


class StateIn(BaseModel):
    to: Literal["canary", "active", "deprecated", "retired", "staged"] = Field(..., description="The new state.")
    reason: Reason = Field(..., description="Why, for the registry's history and the audit log.")
    force: bool = Field(False, description="To active despite the quality gate (recorded as forced).")


class RolloutIn(BaseModel):
    canary_share: Optional[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        None, description="The share of searches a canary answers (null: the service's own setting)."
    )
    interleave: Optional[Annotated[list[str], Field(min_length=2, max_length=2)]] = Field(
        None, description="Two served versions to compare by interleaving (null: none)."
    )
    interleave_share: Optional[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        None, description="The share of searches the pair merges (null: all of them)."
    )
    reason: Reason = Field(..., description="Why, for the registry's history and the audit log.")
