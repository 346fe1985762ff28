"""``isacir serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import IsacirError
from ._app import DEVICE_HELP, app, err


@app.command("serve")
def serve_cmd(
    gallery: Path = typer.Option(..., help="Gallery folder (from `isacir index`).", envvar="ISACIR_GALLERY"),
    query_encoder: Optional[Path] = typer.Option(
        None,
        help="Serve this one query-encoder folder. Default: every served version of the model registry "
        "(--registry, or GALLERY/models).",
    ),
    edge: Optional[Path] = typer.Option(
        None,
        help="With --query-encoder: its edge package (from `isacir export-edge`), which devices and the web "
        "UI's on-device mode download.",
    ),
    registry: Optional[Path] = typer.Option(
        None,
        help="A model registry (`isacir models`) whose canary, active and deprecated versions are served.",
        envvar="ISACIR_REGISTRY",
    ),
    canary_share: float = typer.Option(
        0.1, help="With a registry: the share of thin-client searches the canary answers.", envvar="ISACIR_CANARY_SHARE"
    ),
    interleave: Optional[str] = typer.Option(
        None,
        help="With a registry: 'A,B' compares two served versions by team-draft interleaving on thin-client searches.",
    ),
    registry_poll_s: float = typer.Option(
        1.0, help="With a registry: seconds between checks for changes (0: only POST /v1/admin/reload)."
    ),
    review_budget: float = typer.Option(
        0.1,
        help="The share of answered queries drawn into the review queue (GET /v1/review/next); 0: none.",
        envvar="ISACIR_REVIEW_BUDGET",
    ),
    review_uniform: float = typer.Option(
        0.2, help="The share of that budget drawn uniformly, so weighted pilot numbers cover all traffic."
    ),
    review_lease_s: float = typer.Option(600.0, help="Seconds an operator holds a handed-out review query."),
    foundation: Optional[str] = typer.Option(
        None, help="Default: the one the query encoder was trained for, or the gallery's.", envvar="ISACIR_FOUNDATION"
    ),
    host: str = typer.Option("127.0.0.1", envvar="ISACIR_HOST"),
    port: int = typer.Option(8000, envvar="ISACIR_PORT"),
    api_key_file: Optional[Path] = typer.Option(
        None,
        help="Scoped keys (.toml from `isacir keys add`, reloaded on change), or one plaintext key per line "
        "(every scope). Default: no auth, only sensible on loopback.",
        envvar="ISACIR_API_KEY_FILE",
    ),
    max_upload_mb: float = typer.Option(
        10.0, help="Request body cap; larger bodies get 413.", envvar="ISACIR_MAX_UPLOAD_MB"
    ),
    feedback_db: Optional[str] = typer.Option(
        None,
        help="A SQLite file (default: GALLERY/feedback.sqlite) or a postgresql:// URL that replicas share.",
        envvar="ISACIR_FEEDBACK_DB",
    ),
    threads: Optional[int] = typer.Option(
        None, help="torch CPU threads (default: torch's choice).", envvar="ISACIR_THREADS"
    ),
    query_log_retention_days: Optional[float] = typer.Option(
        None,
        help="Drop the payload tokens of unjudged queries after N days (default: keep them).",
        envvar="ISACIR_QUERY_LOG_RETENTION_DAYS",
    ),
    cors_origin: list[str] = typer.Option(
        [],
        help="A browser origin allowed to call the API from another site (repeatable; default: none).",
        envvar="ISACIR_CORS_ORIGIN",
    ),
    adapter: Optional[Path] = typer.Option(
        None, help="A query adapter folder from `isacir adapt`, applied to every search (default: none)."
    ),
    query_log: str = typer.Option(
        "durable",
        help="durable: a search answers once its log row is on disk (group commit); async: it does not wait, "
        "and a crash can lose the last few milliseconds of rows.",
    ),
    max_batch: int = typer.Option(8, help="Concurrent searches whose text encodes share one forward pass."),
    batch_wait_ms: float = typer.Option(
        20.0, help="Longest wait for other searches to batch with (ms); the wait is a quarter of a batch's compute."
    ),
    max_inflight: int = typer.Option(32, help="API requests answered at once; beyond that, 503 with Retry-After."),
    batch_workers: int = typer.Option(1, help="Batches of composed queries run at once (each uses --threads)."),
    device: str = typer.Option("auto", help=DEVICE_HELP, envvar="ISACIR_DEVICE"),
    itm_cache_mb: float = typer.Option(
        2048.0, help="Matching-head (BLIP ITM) re-ranking: MiB of cached gallery hidden states (0: no cache)."
    ),
    itm_concurrency: int = typer.Option(1, help="Requests that may run the matching head at once."),
    learn_policy: Optional[Path] = typer.Option(
        None, help="Run learning cycles in the background by this policy (see `isacir cycle run`); needs a registry."
    ),
    learn_every: float = typer.Option(300.0, help="Seconds between the learning loop's steps (with --learn-policy)."),
) -> None:
    """Serve composed search over HTTP, with the operator web UI at /."""
    import uvicorn

    if threads:
        import torch

        torch.set_num_threads(threads)
    from ..serve import load_service

    pair = None
    if interleave:
        names = tuple(n.strip() for n in interleave.split(","))
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise typer.BadParameter(f"--interleave takes two different version names, 'A,B'; got {interleave!r}")
        pair = (names[0], names[1])
    policy = None
    if learn_policy is not None:
        from ..cycle import CyclePolicy

        policy = CyclePolicy.from_toml(learn_policy)  # a bad policy fails before the models load
    _check_port_free(host, port)  # before minutes of model loading, not after
    app_ = load_service(
        gallery,
        query_encoder,
        foundation,
        api_key_file,
        max_upload_mb,
        feedback_db,
        query_log_retention_days,
        tuple(cors_origin),
        adapter,
        query_log,
        max_batch,
        batch_wait_ms,
        max_inflight,
        batch_workers,
        device,
        itm_cache_mb,
        itm_concurrency,
        registry=registry,
        canary_share=canary_share,
        interleave=pair,
        registry_poll_s=registry_poll_s,
        edge=edge,
        review_budget=review_budget,
        review_uniform=review_uniform,
        review_lease_s=review_lease_s,
    )
    if policy is not None:
        from ..cycle import LearningCycle

        state = app_.state.service
        loop = LearningCycle(
            gallery,
            policy,
            state.feedback,
            state.registry,
            actor="service:learning",
            foundation=lambda: state.foundation,
        )
        state.attach_learning(loop, learn_every)
        err.print(f"learning cycles by {learn_policy}, a step every {learn_every:g} s")
    if api_key_file is None and host not in ("127.0.0.1", "localhost", "::1"):
        err.print("[yellow]warning:[/] serving without an API key on a non-loopback address")
    err.print(f"isacir serving {gallery} on http://{host}:{port}/  (UI at /, health at /healthz)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def _check_port_free(host: str, port: int) -> None:
    """One clear line (exit 2) when ``host:port`` cannot be listened on: taken, or not this machine's."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise IsacirError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise IsacirError(f"port {port} on {host} is already in use; stop that server or pass --port") from None
            raise IsacirError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
