"""Backup and restore of a gallery, its model registry and its feedback log, while the service writes.

A backup is a checked archive (:mod:`isacir.archive`) of what an install cannot rebuild:

- each gallery generation's catalogue (``meta.sqlite``: items, their vectors, the change log),
  copied with SQLite's online backup API, which gives one consistent state while writers go on;
- its FAISS index, copied *before* the catalogue. The index is derived from the catalogue and may
  lag it; on open, a gallery replays the catalogue's change log from the index's generation, so an
  older index plus a newer catalogue is a consistent pair as long as the log still reaches back to
  the index (checked here; otherwise the copy is retried, and at worst left out and rebuilt on
  restore). A Milvus store is rebuilt from the catalogue on restore: the catalogue holds every vector;
- the feedback log (SQLite's online backup, or ``pg_dump`` for PostgreSQL), copied *before* the
  catalogues, so every verdict in the backup names an item that is in it too;
- uploaded images, copied *after* the catalogues (the service writes the file before it catalogues
  it, so every catalogued upload's file is there);
- the model registry and the generations ledger, copied under their ledgers' shared locks.

Restore unpacks into an empty folder, checks every file's sha256, moves paths under the old gallery
folder to the new one (item ids stay: the feedback log refers to them), and verifies each generation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._version import __version__
from .archive import extract_checked, inventory, read_archive_manifest, write_archive
from .errors import IsacirError
from .feedback.store import log_counts

BACKUP_FORMAT = 1
MANIFEST_NAME = "isacir-backup.json"
#: where each part lives inside a backup
GALLERY_PART, REGISTRY_PART = "gallery", "registry"
FEEDBACK_DUMP, FEEDBACK_SQLITE = "feedback.pgdump", "feedback.sqlite"
PARTS = [GALLERY_PART, REGISTRY_PART, FEEDBACK_DUMP, FEEDBACK_SQLITE]
#: tries at a consistent (index, catalogue) pair before the index is left out
INDEX_TRIES = 3
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".lock", ".part", ".partial", ".tmp")


class BackupError(IsacirError):
    pass


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite database (WAL included), by SQLite's online backup API."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    source = _read_only(src)
    target = sqlite3.connect(dst)
    try:
        with target:
            source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file in the archive
    finally:
        target.close()
        source.close()


def _skipped(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or name.endswith(_SKIP_SUFFIXES)


def _copy_files(src: Path, dst: Path, exclude: set[Path]) -> None:
    """Copy the regular files under ``src`` (not hidden, lock or temp files, nor ``exclude`` folders)."""
    for path in sorted(src.rglob("*")):
        if any(path == e or e in path.parents for e in exclude) or _skipped(path) or not path.is_file():
            continue
        if any(_skipped(p) for p in path.relative_to(src).parents if p != Path(".")):
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: it was not part of the state
            shutil.copy2(path, target)


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _catalogue_state(db: Path) -> tuple[int, int, int]:
    """``(log floor, generation, items)`` of a copied catalogue."""
    with contextlib.closing(_read_only(db)) as conn:
        state = dict(conn.execute("SELECT key, value FROM state").fetchall())
        items = int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    return int(state.get("log_floor", 0)), int(state.get("generation", 0)), items


def _gallery_folder(src: Path, dst: Path) -> dict[str, Any]:
    """One generation's folder: its FAISS index, then its catalogue, with the pair checked."""
    info = json.loads((src / "gallery.json").read_text())
    faiss = info["store"] == "faiss" and (src / "faiss" / "index.json").is_file()
    index_gen: int | None = None
    for _ in range(INDEX_TRIES):
        if faiss:
            (dst / "faiss").mkdir(parents=True, exist_ok=True)
            # index.json first: index.faiss is replaced before it, so the file read next is at
            # least as new as the generation read here, and replaying is idempotent
            meta = (src / "faiss" / "index.json").read_text()
            shutil.copy2(src / "faiss" / "index.faiss", dst / "faiss" / "index.faiss")
            (dst / "faiss" / "index.json").write_text(meta)
            index_gen = int(json.loads(meta)["generation"])
        _sqlite_copy(src / "meta.sqlite", dst / "meta.sqlite")
        floor, generation, items = _catalogue_state(dst / "meta.sqlite")
        if index_gen is None or floor <= index_gen:
            break
    else:  # a checkpoint trimmed the log past the copied index every time: rebuild on restore
        shutil.rmtree(dst / "faiss", ignore_errors=True)
        index_gen = None
    return {
        "store": info["store"],
        "items": items,
        "generation": generation,
        "index_generation": index_gen,
    }


@contextlib.contextmanager
def _generations(home: Path) -> Iterator[dict[str, Any]]:
    """The generations ledger under its shared lock: no generation is created or promoted meanwhile."""
    from .gallery.home import GenerationLedger

    with GenerationLedger(home).ledger.reading() as data:
        yield data


def backup(
    gallery: str | os.PathLike,
    out: str | os.PathLike,
    registry: str | os.PathLike | None = None,
    feedback_db: str | None = None,
) -> dict[str, Any]:
    """Write a consistent backup of a (possibly serving) gallery to ``out``; returns its manifest.

    ``registry``: the model registry (default ``GALLERY/models`` where it exists). ``feedback_db``:
    the query and feedback log, a SQLite file or a ``postgresql://`` URL (default
    ``GALLERY/feedback.sqlite`` where it exists).
    """
    from .feedback.postgres import is_postgres_url

    home = Path(gallery).resolve()
    if not ((home / "gallery.json").is_file() or (home / "generations.json").is_file()):
        raise BackupError(f"{home} is not a gallery (no gallery.json)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reg = Path(registry).resolve() if registry is not None else home / "models"
    t0 = time.perf_counter()
    manifest: dict[str, Any] = {
        "format": BACKUP_FORMAT,
        "isacir": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "home": str(home),
        "registry_in_gallery": reg == home / "models",
        "feedback": None,
        "generations": {},
        "registry": None,
    }
    with tempfile.TemporaryDirectory(prefix=".isacir-backup-", dir=out.parent) as tmp:
        root = Path(tmp)
        staged = root / GALLERY_PART
        staged.mkdir()
        # 1. the registry: its ledger and the version folders it names, under the ledger's lock
        if (reg / "registry.json").is_file():
            from .registry import Registry

            with Registry(reg).ledger.reading() as data:
                dst = root / REGISTRY_PART
                dst.mkdir()
                shutil.copy2(reg / "registry.json", dst / "registry.json")
                for name in data["versions"]:
                    shutil.copytree(reg / "versions" / name, dst / "versions" / name)
                for extra in reg.iterdir():  # the audit trail and anything else beside the ledger
                    if extra.is_file() and not _skipped(extra) and extra.name != "registry.json":
                        shutil.copy2(extra, dst / extra.name)
            manifest["registry"] = {"versions": len(data["versions"]), "path": str(reg)}
        # 2. the feedback log, before the catalogues: every verdict's item is in the backup
        fb = feedback_db if feedback_db is not None else (str(home / "feedback.sqlite"))
        if is_postgres_url(fb):
            manifest["feedback"] = {"kind": "postgresql", "counts": _pg_dump_counted(fb, root / FEEDBACK_DUMP)}
        elif Path(fb).is_file():
            fb_path = Path(fb).resolve()
            inside = fb_path.parent == home
            target = staged / fb_path.name if inside else root / FEEDBACK_SQLITE
            _sqlite_copy(fb_path, target)
            with contextlib.closing(_read_only(target)) as copy:
                counts = log_counts(lambda sql: copy.execute(sql).fetchall())
            manifest["feedback"] = {"kind": "sqlite", "in_gallery": inside, "name": fb_path.name, "counts": counts}
        elif feedback_db is not None:
            raise BackupError(f"feedback database not found: {feedback_db}")
        # 3. the generations: each index, then its catalogue; 4. then every other file (uploads)
        with _generations(home) as gens:
            if (home / "generations.json").is_file():
                shutil.copy2(home / "generations.json", staged / "generations.json")
            folders = {}
            for name, g in gens["generations"].items():
                if g["state"] == "retired":
                    continue
                src = (home / g["path"]).resolve()
                dst = (staged / g["path"]).resolve()
                manifest["generations"][name] = {"path": g["path"], **_gallery_folder(src, dst)}
                folders[name] = src
            for src in folders.values():
                # the catalogues and indexes are copied above, the registry and other generations apart
                exclude = {
                    src / "faiss",
                    src / "models",
                    src / "generations",
                    *src.glob("*.sqlite"),
                    *_milvus_lite(src),
                }
                _copy_files(src, staged / src.relative_to(home), exclude)
        files, links = inventory(root, PARTS)
        manifest.update(files=files, links=links, bytes=sum(f["size"] for f in files))
        write_archive(root, MANIFEST_NAME, manifest, PARTS, out)
    manifest["took_s"] = round(time.perf_counter() - t0, 2)
    return manifest


def _milvus_lite(folder: Path) -> set[Path]:
    """A Milvus Lite database file in the gallery folder: rebuilt from the catalogue, never copied live."""
    from .gallery.stores import parse_milvus_uri

    store = str(json.loads((folder / "gallery.json").read_text()).get("store", ""))
    if not store.startswith("milvus://"):
        return set()
    target, _ = parse_milvus_uri(store[len("milvus://") :], folder)
    return {Path(target).resolve()} if target.endswith(".db") else set()


def _pg_dump_counted(url: str, out: Path) -> dict[str, int]:
    """``pg_dump`` of one snapshot, and the log's counts read in that same snapshot.

    A repeatable-read transaction exports its snapshot and counts in it; ``pg_dump --snapshot``
    dumps exactly that state. Counting in a second transaction instead would also count the
    verdicts that arrive while the dump runs, and the restore's check would then fail.
    """
    import psycopg

    with psycopg.connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            if row is None:
                raise BackupError("PostgreSQL exported no snapshot")
            counts = log_counts(lambda sql: conn.execute(sql).fetchall())
            _pg_dump(url, out, snapshot=str(row[0]))  # the snapshot lives while this transaction does
    return counts


def _feedback_counts(spec: str) -> dict[str, int]:
    from .feedback.postgres import open_store

    store = open_store(spec)
    try:
        return store.counts()
    finally:
        store.close()


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def _pg_dump(url: str, out: Path, snapshot: str) -> None:
    """``pg_dump`` in its custom format, of the exported ``snapshot``."""
    done = subprocess.run(
        [_pg_tool("pg_dump"), "--format=custom", "--no-owner", f"--snapshot={snapshot}", "--file", str(out), url],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")


def read_backup_manifest(archive: str | os.PathLike) -> dict[str, Any]:
    return read_archive_manifest(Path(archive), MANIFEST_NAME, "isacir backup", BACKUP_FORMAT, BackupError)


def _move_paths(db: Path, old: str, new: str) -> int:
    """Items (and tombstones) under the old gallery folder now live under the new one; ids stay."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            moved = 0
            for table in ("items", "tombstones"):
                cur = conn.execute(
                    f"UPDATE {table} SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",  # noqa: S608
                    (new, len(old) + 1, len(old) + 1, old + "/"),
                )
                moved += cur.rowcount
        return moved
    finally:
        conn.close()


def restore(archive: str | os.PathLike, out: str | os.PathLike, feedback_db: str | None = None) -> dict[str, Any]:
    """Restore a backup into the empty folder ``out``: the gallery at ``OUT/gallery`` (the registry
    in it, or at ``OUT/registry`` when it lived elsewhere; the SQLite feedback log where it was).
    A PostgreSQL log is restored into ``feedback_db`` (an empty database). Every generation is
    opened, brought up to its catalogue and verified; returns the counts and the verify reports."""
    from .gallery import Gallery

    archive = Path(archive)
    manifest = read_backup_manifest(archive)
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; restore into an empty folder")
    fb = manifest["feedback"]
    if fb is not None and fb["kind"] == "postgresql" and feedback_db is None:
        raise BackupError(
            "this backup's feedback log is a PostgreSQL dump: pass --feedback-db postgresql://... (empty)"
        )
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=".isacir-restore-", dir=out))
    try:
        extract_checked(archive, MANIFEST_NAME, manifest, staging, BackupError)
        home = out / GALLERY_PART
        os.replace(staging / GALLERY_PART, home)
        if (staging / REGISTRY_PART).is_dir():
            reg_dst = home / "models" if manifest["registry_in_gallery"] else out / REGISTRY_PART
            os.replace(staging / REGISTRY_PART, reg_dst)
        if (staging / FEEDBACK_SQLITE).is_file():
            os.replace(staging / FEEDBACK_SQLITE, out / FEEDBACK_SQLITE)
        if fb is not None and fb["kind"] == "postgresql":
            _pg_restore(staging / FEEDBACK_DUMP, str(feedback_db))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report: dict[str, Any] = {"gallery": str(home), "generations": {}}
    for name, g in manifest["generations"].items():
        folder = (home / g["path"]).resolve()
        moved = _move_paths(folder / "meta.sqlite", manifest["home"], str(home)) if manifest["home"] != str(home) else 0
        gallery = Gallery.open(folder, generation_root=True)
        try:
            if g["store"] != "faiss" or g["index_generation"] is None:
                gallery.rebuild_index()
            else:
                gallery.checkpoint()  # replays the log past the index and persists the result
            check = gallery.verify()
        finally:
            gallery.close()
        if check["items"] != g["items"] or not check["ok"]:
            raise BackupError(
                f"generation {name}: restored {check['items']} items of {g['items']}; problems: {check['problems']}"
            )
        report["generations"][name] = {"items": check["items"], "paths_moved": moved, "verify": check}
    if fb is not None:
        spec = (
            str(feedback_db)
            if fb["kind"] == "postgresql"
            else str(home / fb["name"] if fb.get("in_gallery") else out / FEEDBACK_SQLITE)
        )
        counts = _feedback_counts(spec)
        if counts != fb["counts"]:
            raise BackupError(f"feedback log restored with {counts}, the backup recorded {fb['counts']}")
        report["feedback"] = {"spec": spec, "counts": counts}
    if manifest["registry"] is not None:
        report["registry"] = manifest["registry"]["versions"]
    report["took_s"] = round(time.perf_counter() - t0, 2)
    return report


def _pg_restore(dump: Path, url: str) -> None:
    done = subprocess.run(
        [_pg_tool("pg_restore"), "--no-owner", "--exit-on-error", "--dbname", url, str(dump)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise BackupError(f"pg_restore into {url} failed: {last} (restore into an empty database)")
