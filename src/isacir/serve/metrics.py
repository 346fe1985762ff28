"""Prometheus metrics for the service (one registry per app, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Search is milliseconds on small galleries and up to seconds with re-ranking on a CPU.
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "isacir_request_duration_seconds",
            "Request latency by route.",
            ["route", "method"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "isacir_requests", "Requests by route and status.", ["route", "method", "status"], registry=self.registry
        )
        self.errors = Counter(
            "isacir_errors",
            "Responses with status >= 400 by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.gallery_items = Gauge("isacir_gallery_items", "Images in the served gallery.", registry=self.registry)
        # Pilot counters. Labels are bounded: verdicts and modes are fixed sets, and version is the
        # served query encoder's fingerprint (one per served encoder).
        self.searches = Counter(
            "isacir_search",
            "Answered searches by mode and query-encoder version.",
            ["mode", "version"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "isacir_feedback",
            "Stored verdicts by verdict and the version that answered the judged query.",
            ["verdict", "version"],
            registry=self.registry,
        )

        self.reloads = Counter(
            "isacir_model_reloads", "Registry changes applied without a restart.", registry=self.registry
        )
        self.refused = Counter(
            "isacir_version_refused",
            "Token payloads refused because no served version reads them, by reason.",
            ["code"],
            registry=self.registry,
        )

        self.query_log_commits = Counter(
            "isacir_query_log_commits",
            "Commits of the query log (each one fsync); group commit puts many rows in one.",
            registry=self.registry,
        )
        self.query_log_rows = Counter("isacir_query_log_rows", "Query-log rows committed.", registry=self.registry)
        self.text_batch = Histogram(
            "isacir_text_encode_batch_size",
            "Composed queries per text-tower forward pass (micro-batching across requests).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )

    def query_log_committed(self, rows: int) -> None:
        self.query_log_commits.inc()
        self.query_log_rows.inc(rows)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """``route`` must be a route template or a fixed name; methods outside HTTP's set become OTHER."""
        method = method if method in METHODS else "OTHER"
        self.latency.labels(route, method).observe(seconds)
        self.requests.labels(route, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
