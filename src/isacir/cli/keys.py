"""``isacir keys``: scoped API keys in a TOML file that a running service reloads."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import JSON_HELP, app, emit_json, err, out

keys_app = typer.Typer(help="Create, rotate and revoke scoped API keys (a .toml file for `serve --api-key-file`).")
app.add_typer(keys_app, name="keys")

_FILE = typer.Option(..., "--file", help="The keys file (.toml); created on first use.")


def _scopes_help() -> str:
    from ..serve.keys import ROLES, SCOPES

    roles = "; ".join(f"{r} = {','.join(s)}" for r, s in ROLES.items() if r != "admin")
    return f"Comma-separated scopes ({', '.join(SCOPES)}) or roles ({roles}; admin = all)."


@keys_app.command("add")
def keys_add(
    file: Path = _FILE,
    name: str = typer.Option(..., help="Who or what holds the key (shown in the audit log)."),
    scopes: str = typer.Option(..., help=_scopes_help()),
    rate: float = typer.Option(50.0, help="Sustained requests per second for this key; 0 for no limit."),
    burst: int = typer.Option(100, help="Requests the key may send at once before the rate applies."),
    as_json: bool = typer.Option(False, "--json", help="Print the key as JSON (last line)."),
) -> None:
    """Add a key and print it once: only its sha256 is stored."""
    from ..serve.keys import add_key

    secret, key = add_key(file, name, scopes, rate if rate > 0 else None, burst)
    _show(secret, key, as_json, f"added key {key.name!r} to {file}")


@keys_app.command("rotate")
def keys_rotate(
    file: Path = _FILE,
    name: str = typer.Option(..., help="The key to give a new secret (scopes and limits stay)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Replace a key's secret; the old one stops working once the service reloads (about a second)."""
    from ..serve.keys import rotate_key

    secret, key = rotate_key(file, name)
    _show(secret, key, as_json, f"rotated key {key.name!r} in {file}")


@keys_app.command("revoke")
def keys_revoke(
    file: Path = _FILE, name: str = typer.Option(...), as_json: bool = typer.Option(False, "--json", help=JSON_HELP)
) -> None:
    """Remove a key."""
    from ..serve.keys import revoke_key

    key = revoke_key(file, name)
    err.print(f"revoked key {key.name!r} from {file}", highlight=False)
    if as_json:
        emit_json({"revoked": key.name, "file": str(file)})


@keys_app.command("ls")
def keys_ls(file: Path = _FILE, as_json: bool = typer.Option(False, "--json")) -> None:
    """Names, scopes and limits of the keys in a file (never a key)."""
    from rich.table import Table

    from ..serve.keys import read_key_file

    keys = read_key_file(file)
    if as_json:
        emit_json(
            [
                {
                    "name": k.name,
                    "scopes": sorted(k.scopes),
                    "rate_per_s": k.rate_per_s,
                    "burst": k.burst,
                    "created": k.created,
                }
                for k in keys
            ]
        )
        return
    table = Table("name", "scopes", "rate/s", "burst", "created")
    for k in keys:
        table.add_row(
            k.name, ",".join(sorted(k.scopes)), str(k.rate_per_s or "-"), str(k.burst or "-"), k.created or "-"
        )
    out.print(table)  # the listing is the result: stdout, as every listing verb


def _show(secret: str, key, as_json: bool, message: str) -> None:
    err.print(f"{message}; scopes: {', '.join(sorted(key.scopes))}", highlight=False)
    if as_json:
        emit_json({"name": key.name, "key": secret, "scopes": sorted(key.scopes)})
    else:
        err.print("the key (shown only now; store it where its user can read it):", highlight=False)
        print(secret)
