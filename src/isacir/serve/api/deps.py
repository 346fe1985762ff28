"""What the routes depend on, injected with ``Depends``: the service state and the caller's key.

Also the few helpers every router answers with: an API error, a decoded upload, an item's JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from fastapi import Depends, HTTPException, Request

from ...data.imageio import load_image
from ...errors import ImageDecodeError
from ..keys import SCOPES, ApiKey, retry_after_header
from ..state import ServiceState


def get_state(request: Request) -> ServiceState:
    """The service this app was created for (``create_app(state)``)."""
    return request.app.state.service


#: a route parameter that receives the service state
StateDep = Annotated[ServiceState, Depends(get_state)]


def api_error(status: int, message: str, code: str) -> HTTPException:
    """An error every client can read: ``{"detail": message for people, "code": code for programs}``."""
    return HTTPException(status_code=status, detail={"detail": message, "code": code})


def require(scope: str | None) -> list[Any]:
    """The dependencies of a keyed route: 401 without a valid key, 403 without ``scope``, 429 over
    the key's rate. The caller's key name is left in ``request.state.actor`` for the audit log."""
    if scope is not None and scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def check(request: Request) -> Optional[ApiKey]:
        keys = get_state(request).keys
        if not keys.enabled:
            request.state.actor = "anonymous"
            return None
        given = request.headers.get("x-api-key") or ""
        bearer = request.headers.get("authorization") or ""
        if not given and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        key = keys.authenticate(given)
        if key is None:
            raise api_error(401, "missing or invalid API key (send X-API-Key or Authorization: Bearer)", "unauthorized")
        if scope is not None and scope not in key.scopes:
            raise api_error(
                403,
                f"key {key.name!r} lacks the {scope!r} scope this route needs "
                f"(it holds: {', '.join(sorted(key.scopes))})",
                "forbidden",
            )
        wait = keys.throttle(key)
        if wait is not None:
            raise HTTPException(
                status_code=429,
                detail={"detail": f"rate limit of key {key.name!r} exceeded; retry later", "code": "rate_limited"},
                headers={"Retry-After": retry_after_header(wait)},
            )
        request.state.actor = key.name
        return key

    return [Depends(check)]


def decode_upload(data: bytes, name: str):
    """An uploaded image, or 415 (not an image we read) / 422 (an image, but damaged)."""
    if not data:
        raise api_error(422, f"{name}: empty upload", "empty")
    try:
        return load_image(data)
    except ImageDecodeError as exc:
        status = 415 if exc.reason in ("unsupported", "corrupt") else 422
        raise api_error(status, f"{name}: {exc}", exc.reason) from None


def item_path(state: ServiceState, item_id: int) -> str:
    """A gallery item's recorded path, or 404. Only paths recorded in the gallery database are ever
    opened: ids are integers, so a request cannot name a file."""
    path = state.gallery.path_of(item_id)
    if path is None:
        raise api_error(404, f"no gallery item {item_id}", "not_found")
    return path


def item_json(item_id: int, path: str) -> dict:
    """What a client gets for one gallery item: its id, file name and image links."""
    from pathlib import Path

    return {
        "id": item_id,
        "name": Path(path.split("::")[-1]).name,
        "image_url": f"/v1/images/{item_id}",
        "thumbnail_url": f"/v1/images/{item_id}/thumbnail",
    }


def time_range(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """``from``/``to`` query parameters as unix seconds, or 422 ``time_range``."""
    from ...pilot import parse_time

    try:
        return parse_time(since), parse_time(until)
    except ValueError as exc:
        raise api_error(422, str(exc), "time_range") from None
