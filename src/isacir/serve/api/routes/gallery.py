"""The gallery over HTTP: adding and removing images (every live generation), reading items."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from ...._fs import atomic_write_bytes
from ....errors import ImageDecodeError
from ...schemas import IMAGE_CONTENT, ITEM_ID, errors
from ..deps import StateDep, api_error, decode_upload, item_json, item_path, require

router = APIRouter(tags=["gallery"])

UPLOAD_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


def _ext_from_bytes(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return UPLOAD_EXTENSIONS.get(im.format or "", ".png")


def _parse_metadata(raw: Optional[str], n: int) -> Optional[list[dict]]:
    """One metadata object per uploaded image (None: no metadata given)."""
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise api_error(422, f"metadata is not valid JSON: {exc}", "bad_metadata") from None
    objects = value if isinstance(value, list) else [value] * n
    if len(objects) != n:
        raise api_error(422, f"metadata lists {len(objects)} objects for {n} images", "bad_metadata")
    if not all(isinstance(o, dict) for o in objects):
        raise api_error(422, "metadata must be a JSON object, or a list of one object per image", "bad_metadata")
    return objects


@router.post("/v1/gallery", dependencies=require("gallery:write"), responses=errors(415))
def add_images(
    request: Request,
    state: StateDep,
    images: list[UploadFile] = File(..., min_length=1, description="One or more images to add."),
    metadata: Optional[str] = Form(
        None,
        max_length=1_000_000,
        description='Metadata stored with the images: a JSON object for all of them (e.g. {"title": "Red '
        'dress", "category": "dresses"}), or a JSON list with one object per image, in order.',
    ),
) -> JSONResponse:
    """Add images; bad members are reported, the rest are indexed (safe while searches run)."""
    per_image = _parse_metadata(metadata, len(images))
    saved, rejected, meta_of = [], [], {}
    for n_up, up in enumerate(images):
        name = up.filename or "upload"
        try:
            data = up.file.read()
            decode_upload(data, name)
        except HTTPException as exc:
            rejected.append({"filename": name, "status": exc.status_code, **exc.detail})
            continue
        ext = _ext_from_bytes(data)
        path = state.upload_dir / f"{hashlib.sha256(data).hexdigest()[:24]}{ext}"
        if not path.exists():
            atomic_write_bytes(path, data)
        saved.append((name, path))
        if per_image is not None:
            meta_of[str(path)] = per_image[n_up]
    if not saved:
        status = 415 if all(r["status"] == 415 for r in rejected) else 422
        return JSONResponse(
            {
                "detail": "no image in the request could be read",
                "code": "no_images",
                "added": [],
                "rejected": rejected,
            },
            status_code=status,
        )
    # an explicit upload brings back a file that was deleted before (no tombstone applies)
    # every live generation gets the images (each encoded by its own foundation), so devices on
    # an older foundation find them too; the serving generation's report is the one returned
    reports = [
        gallery.index([str(p) for _, p in saved], fnd, progress=False, restore=True, metadata_by_path=meta_of)
        for gallery, fnd in state.live_generations()
    ]
    report = reports[0]
    ids = state.gallery.ids_for_paths([str(p) for _, p in saved])
    added = [{"filename": n, "id": ids.get(str(p))} for n, p in saved]
    state.audit.record(request.state.actor, "gallery.add", items=added, via="api")
    return JSONResponse(
        {"added": added, "rejected": rejected, "report": report.to_dict(), "gallery_items": state.gallery.count()}
    )


@router.delete("/v1/gallery/{item_id}", dependencies=require("gallery:write"), responses=errors(404))
def remove_image(request: Request, state: StateDep, item_id: int = ITEM_ID) -> dict:
    path = state.gallery.path_of(item_id)
    if path is None:
        raise api_error(404, f"no gallery item {item_id}", "not_found")
    for gallery, _ in state.live_generations():
        gallery.remove([item_id])
    state.audit.record(request.state.actor, "gallery.remove", ids=[item_id], paths=[path], via="api")
    state.forget_thumbnails(item_id)
    p = Path(path)
    if p.parent.resolve() == state.upload_dir.resolve():
        p.unlink(missing_ok=True)  # uploaded through the API, so ours to delete
    return {"removed": item_id, "gallery_items": state.gallery.count()}


@router.get(
    "/v1/images/{item_id}",
    dependencies=require("images"),
    responses={**errors(404, 410), 200: {"content": IMAGE_CONTENT}},
)
def get_image(state: StateDep, item_id: int = ITEM_ID):
    path = item_path(state, item_id)
    if "::" not in path:
        if not Path(path).is_file():
            raise api_error(410, f"gallery item {item_id} is indexed but its file is gone: {Path(path).name}", "gone")
        return FileResponse(path)
    return Response(state.thumbnail(item_id, path, 4096), media_type="image/jpeg")


@router.get(
    "/v1/images/{item_id}/thumbnail",
    dependencies=require("images"),
    responses={**errors(404, 410), 200: {"content": {"image/jpeg": IMAGE_CONTENT["image/*"]}}},
)
def get_thumbnail(state: StateDep, item_id: int = ITEM_ID, size: int = Query(256, ge=16, le=1024)):
    if not 16 <= size <= 1024:
        raise api_error(422, "thumbnail size must be within 16..1024", "size")
    path = item_path(state, item_id)
    try:
        data = state.thumbnail(item_id, path, size)
    except (ImageDecodeError, OSError) as exc:
        raise api_error(410, f"gallery item {item_id} cannot be read: {exc}", "gone") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/v1/gallery/{item_id}", dependencies=require("images"), responses=errors(404))
def gallery_item(state: StateDep, item_id: int = ITEM_ID) -> dict:
    """One gallery item by id (an operator can open the right item when search did not show it)."""
    return item_json(item_id, item_path(state, item_id))
