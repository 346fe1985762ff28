"""``isacir backup`` and ``isacir restore``: a consistent copy of a serving install, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import JSON_HELP, app, emit_json, err


@app.command("backup")
def backup_cmd(
    gallery: Path = typer.Option(..., help="The gallery folder (every live generation is included)."),
    out: Path = typer.Option(..., help="The archive to write (.tar); it appears only when complete."),
    registry: Optional[Path] = typer.Option(None, help="The model registry (default: GALLERY/models)."),
    feedback_db: Optional[str] = typer.Option(
        None,
        "--feedback-db",
        help="The query and feedback log: a SQLite file or a postgresql:// URL (pg_dump); default "
        "GALLERY/feedback.sqlite.",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Back up a gallery, its registry and its feedback log while the service keeps writing."""
    from ..backup import backup

    manifest = backup(gallery, out, registry=registry, feedback_db=feedback_db)
    for name, g in manifest["generations"].items():
        index = "with its index" if g["index_generation"] is not None else "index rebuilt on restore"
        err.print(f"generation {name}: {g['items']} items at generation {g['generation']} ({index})")
    if manifest["feedback"] is not None:
        err.print(f"feedback log ({manifest['feedback']['kind']}): {manifest['feedback']['counts']}")
    if manifest["registry"] is not None:
        err.print(f"registry: {manifest['registry']['versions']} version(s)")
    err.print(f"[green]wrote[/] {out}: {len(manifest['files'])} files, {manifest['bytes'] / 1e6:.1f} MB")
    if as_json:
        emit_json({k: v for k, v in manifest.items() if k not in ("files", "links")} | {"out": str(out)})


@app.command("restore")
def restore_cmd(
    archive: Path = typer.Argument(..., help="A backup from `isacir backup`."),
    out: Path = typer.Option(..., help="An empty folder: the gallery lands in OUT/gallery."),
    feedback_db: Optional[str] = typer.Option(
        None, "--feedback-db", help="For a PostgreSQL log: the (empty) database to restore it into."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Restore a backup into an empty folder, then verify every generation and count the log."""
    from ..backup import restore

    report = restore(archive, out, feedback_db=feedback_db)
    for name, g in report["generations"].items():
        err.print(f"generation {name}: {g['items']} items, verified ({g['paths_moved']} upload paths moved)")
    if "feedback" in report:
        err.print(f"feedback log at {report['feedback']['spec']}: {report['feedback']['counts']}")
    err.print(f"[green]restored[/] into {report['gallery']}; serve it with: isacir serve --gallery {report['gallery']}")
    if as_json:
        emit_json(report)
