"""``isacir edge-update``: a device fetches the server's active model and switches to it safely.

The order matters, so that a device never runs a model it has not checked:
  1. read ``GET /v1/edge/manifest`` (version, fingerprint, sha256, size, url);
  2. download the package, resuming a partial download with an HTTP range request;
  3. check its size and sha256 against the manifest;
  4. unpack it beside the installed versions and check it: the fingerprint is the manifest's,
     the export's parity report passed, and the model loads and makes finite tokens of the
     stated shape in ONNX Runtime here;
  5. switch the ``EDGE`` symlink with one atomic rename, keeping the previous version for
     ``--rollback``.
Payloads from the previous version keep being accepted by the server until that version is
retired, so a device that updates mid-session keeps working. Imports no torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from .package import EdgePackageError, extract_package, sha256_file
from .runner import EDGE_CONFIG, EdgeEncoder

#: the manifest's version name becomes a folder name: only these characters, as in the registry
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MANIFEST_KEYS = ("version", "fingerprint", "sha256", "size", "url")
_CHUNK = 1 << 16


class EdgeUpdateError(RuntimeError):
    pass


def versions_dir(edge: Path) -> Path:
    return edge.parent / f"{edge.name}.versions"


def _read_state(edge: Path) -> dict:
    path = versions_dir(edge) / "state.json"
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except ValueError as exc:
        raise EdgeUpdateError(f"{path} is damaged ({exc}); it is only ever replaced whole") from None


def _write_state(edge: Path, state: dict) -> None:
    path = versions_dir(edge) / "state.json"
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(state, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def installed(edge: Path) -> dict | None:
    """The ``edge.json`` of the model ``EDGE`` points to, or None when nothing is installed."""
    cfg = edge / EDGE_CONFIG
    return json.loads(cfg.read_text()) if cfg.is_file() else None


def _request(url: str, api_key: str | None, headers: dict[str, str] | None = None, timeout: float = 60.0) -> Any:
    req = urllib.request.Request(url, headers={**(headers or {}), **({"X-API-Key": api_key} if api_key else {})})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310  (the URL is the operator's server)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read().decode()).get("detail", "")
        except ValueError:
            detail = ""
        raise EdgeUpdateError(f"{url}: HTTP {exc.code}{': ' + detail if detail else ''}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EdgeUpdateError(f"cannot reach {url}: {exc}") from None


def fetch_manifest(server: str, api_key: str | None, timeout: float = 60.0) -> dict:
    with _request(server.rstrip("/") + "/v1/edge/manifest", api_key, timeout=timeout) as resp:
        try:
            manifest = json.loads(resp.read().decode())
        except ValueError as exc:
            raise EdgeUpdateError(f"the manifest is not JSON: {exc}") from None
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise EdgeUpdateError(f"the manifest lacks {', '.join(missing)}: {manifest}")
    if not _SAFE_NAME.match(str(manifest["version"])):
        raise EdgeUpdateError(f"the manifest's version {manifest['version']!r} is not a safe version name")
    return manifest


def download(url: str, dest: Path, api_key: str | None, size: int, progress: bool = True) -> Path:
    """Download to ``dest``, resuming what an interrupted run left there (HTTP range request)."""
    from ..progress import progress_bar

    have = dest.stat().st_size if dest.is_file() else 0
    if have > size:  # not a prefix of this package: start over
        dest.unlink()
        have = 0
    if have == size:
        return dest
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _request(url, api_key, headers) as resp:
        if resp.status == 200 and have:  # the server ignored the range: take the whole body again
            have = 0
        mode = "ab" if have else "wb"
        bar = progress_bar(total=size, initial=have, desc="edge package", unit="B", disable=not progress)
        with open(dest, mode) as f, bar:
            while block := resp.read(_CHUNK):
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    return dest


def check_package(folder: Path, manifest: dict) -> dict:
    """The unpacked package belongs to the manifest, passed its export's parity check, and runs here."""
    cfg = json.loads((folder / EDGE_CONFIG).read_text())
    if cfg.get("query_encoder_fingerprint") != manifest["fingerprint"]:
        raise EdgeUpdateError(
            f"the package holds query encoder {cfg.get('query_encoder_fingerprint')}, but the manifest names "
            f"{manifest['fingerprint']}"
        )
    ver = cfg.get("verification") or {}
    diff, tol = ver.get("onnx_vs_torch_max_abs_diff"), ver.get("tolerance")
    if diff is None or tol is None or not float(diff) <= float(tol):
        raise EdgeUpdateError(f"the package's parity report does not show a passed export check: {ver}")
    checked: dict[str, Any] = {"parity_max_abs_diff": diff, "parity_tolerance": tol}
    for variant in cfg["files"]:
        enc = EdgeEncoder(folder, variant=variant, threads=1)
        size = int(cfg["preprocess"]["image_size"])
        probe = np.full((size, size, 3), 127, np.uint8)
        from PIL import Image

        tokens = enc.tokens([Image.fromarray(probe)])
        if tokens.shape != (1, enc.num_tokens, enc.dim) or not np.isfinite(tokens).all():
            raise EdgeUpdateError(
                f"the {variant} model makes tokens of shape {tokens.shape} (finite: "
                f"{bool(np.isfinite(tokens).all())}); edge.json states {enc.num_tokens}x{enc.dim}"
            )
        checked[f"{variant}_runs"] = True
    return checked


def _switch(edge: Path, name: str) -> None:
    """Point ``EDGE`` at ``EDGE.versions/NAME`` with one atomic rename of a symlink."""
    vdir = versions_dir(edge)
    link = vdir / f".link-{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(vdir / name, edge.parent))
    os.replace(link, edge)


def _adopt_plain_folder(edge: Path) -> str | None:
    """A first update over a folder ``export-edge`` wrote: move it in as a version (the previous one)."""
    if not edge.exists() or edge.is_symlink():
        return None
    cfg = installed(edge)
    if cfg is None:
        raise EdgeUpdateError(f"{edge} exists but is not an edge model (no {EDGE_CONFIG}); move it away first")
    name = f"local-{cfg['query_encoder_fingerprint'][:12]}"
    target = versions_dir(edge) / name
    if target.exists():
        shutil.rmtree(target)
    os.rename(edge, target)
    _switch(edge, name)
    return name


def update(
    server: str, edge: str | os.PathLike, api_key: str | None = None, progress: bool = True, keep: int = 2
) -> dict:
    """Bring ``edge`` to the server's active version; returns what was done."""
    edge = Path(edge)
    vdir = versions_dir(edge)
    vdir.mkdir(parents=True, exist_ok=True)
    manifest = fetch_manifest(server, api_key)
    state = _read_state(edge)
    adopted = _adopt_plain_folder(edge)
    if adopted is not None:
        state = {"current": adopted, "previous": state.get("current")}
        _write_state(edge, state)
    now = installed(edge)
    if now is not None and now.get("query_encoder_fingerprint") == manifest["fingerprint"]:
        return {"updated": False, "version": manifest["version"], "fingerprint": manifest["fingerprint"]}
    partial = vdir / f".partial-{manifest['sha256'][:16]}"
    url = manifest["url"] if "://" in manifest["url"] else server.rstrip("/") + manifest["url"]
    t0 = time.monotonic()
    download(url, partial, api_key, int(manifest["size"]), progress)
    got_size, got_sha = partial.stat().st_size, sha256_file(partial)
    if got_size != int(manifest["size"]) or got_sha != manifest["sha256"]:
        partial.unlink(missing_ok=True)
        raise EdgeUpdateError(
            f"the download does not match the manifest: {got_size} bytes, sha256 {got_sha}; expected "
            f"{manifest['size']} bytes, sha256 {manifest['sha256']} (deleted; run again)"
        )
    name = str(manifest["version"])
    staging = vdir / f".new-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        extract_package(partial, staging)
        checked = check_package(staging, manifest)
    except (EdgePackageError, EdgeUpdateError, OSError, ValueError, KeyError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise EdgeUpdateError(f"package {name} refused, nothing switched: {exc}") from None
    final = vdir / name
    if final.exists():
        if state.get("current") == name:
            raise EdgeUpdateError(f"{final} is in use but is not the manifest's model; remove {edge} and update again")
        shutil.rmtree(final)
    os.rename(staging, final)
    _switch(edge, name)
    previous = state.get("current")
    _write_state(edge, {"current": name, "previous": previous if previous != name else state.get("previous")})
    partial.unlink(missing_ok=True)
    _prune(edge, keep)
    return {
        "updated": True,
        "version": name,
        "fingerprint": manifest["fingerprint"],
        "previous": previous,
        "sha256": got_sha,
        "bytes": got_size,
        "seconds": round(time.monotonic() - t0, 3),
        "checks": checked,
    }


def rollback(edge: str | os.PathLike) -> dict:
    """Switch ``edge`` back to the version it used before the last update."""
    edge = Path(edge)
    state = _read_state(edge)
    previous = state.get("previous")
    if not previous or not (versions_dir(edge) / previous).is_dir():
        raise EdgeUpdateError(f"{edge} has no previous version to roll back to")
    _switch(edge, previous)
    _write_state(edge, {"current": previous, "previous": state.get("current")})
    return {"rolled_back_to": previous, "from": state.get("current")}


def _prune(edge: Path, keep: int) -> None:
    """Remove installed versions other than the current and previous ones (and stale downloads)."""
    state = _read_state(edge)
    wanted = {state.get("current"), state.get("previous")} if keep >= 2 else {state.get("current")}
    for p in versions_dir(edge).iterdir():
        if p.name == "state.json" or p.name in wanted:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith((".partial-", ".link-")):
            p.unlink(missing_ok=True)
