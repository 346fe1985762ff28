"""``isacir models``: the model registry (add, ls, show, promote, deprecate, retire)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import IsacirError
from ._app import JSON_ALWAYS_HELP, emit_json, err, models_app, out

REGISTRY_HELP = "Registry folder (default: GALLERY/models)."
GALLERY_HELP = "The gallery whose registry (GALLERY/models) to use."
LS_FIELDS = ("version", "kind", "fingerprint", "foundation_fingerprint", "state", "parent", "created")


def _registry(registry: Optional[Path], gallery: Optional[Path]):
    from ..registry import Registry

    if registry is not None:
        return Registry(registry)
    if gallery is not None:
        return Registry.of_gallery(gallery)
    raise IsacirError("name the registry: --registry DIR, or --gallery G for G/models")


def _actor() -> str:
    from ..audit import cli_actor

    return cli_actor()


@models_app.command("add")
def models_add(
    version: str = typer.Option(..., help="The version's name, e.g. 2026-12-qe-b0-v3."),
    query_encoder: Path = typer.Option(..., help="The query encoder folder to register (copied in)."),
    edge: Optional[Path] = typer.Option(None, help="Its exported edge package (isacir export-edge)."),
    adapter: Optional[Path] = typer.Option(None, help="A server-side query adapter for it (isacir adapt)."),
    reason: str = typer.Option("", help="Why, for the history."),
    registry: Optional[Path] = typer.Option(None, help=REGISTRY_HELP),
    gallery: Optional[Path] = typer.Option(None, help=GALLERY_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Register a query-side version as staged (fingerprints, foundation and parent recorded)."""
    record = _registry(registry, gallery).add(version, query_encoder, edge, adapter, actor=_actor(), reason=reason)
    err.print(f"added {version} ({record['fingerprint']}) as staged", highlight=False)
    if as_json:
        emit_json(record)


@models_app.command("ls")
def models_ls(
    registry: Optional[Path] = typer.Option(None, help=REGISTRY_HELP),
    gallery: Optional[Path] = typer.Option(None, help=GALLERY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Last line: a JSON list, one object per version."),
) -> None:
    """Every version with its state."""
    versions = _registry(registry, gallery).versions()
    if as_json:
        emit_json([{k: v.get(k) for k in LS_FIELDS} for v in versions])
        return
    table = Table(*LS_FIELDS[:-1])
    for v in versions:
        table.add_row(*(str(v.get(k)) for k in LS_FIELDS[:-1]))
    out.print(table)


@models_app.command("show")
def models_show(
    version: str = typer.Argument(...),
    registry: Optional[Path] = typer.Option(None, help=REGISTRY_HELP),
    gallery: Optional[Path] = typer.Option(None, help=GALLERY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """One version's record and its history (JSON)."""
    reg = _registry(registry, gallery)
    emit_json({**reg.get(version), "history": reg.history(version)})


def _move(version: str, state: str, registry, gallery, reason: str, report=None, force: bool = False) -> None:
    record = _registry(registry, gallery).set_state(
        version, state, actor=_actor(), reason=reason, report=report, force=force
    )
    err.print(f"{version} is {record['state']}", highlight=False)
    emit_json(record)


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(...),
    to: str = typer.Option(..., "--to", help="canary | active"),
    report: Optional[Path] = typer.Option(
        None, help="Evaluation report against the active version (default: the one the version was added with)."
    ),
    force: bool = typer.Option(False, help="Promote to active despite the quality gate (needs --reason)."),
    reason: str = typer.Option("", help="Why, for the history."),
    registry: Optional[Path] = typer.Option(None, help=REGISTRY_HELP),
    gallery: Optional[Path] = typer.Option(None, help=GALLERY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Move a version to canary or active; active goes through the quality gate, and the
    previous active version of its foundation becomes deprecated."""
    if to not in ("canary", "active"):
        raise IsacirError(f"--to is canary or active, not {to!r}")
    _move(version, to, registry, gallery, reason, report, force)


@models_app.command("deprecate")
def models_deprecate(
    version: str = typer.Argument(...),
    reason: str = typer.Option("", help="Why, for the history."),
    registry: Optional[Path] = typer.Option(None, help=REGISTRY_HELP),
    gallery: Optional[Path] = typer.Option(None, help=GALLERY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Deprecate a version: still served, with an upgrade notice in its answers."""
    _move(version, "deprecated", registry, gallery, reason)


@models_app.command("retire")
def models_retire(
    version: str = typer.Argument(...),
    reason: str = typer.Option("", help="Why, for the history."),
    registry: Optional[Path] = typer.Option(None, help=REGISTRY_HELP),
    gallery: Optional[Path] = typer.Option(None, help=GALLERY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Retire a version: its payloads are refused, naming the version to update to."""
    _move(version, "retired", registry, gallery, reason)
