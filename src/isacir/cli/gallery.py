"""``isacir index``, ``isacir gallery`` and ``isacir search``: the gallery side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import IsacirError
from ..gallery.stores import INDEX_HELP
from ._app import DEVICE_HELP, JSON_ALWAYS_HELP, JSON_HELP, app, emit_json, err, gallery_app, out


@app.command("index")
def index_cmd(
    paths: Optional[list[str]] = typer.Argument(
        None, help="Folders, .txt file lists or .tar shards to index (none with --generation: its items are copied)."
    ),
    gallery: Path = typer.Option(..., help="Gallery folder (created on first use)."),
    generation: Optional[str] = typer.Option(
        None,
        help="Build (or bring up to date) this generation of the gallery's items with --foundation, beside the "
        "serving one: a foundation upgrade with no downtime.",
    ),
    foundation: Optional[str] = typer.Option(None, help="Large model; required for a new gallery."),
    store: str = typer.Option("faiss", help="faiss | milvus://./gallery.db | milvus://host:19530"),
    index: Optional[str] = typer.Option(
        None, "--index", help=f"FAISS index family, remembered by the gallery: {INDEX_HELP}. Default: keep (auto)."
    ),
    prune: bool = typer.Option(False, help="Remove entries whose files disappeared from PATHS."),
    batch_size: int = typer.Option(32),
    workers: int = typer.Option(2, help="DataLoader workers decoding images while the model encodes."),
    metadata: Optional[str] = typer.Option(
        None,
        help='A JSON object stored with every added image, or a .jsonl file of objects with a "path" each '
        "(title, SKU, URL...; relative paths are read from the file's folder).",
    ),
    ray: Optional[str] = typer.Option(None, help="Embed with Ray Data: 'local' or a cluster address."),
    ray_actors: int = typer.Option(2, help="Ray embedding actors."),
    ray_gpus_per_actor: float = typer.Option(0.0, help="GPUs each Ray actor requests (and runs the model on)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True),
    no_wait: bool = typer.Option(False, "--no-wait", help="Fail at once when another process is changing the gallery."),
    restore: bool = typer.Option(False, "--restore", help="Index again the files under PATHS that were removed by id."),
    nice: int = typer.Option(
        10,
        help="Run at this niceness: a service searching the same machine keeps its latency; alone the "
        "run is as fast (0: normal priority).",
    ),
) -> None:
    """Embed images with the foundation's image encoder into a gallery (incremental, crash-safe)."""
    import os

    from ..foundation import create_foundation
    from ..gallery import Gallery

    if nice > 0:
        os.nice(nice)
    if generation is not None:
        return _build_generation(gallery, generation, foundation, paths, batch_size, device, progress, as_json)
    if not paths:
        raise typer.BadParameter("name the folders, file lists or shards to index (PATHS)")
    meta = None
    by_path = None
    if metadata and metadata.endswith(".jsonl"):
        by_path = read_metadata_jsonl(Path(metadata))
    elif metadata:
        try:
            meta = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise IsacirError(f"--metadata is not valid JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise IsacirError("--metadata must be a JSON object")
    if foundation is None:
        if not (gallery / "gallery.json").is_file():
            raise IsacirError(f"{gallery} is a new gallery: pass --foundation")
        from ..gallery.generations import Generations

        foundation = Generations(gallery).serving()["foundation_id"]
    fnd = create_foundation(foundation, device=device)
    g = Gallery.open_or_create(gallery, fnd, store, index=index)
    _writer_settings(g, no_wait)
    encoder = None
    if ray:
        from ..gallery.distributed import ray_encoder

        encoder = ray_encoder(
            foundation,
            address=None if ray == "local" else ray,
            actors=ray_actors,
            batch_size=batch_size,
            gpus_per_actor=ray_gpus_per_actor,
        )
    report = g.index(
        paths,
        fnd,
        checkpoint=True,  # a batch job leaves the index persisted and the change log short
        prune=prune,
        batch_size=batch_size,
        num_workers=workers,
        metadata=meta,
        progress=progress,
        encoder=encoder,
        restore=restore,
        metadata_by_path=by_path,
    )
    if report.added or report.removed:
        from ..audit import AuditLog, cli_actor

        AuditLog.of_gallery(gallery).record(
            cli_actor(), "gallery.index", added=report.added, removed=report.removed, sources=paths, via="cli"
        )
    err.print(report.summary(), highlight=False)
    for reason, files in sorted(report.skipped.items()):
        for f in files[:10]:
            err.print(f"  skipped ({reason}) {f}", highlight=False)
    synced = (
        _sync_other_generations(gallery, g.generation_name, batch_size, device, progress)
        if (report.added or report.updated or report.removed)
        else {}
    )
    if as_json:
        emit_json({**report.to_dict(), **({"generations": synced} if synced else {})})


def _sync_other_generations(gallery: Path, serving: str, batch_size: int, device: str, progress: bool) -> dict:
    """Keep every other live generation holding the same items (each with its own foundation), so
    devices still on an older foundation find what was just indexed."""
    from ..foundation import create_foundation
    from ..gallery.generations import Generations

    gens = Generations(gallery)
    out = {}
    for g in gens.live():
        if g["name"] == serving:
            continue
        err.print(f"bringing generation {g['name']} ({g['foundation_id']}) up to date", highlight=False)
        fnd = create_foundation(g["foundation_id"], device=device)
        out[g["name"]] = gens.build(g["name"], fnd, batch_size=batch_size, progress=progress, actor=_actor())
    return out


def _actor() -> str:
    from ..audit import cli_actor

    return cli_actor()


def _build_generation(
    gallery: Path,
    name: str,
    foundation: Optional[str],
    paths: Optional[list[str]],
    batch_size: int,
    device: str,
    progress: bool,
    as_json: bool,
) -> None:
    from ..foundation import create_foundation
    from ..gallery.generations import Generations

    if paths:
        raise typer.BadParameter("--generation copies the gallery's items; index new PATHS into the gallery first")
    gens = Generations(gallery)
    if foundation is None:
        try:
            foundation = gens.get(name)["foundation_id"]
        except IsacirError:
            raise typer.BadParameter("a new generation needs --foundation (the model it is built with)") from None
    fnd = create_foundation(foundation, device=device)
    report = gens.build(name, fnd, batch_size=batch_size, progress=progress, actor=_actor())
    failed = sum(report["failed"].values())
    err.print(
        f"generation {name}: {report['items']} of {report['source_items']} items ({report['encoded']} encoded, "
        f"{report['removed']} removed{f', {failed} failed' if failed else ''}); state {report['state']}",
        highlight=False,
    )
    if as_json:
        emit_json(report)


def read_metadata_jsonl(path: Path) -> dict[str, dict]:
    """``{"path": ..., "title": ...}`` per line -> canonical path -> the other fields."""
    import os

    if not path.is_file():
        raise IsacirError(f"--metadata file not found: {path}")
    out: dict[str, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IsacirError(f"{path}:{n}: not JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
            raise IsacirError(f'{path}:{n}: each line must be a JSON object with a "path" string')
        where = obj.pop("path")
        base, sep, member = where.partition("::")
        full = base if os.path.isabs(base) else str(path.parent / base)
        out[os.path.realpath(full) + sep + member] = obj
    return out


#: every gallery verb names its gallery with --gallery, as index, search and serve do; the verbs
#: that take nothing else also accept it as their one positional argument (the older spelling)
GALLERY_OPTION = typer.Option(None, "--gallery", help="The gallery folder.", show_default=False)
GALLERY_POSITIONAL = typer.Argument(None, help="The gallery folder (or --gallery).", show_default=False)


def _gallery_of(positional: Optional[Path], option: Optional[Path]) -> Path:
    if positional is not None and option is not None and positional != option:
        raise IsacirError(f"two galleries named: {positional} and --gallery {option}; name one")
    chosen = option or positional
    if chosen is None:
        raise typer.BadParameter("name the gallery folder", param_hint="--gallery")
    return chosen


@gallery_app.command("info")
def gallery_info(
    gallery: Optional[Path] = GALLERY_POSITIONAL,
    gallery_opt: Optional[Path] = GALLERY_OPTION,
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Foundation, store, size and index parameters of a gallery."""
    gallery = _gallery_of(gallery, gallery_opt)
    from ..gallery import Gallery

    emit_json(Gallery.open(gallery).describe())


@gallery_app.command("generations")
def gallery_generations(
    gallery: Optional[Path] = GALLERY_POSITIONAL,
    gallery_opt: Optional[Path] = GALLERY_OPTION,
    as_json: bool = typer.Option(False, "--json", help="One object per generation."),
) -> None:
    """The gallery's generations (one per foundation), their states and which one serves."""
    gallery = _gallery_of(gallery, gallery_opt)
    from ..gallery.generations import Generations

    rows = Generations(gallery).all()
    if as_json:
        emit_json(rows)
        return
    table = Table("generation", "state", "foundation", "fingerprint", "path")
    for g in rows:
        table.add_row(
            g["name"] + (" *" if g["serving"] else ""),
            g["state"],
            g["foundation_id"],
            g["foundation_fingerprint"],
            g["path"],
        )
    out.print(table)


@gallery_app.command("promote-generation")
def gallery_promote_generation(
    name: str = typer.Argument(..., help="The ready generation to serve."),
    gallery: Path = typer.Option(..., help="The gallery folder."),
    reason: str = typer.Option("", help="Recorded in the history."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Switch thin-client searches and new devices to generation NAME, atomically (services follow)."""
    from ..gallery.generations import Generations

    g = Generations(gallery).promote(name, actor=_actor(), reason=reason)
    err.print(f"generation {name} ({g['foundation_id']}) now serves {gallery}", highlight=False)
    emit_json(g)


@gallery_app.command("retire-generation")
def gallery_retire_generation(
    name: str = typer.Argument(..., help="A generation that no longer serves."),
    gallery: Path = typer.Option(..., help="The gallery folder."),
    reason: str = typer.Option("", help="Recorded in the history."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Stop answering from generation NAME and drop its vectors (its devices must have updated)."""
    from ..gallery.generations import Generations

    g = Generations(gallery).retire(name, actor=_actor(), reason=reason)
    err.print(f"generation {name} retired; {g['freed_bytes']:,} bytes freed", highlight=False)
    emit_json(g)


@gallery_app.command("rm")
def gallery_rm(
    ids: list[int] = typer.Argument(..., help="Entry ids (from search results or `gallery ls`)."),
    gallery: Path = typer.Option(...),
    no_wait: bool = typer.Option(False, "--no-wait", help="Fail at once when another process is changing the gallery."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Remove entries by id."""
    from ..audit import AuditLog, cli_actor
    from ..gallery import Gallery

    g = Gallery.open(gallery)
    _writer_settings(g, no_wait)
    paths = {i: g.path_of(i) for i in ids}
    removed = g.remove(ids)
    gone = [i for i, p in paths.items() if p is not None]
    if gone:
        AuditLog.of_gallery(gallery).record(
            cli_actor(), "gallery.remove", ids=gone, paths=[paths[i] for i in gone], via="cli"
        )
    err.print(f"removed {removed} of {len(ids)} ids")
    if as_json:
        emit_json({"removed": removed, "ids": gone, "not_found": [i for i, p in paths.items() if p is None]})


def _writer_settings(g, no_wait: bool) -> None:
    g.wait_for_writer = not no_wait
    g.on_wait = lambda message: err.print(message, highlight=False)


@gallery_app.command("restore")
def gallery_restore(
    ids: list[int] = typer.Argument(..., help="Ids of removed items (`gallery ls-removed`)."),
    gallery: Path = typer.Option(...),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Let removed items back in: the next `isacir index` of their folder adds them again."""
    from ..gallery import Gallery

    paths = Gallery.open(gallery).restore(ids)
    err.print(f"restored {len(paths)}; run `isacir index` on their folder to add them again", highlight=False)
    emit_json({"restored": paths})


@gallery_app.command("ls-removed")
def gallery_ls_removed(
    gallery: Optional[Path] = GALLERY_POSITIONAL,
    gallery_opt: Optional[Path] = GALLERY_OPTION,
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Items removed by id, which re-indexing leaves out."""
    gallery = _gallery_of(gallery, gallery_opt)
    from ..gallery import Gallery

    emit_json(Gallery.open(gallery).tombstones())


@gallery_app.command("rebuild-index")
def gallery_rebuild_index(
    gallery: Optional[Path] = GALLERY_POSITIONAL,
    gallery_opt: Optional[Path] = GALLERY_OPTION,
    index: Optional[str] = typer.Option(None, "--index", help=f"Switch the FAISS index family: {INDEX_HELP}."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Rebuild the vector store from the gallery database (after `verify` reports a difference,
    or to switch the index family)."""
    gallery = _gallery_of(gallery, gallery_opt)
    from ..gallery import Gallery

    g = Gallery.open(gallery)
    _writer_settings(g, False)
    if index is not None and index != g.info.get("index", "auto"):
        g.set_index_kind(index)
    emit_json(g.rebuild_index())


@gallery_app.command("tune")
def gallery_tune(
    gallery: Optional[Path] = GALLERY_POSITIONAL,
    gallery_opt: Optional[Path] = GALLERY_OPTION,
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Tune an IVF index's nprobe again on the real queries the service has seen (no retraining)."""
    gallery = _gallery_of(gallery, gallery_opt)
    from ..gallery import Gallery

    g = Gallery.open(gallery)
    _writer_settings(g, False)
    kept = len(g.tuning_queries())
    err.print(f"{kept} real queries kept for tuning", highlight=False)
    emit_json(g.retune())


@gallery_app.command("verify")
def gallery_verify(
    gallery: Optional[Path] = GALLERY_POSITIONAL,
    gallery_opt: Optional[Path] = GALLERY_OPTION,
    sample: Optional[int] = typer.Option(None, help="Check self-retrieval on N random items (default: all)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check that the database and the vector store agree; exit 1 on any problem."""
    gallery = _gallery_of(gallery, gallery_opt)
    from ..gallery import Gallery

    report = Gallery.open(gallery).verify(sample=sample)
    for line in report["problems"]:
        err.print(f"[red]problem:[/] {line}", highlight=False)
    for line in report["warnings"]:
        err.print(f"[yellow]warning:[/] {line}", highlight=False)
    err.print(
        f"{report['items']} items, {report['store_items']} vectors in the store, generation {report['generation']}; "
        f"self-retrieval checked on {report['self_retrieval_checked']}: {'ok' if report['ok'] else 'NOT OK'}",
        highlight=False,
    )
    if as_json:
        emit_json(report)
    if not report["ok"]:
        raise typer.Exit(1)


@gallery_app.command("ls")
def gallery_ls(
    gallery: Optional[Path] = GALLERY_POSITIONAL,
    gallery_opt: Optional[Path] = GALLERY_OPTION,
    limit: int = typer.Option(20, help="The most entries to list."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List entries (id, path, content hash)."""
    gallery = _gallery_of(gallery, gallery_opt)
    from ..gallery import Gallery

    items = Gallery.open(gallery).items()[:limit]
    if as_json:
        emit_json([{"id": it["id"], "path": it["path"], "hash": it["hash"]} for it in items])
        return
    for item in items:
        out.print(f"{item['id']}\t{item['path']}\t{item['hash']}", highlight=False)


@app.command("search")
def search_cmd(
    gallery: Path = typer.Option(...),
    image: Optional[Path] = typer.Option(None, help="Reference image."),
    text: list[str] = typer.Option([], help="Modifier text (repeat to average several)."),
    query_encoder: Optional[Path] = typer.Option(None, help="Trained query encoder folder (mode isa)."),
    mode: Optional[str] = typer.Option(None, help="isa | image_plus_text | image_only | text_only"),
    k: int = typer.Option(10, "-k", help="Results to return."),
    rerank: int = typer.Option(0, help="Re-rank the top N with the large model (0: off)."),
    foundation: Optional[str] = typer.Option(None, help="Override the gallery's foundation name (same weights)."),
    where: Optional[str] = typer.Option(
        None,
        "--filter",
        help='Only items whose metadata passes: a JSON object, e.g. \'{"category": "shoes"}\' '
        'or \'{"category": ["shoes", "bags"]}\' (fields are ANDed).',
    ),
    keep_copies: bool = typer.Option(
        False,
        "--keep-copies/--no-keep-copies",
        help="Also return gallery items identical to the reference image (left out by default, as the service does).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Last stdout line: JSON list of hits."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Composed search: reference image + modifier text -> top-K gallery images.

    The reference image and its exact copies in the gallery are the reference, not answers: they
    are left out unless --keep-copies."""
    from ..foundation import create_foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder
    from ..search import Retriever

    g = Gallery.open(gallery)
    filt = None
    if where is not None:
        from ..gallery import check_filter

        try:
            filt = json.loads(where)
        except json.JSONDecodeError as exc:
            raise IsacirError(f"--filter is not valid JSON: {exc}") from None
        check_filter(filt)
    fnd = create_foundation(foundation or g.info["foundation_id"], device=device)
    qe = QueryEncoder.from_pretrained(query_encoder, foundation=fnd) if query_encoder else None
    retriever = Retriever(g, fnd, qe)
    if mode is None and qe is None:
        err.print("no --query-encoder given: using the training-free image_plus_text fallback")
    exclude: set[int] = set()
    if image is not None and not keep_copies:
        from ..data.sources import content_hash
        from ..search import exclusions

        try:
            exclude = exclusions(g, reference_hash=content_hash(Path(image).read_bytes()))
        except OSError as exc:
            raise IsacirError(f"--image {image}: {exc.strerror or exc}") from None
    if not text:
        err.print("no --text given: searching for the reference image unchanged")
    hits = retriever.search(
        image=image, text=text or [""], k=k, rerank=rerank, mode=mode, where=filt, exclude=sorted(exclude)
    )
    if rerank:
        ran = retriever.reranker((mode or retriever.default_mode) == "isa")
        err.print(f"re-ranked the top {rerank} with: {ran}", highlight=False)
    if as_json:
        emit_json([h.to_dict() for h in hits])
        return
    table = Table("#", "score", "id", "path")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), f"{h.score:.4f}", str(h.id), h.path)
    out.print(table)
