"""How a service is configured: the settings of :class:`~isacir.serve.state.ServiceState`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import IsacirError
from .keys import KeyFileError, KeyRing


@dataclass
class ServeSettings:
    #: plaintext keys with every scope (tests, the simulator); ``keys`` wins when both are set
    api_keys: tuple[str, ...] = ()
    #: scoped keys, usually from a keys file that is reloaded on change
    keys: Optional[KeyRing] = None
    #: where gallery changes are recorded with the key's name (default: GALLERY/audit.jsonl)
    audit_log: Optional[Path] = None
    max_upload_bytes: int = 10 * 1024 * 1024
    #: a SQLite file (default: GALLERY/feedback.sqlite) or a postgresql:// URL shared by replicas
    feedback_db: Optional[Path | str] = None
    upload_dir: Optional[Path] = None
    thumbnail_cache: int = 512
    #: Drop the payload tokens of unjudged queries older than this many days (None: keep them).
    query_log_retention_days: Optional[float] = None
    #: Browser origins allowed to call the API from other sites (CORS); none by default.
    cors_origins: tuple[str, ...] = ()
    #: ``durable``: a response waits until its query-log row is committed; ``async``: it does not
    query_log: str = "durable"
    #: composed text encodes of concurrent requests share one forward pass of up to this many
    max_batch: int = 8
    #: the longest the first request of a batch waits for others (milliseconds); the wait is a
    #: quarter of a typical batch's compute time up to this cap, so a cheap model barely waits
    batch_wait_ms: float = 20.0
    #: threads running composed-query batches at once; one, using every core torch is given, is
    #: best on a CPU, where a batch of 8 on 2 threads costs about half of 8 lone queries on 1
    batch_workers: int = 1
    #: requests on /v1/ being answered at once before new ones get 503 with Retry-After
    max_inflight: int = 32
    #: matching-head re-ranking: cached vision hidden states (MiB on disk; 0: none) and the
    #: requests that may run the head at once
    itm_cache_mb: float = 2048.0
    itm_concurrency: int = 1
    #: with a registry: the share of thin-client searches the canary answers (0..1)
    canary_share: float = 0.1
    #: with a registry: two served versions compared by team-draft interleaving on thin-client searches
    interleave: Optional[tuple[str, str]] = None
    #: with a registry: how often its file is checked for changes (seconds; 0: only POST /v1/admin/reload)
    registry_poll_s: float = 1.0
    #: the review queue: the share of answered queries drawn for review (0: none), the share of
    #: that drawn uniformly, and how long an operator holds a handed-out query (seconds)
    review_budget: float = 0.1
    review_uniform: float = 0.2
    review_lease_s: float = 600.0
    review_seed: Optional[int] = None
    extra: dict = field(default_factory=dict)


def read_api_keys(path: str | os.PathLike) -> tuple[str, ...]:
    """The plaintext keys of a one-key-per-line file (what a client sends); ``#`` comments ignored."""
    p = Path(path)
    if not p.is_file():
        raise IsacirError(f"API key file not found: {p}")
    if p.suffix.lower() == ".toml":
        raise KeyFileError(f"{p} holds key hashes, not keys: pass the key itself (--api-key or ISACIR_API_KEY)")
    keys = tuple(line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#"))
    if not keys:
        raise IsacirError(f"API key file {p} holds no key")
    return keys


#: the operator UI and the pilot dashboard (HTML, JS, the vendored ONNX Runtime Web)
STATIC = Path(__file__).parent / "static"


def ui_problems() -> list[str]:
    """What the operator UI will lack on this install, said at start-up rather than found in a
    browser: without the vendored ONNX Runtime Web (``make web``), photos cannot be encoded on the
    operator's device and are uploaded instead."""
    if not (STATIC / "vendor" / "VERSION.json").is_file():
        return [
            "the operator UI's on-device encoding is off: ONNX Runtime Web is not vendored in "
            f"{STATIC / 'vendor'} (run `make web` in a checkout, or install a wheel built with it); "
            "searches upload the photo instead"
        ]
    return []
