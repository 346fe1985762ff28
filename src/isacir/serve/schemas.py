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
