"""Atomic filesystem helpers: a crash leaves either the old content or the new, never a mix."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path


def replace_dir(src: Path, dst: Path) -> None:
    """Swap the finished folder ``src`` into place of ``dst`` using renames only."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    # pid + thread in the temp name: concurrent writers of the same path never share a temp file
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut must not undo it); a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask alone must set
    it to read it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(final: Path) -> Path:
    """A fresh folder beside ``final`` to build it in, then swap in with :func:`replace_dir`.

    ``tempfile.mkdtemp`` makes it private (0700), right for a temp folder but wrong for what it
    becomes: an edge package or a model folder is meant to be read by other users (a service
    account, a web server, devices). So it gets the mode a plain ``mkdir`` would give."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp
