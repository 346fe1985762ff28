"""``isacir weights``: bring model weights into a network without internet."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import JSON_HELP, WEIGHTS_DIR_ENV, app, emit_json, err

weights_app = typer.Typer(
    help="Pack model weights where there is internet, unpack them where there is none.", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")

_WEIGHTS_DIR = typer.Option(
    None,
    "--weights-dir",
    envvar=WEIGHTS_DIR_ENV,
    help="The folder to unpack into (its hub/ is what `isacir --weights-dir` loads from); default: this "
    "machine's Hugging Face cache.",
)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@weights_app.command("pack")
def weights_pack(
    out: Path = typer.Option(..., help="The bundle to write (.tar); it appears only when complete."),
    foundation: list[str] = typer.Option(
        [], "--foundation", help="A foundation name, e.g. openclip:ViT-L-14/openai (repeatable)."
    ),
    backbone: list[str] = typer.Option(
        [], "--backbone", help="A light backbone with its pretrained weights, e.g. efficientnet_b0 (repeatable)."
    ),
    cache_dir: Optional[Path] = typer.Option(
        None, help="The hub cache to take what is here already from (default: the one the loaders use)."
    ),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Download what the cache lacks (off: only what is cached)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Gather the models' weights into one archive with a sha256 manifest, after checking that each
    loads from it with the network off."""
    from ..weights import ModelRef, pack

    refs = [ModelRef("foundation", f) for f in foundation] + [ModelRef("backbone", b) for b in backbone]
    err.print(f"packing {len(refs)} model(s) into {out} (loading each, then again offline) ...")
    manifest = pack(refs, out, cache_dir=cache_dir, download=download)
    for m in manifest["models"]:
        err.print(f"  {m['kind']} {m['name']}: fingerprint {m['fingerprint']}")
    err.print(
        f"[green]wrote[/] {out}: {len(manifest['files'])} files, {_size(manifest['bytes'])}, "
        f"repositories {', '.join(manifest['repos'])}"
    )
    if as_json:
        emit_json({k: v for k, v in manifest.items() if k not in ("files", "links")} | {"out": str(out)})


@weights_app.command("unpack")
def weights_unpack(
    bundle: Path = typer.Argument(..., help="A bundle from `isacir weights pack`."),
    weights_dir: Optional[Path] = _WEIGHTS_DIR,
    check: bool = typer.Option(
        True, "--check/--no-check", help="Load every model offline afterwards and compare its fingerprint."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check every file of a bundle against its manifest, then put the weights where the loaders find them."""
    from ..weights import unpack

    report = unpack(bundle, weights_dir, check=check)
    checked = " and loaded offline with the packed fingerprints" if "checked" in report else ""
    err.print(
        f"[green]unpacked[/] {len(report['models'])} model(s) ({_size(report['bytes'])}) into {report['hub']}{checked}"
    )
    if weights_dir is not None:
        err.print(f"load with: isacir --weights-dir {weights_dir} ... (or ISACIR_WEIGHTS_DIR={weights_dir})")
    else:
        err.print("load with the network off: HF_HUB_OFFLINE=1 isacir ...")
    if as_json:
        emit_json(report)


@weights_app.command("show")
def weights_show(
    bundle: Path = typer.Argument(..., help="A bundle from `isacir weights pack`."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """What a bundle carries: its models, fingerprints, repositories and size."""
    from ..weights import read_manifest

    manifest = read_manifest(bundle)
    for m in manifest["models"]:
        err.print(f"{m['kind']} {m['name']}: fingerprint {m['fingerprint']}")
    err.print(f"{len(manifest['files'])} files, {_size(manifest['bytes'])}, packed {manifest['created']}")
    if as_json:
        emit_json({k: v for k, v in manifest.items() if k not in ("files", "links")})
