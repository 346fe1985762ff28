"""API keys with scopes: stored as hashes, reloaded when the file changes, rate limited per key.

A keys file (TOML) lists each key's name, the sha256 of the key (the key itself is shown once, by
``isacir keys add``, and never stored), its scopes and an optional rate limit::

    [[keys]]
    name = "operator-anna"
    sha256 = "9f86d08..."
    scopes = ["search", "feedback", "images", "pilot"]
    rate_per_s = 20.0
    burst = 40
    created = "2026-12-02T04:00:00Z"

A running service re-reads the file when it changes, so adding, rotating or revoking a key needs
no restart; a file that fails to parse is reported and the previous keys stay in force, because
locking every client out over a typo is worse than a late revocation.

The older format, one plaintext key per line, still works and grants every scope.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import IsacirError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

#: Every scope a key can hold, and what it opens.
SCOPES: dict[str, str] = {
    "search": "composed search (photo or tokens) and GET /v1/info",
    "feedback": "POST /v1/feedback: operator verdicts; the review queue (GET /v1/review/next)",
    "images": "gallery images, thumbnails and item lookups",
    "gallery:write": "add and delete gallery items",
    "models:admin": "register, promote and retire model versions",
    "metrics": "GET /metrics (Prometheus)",
    "pilot": "the pilot dashboard and its summary and charts",
}
#: Shorthands for ``--scopes``: what a device, an operator and an administrator need.
ROLES: dict[str, tuple[str, ...]] = {
    "device": ("search",),
    "operator": ("search", "feedback", "images", "pilot"),
    "admin": tuple(SCOPES),
}
#: ``isacir keys add`` defaults: a human or a device does not need more, and a leaked key is bounded.
DEFAULT_RATE_PER_S = 50.0
DEFAULT_BURST = 100


class KeyFileError(IsacirError):
    """A keys file that cannot be read, or a key command that cannot be done."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[str]
    #: sustained requests per second (None: no limit); ``burst`` requests may come at once
    rate_per_s: float | None = None
    burst: int | None = None
    created: str | None = None

    def to_toml(self) -> dict:
        out: dict = {"name": self.name, "sha256": self.sha256, "scopes": sorted(self.scopes)}
        if self.rate_per_s is not None:
            out["rate_per_s"] = float(self.rate_per_s)
            out["burst"] = int(self.burst or max(1, math.ceil(self.rate_per_s)))
        if self.created:
            out["created"] = self.created
        return out


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A fresh key: 256 random bits, URL-safe, with a prefix that secret scanners can match."""
    return "isk_" + secrets.token_urlsafe(32)


def parse_scopes(spec: str | Iterable[str]) -> frozenset[str]:
    """``search,feedback`` or role names (``operator``) into scopes; unknown names are an error."""
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
    if not parts:
        raise KeyFileError("a key needs at least one scope")
    out: set[str] = set()
    for p in parts:
        if p in ROLES:
            out.update(ROLES[p])
        elif p in SCOPES:
            out.add(p)
        else:
            raise KeyFileError(
                f"unknown scope {p!r}; scopes: {', '.join(SCOPES)}; roles: "
                + ", ".join(f"{r} ({'+'.join(s)})" for r, s in ROLES.items() if r != "admin")
                + ", admin (all)"
            )
    return frozenset(out)


def _key_from_toml(entry: object, where: str) -> ApiKey:
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: each [[keys]] entry must be a table")
    unknown = set(entry) - {"name", "sha256", "scopes", "rate_per_s", "burst", "created"}
    if unknown:
        raise KeyFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name, digest = entry.get("name"), entry.get("sha256")
    if not isinstance(name, str) or not name.strip():
        raise KeyFileError(f"{where}: a key needs a non-empty name")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise KeyFileError(f"{where} ({name}): sha256 must be 64 lowercase hex digits (the hash, never the key)")
    scopes = entry.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise KeyFileError(f"{where} ({name}): scopes must be a list of strings")
    try:
        scope_set = parse_scopes(scopes)
    except KeyFileError as exc:
        raise KeyFileError(f"{where} ({name}): {exc}") from None
    rate, burst = entry.get("rate_per_s"), entry.get("burst")
    if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
        raise KeyFileError(f"{where} ({name}): rate_per_s must be a positive number (leave it out for no limit)")
    if burst is not None and (not isinstance(burst, int) or burst < 1):
        raise KeyFileError(f"{where} ({name}): burst must be a positive integer")
    created = entry.get("created")
    return ApiKey(
        name.strip(),
        digest,
        scope_set,
        float(rate) if rate is not None else None,
        burst if rate is not None else None,
        str(created) if created is not None else None,
    )


def read_key_file(path: str | os.PathLike) -> list[ApiKey]:
    """The keys of a ``.toml`` keys file, or of a plaintext one-key-per-line file (every scope)."""
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"API key file not found: {p}")
    if p.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{p}: not valid TOML: {exc}") from None
        entries = doc.get("keys", [])
        if not isinstance(entries, list):
            raise KeyFileError(f"{p}: 'keys' must be an array of tables ([[keys]])")
        keys = [_key_from_toml(e, f"{p} key {i + 1}") for i, e in enumerate(entries)]
    else:
        lines = [line.strip() for line in p.read_text().splitlines()]
        secrets_ = [line for line in lines if line and not line.startswith("#")]
        keys = [ApiKey(f"key-{i + 1}", hash_key(s), frozenset(SCOPES)) for i, s in enumerate(secrets_)]
    seen: set[str] = set()
    for k in keys:
        if k.name in seen:
            raise KeyFileError(f"{p}: two keys are named {k.name!r}")
        seen.add(k.name)
    if len({k.sha256 for k in keys}) != len(keys):
        raise KeyFileError(f"{p}: two entries hold the same key")
    if not keys and p.suffix.lower() != ".toml":
        raise KeyFileError(f"API key file {p} holds no key")
    return keys


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    rate: float
    burst: int


@dataclass
class KeyRing:
    """The keys a service accepts; re-reads its file when it changes (checked at most every second)."""

    keys: Sequence[ApiKey] = ()
    path: Path | None = None
    check_every_s: float = 1.0
    _by_hash: dict[str, ApiKey] = field(default_factory=dict, init=False, repr=False)
    _buckets: dict[str, _Bucket] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stat: tuple | None = field(default=None, init=False, repr=False)
    _checked: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_hash = {k.sha256: k for k in self.keys}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> KeyRing:
        p = Path(path).resolve()
        ring = cls(read_key_file(p), p)
        ring._stat = _stat_of(p)
        ring._checked = time.monotonic()
        return ring

    @classmethod
    def from_secrets(cls, secrets_: Iterable[str]) -> KeyRing:
        """Plaintext keys with every scope (the older format, and tests)."""
        return cls([ApiKey(f"key-{i + 1}", hash_key(s), frozenset(SCOPES)) for i, s in enumerate(secrets_)])

    @property
    def enabled(self) -> bool:
        """Whether keys are checked at all (a keys file, even one emptied later, always counts)."""
        return self.path is not None or bool(self._by_hash)

    def authenticate(self, secret: str) -> ApiKey | None:
        self._maybe_reload()
        if not secret:
            return None
        # a dict lookup on the hash: timing reveals nothing about a key, only about its sha256
        return self._by_hash.get(hash_key(secret))

    def throttle(self, key: ApiKey, now: float | None = None) -> float | None:
        """Take one request from the key's bucket; seconds to wait when it is empty, else None."""
        if key.rate_per_s is None:
            return None
        now = time.monotonic() if now is None else now
        burst = key.burst or max(1, math.ceil(key.rate_per_s))
        with self._lock:
            b = self._buckets.get(key.name)
            if b is None or b.rate != key.rate_per_s or b.burst != burst:
                b = self._buckets[key.name] = _Bucket(float(burst), now, key.rate_per_s, burst)
            b.tokens = min(float(b.burst), b.tokens + (now - b.stamp) * b.rate)
            b.stamp = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return None
            return (1.0 - b.tokens) / b.rate

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return
        with self._lock:
            if now - self._checked < self.check_every_s:
                return
            self._checked = now
            stat = _stat_of(self.path)
            if stat == self._stat:
                return
            try:
                keys = read_key_file(self.path)
            except KeyFileError as exc:
                log.error("keeping the previous API keys: %s", exc)
                self._stat = stat  # report a broken file once, not on every request
                return
            self._stat = stat
            self.keys = keys
            self._by_hash = {k.sha256: k for k in keys}
            live = {k.name for k in keys}
            self._buckets = {n: b for n, b in self._buckets.items() if n in live}
            log.info("reloaded %d API key(s) from %s", len(keys), self.path)


def _stat_of(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# ----- editing a keys file ----------------------------------------------------------------------
@contextmanager
def _locked(path: Path) -> Iterator[list[ApiKey]]:
    """Read-modify-write under an exclusive lock, so two ``isacir keys`` commands never lose a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield read_key_file(path) if path.exists() else []


def _write(path: Path, keys: Sequence[ApiKey]) -> None:
    import tomli_w

    from .._fs import atomic_write_text

    header = (
        "# isacir API keys: the sha256 of each key, never the key itself.\n"
        "# Edit with `isacir keys add|rotate|revoke`; a running `isacir serve` reloads this file.\n\n"
    )
    atomic_write_text(path, header + tomli_w.dumps({"keys": [k.to_toml() for k in keys]}))


def _check_toml(path: Path) -> Path:
    if path.suffix.lower() != ".toml":
        raise KeyFileError(f"{path}: scoped keys live in a .toml file (the plaintext format cannot hold scopes)")
    return path


def add_key(
    path: str | os.PathLike,
    name: str,
    scopes: str | Iterable[str],
    rate_per_s: float | None = DEFAULT_RATE_PER_S,
    burst: int | None = DEFAULT_BURST,
) -> tuple[str, ApiKey]:
    """Append a new key; returns the secret (shown once, never stored) and its entry."""
    p = _check_toml(Path(path))
    name = name.strip()
    if not name:
        raise KeyFileError("a key needs a non-empty --name")
    scope_set = parse_scopes(scopes)
    if rate_per_s is not None and rate_per_s <= 0:
        rate_per_s, burst = None, None
    secret = new_secret()
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = ApiKey(name, hash_key(secret), scope_set, rate_per_s, burst if rate_per_s else None, created)
    with _locked(p) as keys:
        if any(k.name == name for k in keys):
            raise KeyFileError(f"{p} already has a key named {name!r} (rotate it, or pick another name)")
        _write(p, [*keys, key])
    return secret, key


def rotate_key(path: str | os.PathLike, name: str) -> tuple[str, ApiKey]:
    """A new secret for an existing key (same scopes and limits); the old secret stops working."""
    p = _check_toml(Path(path))
    secret = new_secret()
    with _locked(p) as keys:
        old = next((k for k in keys if k.name == name), None)
        if old is None:
            raise KeyFileError(f"{p} has no key named {name!r}; names: {', '.join(k.name for k in keys) or 'none'}")
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        new = ApiKey(name, hash_key(secret), old.scopes, old.rate_per_s, old.burst, created)
        _write(p, [new if k.name == name else k for k in keys])
    return secret, new


def revoke_key(path: str | os.PathLike, name: str) -> ApiKey:
    p = _check_toml(Path(path))
    with _locked(p) as keys:
        old = next((k for k in keys if k.name == name), None)
        if old is None:
            raise KeyFileError(f"{p} has no key named {name!r}; names: {', '.join(k.name for k in keys) or 'none'}")
        _write(p, [k for k in keys if k.name != name])
    return old


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (HTTP's Retry-After has no fractions)."""
    return str(max(1, math.ceil(seconds)))
