"""The run records the tables are made of, typed: each file read and checked once, in one place.

A table function takes these records, never a raw JSON dict, so a record whose schema drifts
fails here with the file named, instead of deep inside a table with a ``KeyError``. The tables of
learning from operators still read their records as dicts; they move here next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cells import METRICS

#: rows a Shapes-CIR table shows beside the methods, and how it labels them
ORACLES = {
    "oracle_target_caption": "oracle: the target's true caption",
    "oracle_reference_caption_plus_modifier": "oracle: the reference's true caption + modifier",
}

#: metric name -> value, one row of a retrieval table
Metrics = dict[str, float]


class RecordError(SystemExit):
    """A run record the renderer cannot read (stops ``isacir-lab render`` with the file named)."""


def _metrics(raw: Any, where: str) -> Metrics:
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: expected an object of metrics, got {type(raw).__name__}")
    missing = [k for k in METRICS if k not in raw]
    if missing:
        raise RecordError(f"{where}: missing {', '.join(missing)}")
    return {k: float(raw[k]) for k in METRICS}


@dataclass(frozen=True)
class ShapesRun:
    """One ``isacir-lab bench shapes`` run: ``docs/results/shapes-seed{S}.json``."""

    seed: int
    #: method -> its test metrics, in the bench's method order
    methods: dict[str, Metrics]
    #: the oracles the tables show (the others a run records are left out)
    oracles: dict[str, Metrics] = field(default_factory=dict)
    #: how the run was made, when it was not a plain cold run
    source: str | None = None

    @classmethod
    def load(cls, path: Path) -> ShapesRun:
        try:
            raw = json.loads(path.read_text())
            return cls(
                seed=int(raw["seed"]),
                methods={m: _metrics(v, f"{path}: methods.{m}") for m, v in raw["methods"].items()},
                oracles={
                    o: _metrics(v, f"{path}: oracles.{o}") for o, v in raw.get("oracles", {}).items() if o in ORACLES
                },
                source=raw.get("source"),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise RecordError(f"{path} is not a bench shapes run record: {exc!r}") from None

    def rows(self) -> dict[str, Metrics]:
        """The rows of its table: every method, then the oracles."""
        return {**self.methods, **self.oracles}


def load_shapes_runs(results: Path) -> list[ShapesRun]:
    """Every ``shapes-seed*.json`` under ``results``, by seed."""
    runs = [ShapesRun.load(p) for p in sorted(results.glob("shapes-seed*.json"))]
    if not runs:
        raise RecordError(f"no shapes-seed*.json in {results}")
    return sorted(runs, key=lambda r: r.seed)


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path} is not a readable {what} record: {exc}") from None


def _bad(path: Path, what: str, exc: Exception) -> RecordError:
    return RecordError(f"{path} is not a {what} record: missing or bad {exc}")


def _each(results: Path, pattern: str, load: Any, key: Any) -> list:
    return sorted((load(p) for p in results.glob(pattern)), key=key)


@dataclass(frozen=True)
class DomainRun:
    """One ``isacir-lab bench domain`` run: ``domain-seed{S}[-replay].json``."""

    seed: int
    steps: int
    replay: bool
    #: world ("shifted", "standard") -> phase ("before", "after") -> metrics
    tests: dict[str, dict[str, dict[str, float]]]

    @classmethod
    def load(cls, path: Path) -> DomainRun:
        raw = _load_json(path, "bench domain")
        try:
            tests = {
                w: {phase: {k: float(v) for k, v in raw[w][phase].items()} for phase in ("before", "after")}
                for w in ("shifted", "standard")
            }
            return cls(int(raw["seed"]), int(raw["steps"]), bool(raw.get("replay")), tests)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad(path, "bench domain run", exc) from None


def load_domain_runs(results: Path) -> list[DomainRun]:
    return _each(results, "domain-seed*.json", DomainRun.load, lambda r: (r.seed, r.replay))


@dataclass(frozen=True)
class VersionRates:
    """A served version's pilot rates, with Wilson 95 % intervals."""

    key: str
    queries: int
    false_hit_rate: float
    false_hit_rate_ci: tuple[float, float]
    precision_at_1: float
    precision_at_1_ci: tuple[float, float]
    hit_at_k: float


@dataclass(frozen=True)
class PilotVersionsRun:
    """One ``isacir-lab bench pilot-versions`` run: ``pilot-versions-seed{S}.json``."""

    seed: int
    versions: list[VersionRates]

    @classmethod
    def load(cls, path: Path) -> PilotVersionsRun:
        raw = _load_json(path, "bench pilot-versions")
        try:
            versions = [
                VersionRates(
                    key=str(g["key"]),
                    queries=int(g["queries"]),
                    false_hit_rate=float(g["false_hit_rate"]),
                    false_hit_rate_ci=(float(g["false_hit_rate_ci"][0]), float(g["false_hit_rate_ci"][1])),
                    precision_at_1=float(g["precision_at_1"]),
                    precision_at_1_ci=(float(g["precision_at_1_ci"][0]), float(g["precision_at_1_ci"][1])),
                    hit_at_k=float(g["hit_at_k"]),
                )
                for g in raw["versions"]
            ]
            return cls(int(raw["seed"]), versions)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise _bad(path, "bench pilot-versions run", exc) from None


def load_pilot_versions_runs(results: Path) -> list[PilotVersionsRun]:
    return _each(results, "pilot-versions-seed*.json", PilotVersionsRun.load, lambda r: r.seed)


@dataclass(frozen=True)
class EdgeInt8Run:
    """One ``isacir-lab bench edge-int8`` run: ``edge-int8-seed{S}.json``."""

    seed: int
    backbone: str
    #: tokens from ("PyTorch", "ONNX fp32", "ONNX int8", "ONNX int8, D payload") -> test metrics
    rows: dict[str, Metrics]
    written: bool
    refused: str | None
    r10_drop: float
    max_r10_drop: float
    min_query_cosine: float
    required_query_cosine: float
    int8_bytes: int
    fp32_bytes: int

    @classmethod
    def load(cls, path: Path) -> EdgeInt8Run:
        raw = _load_json(path, "bench edge-int8")
        try:
            rows = {
                "PyTorch": _metrics(raw["torch"], f"{path}: torch"),
                "ONNX fp32": _metrics(raw["fp32"], f"{path}: fp32"),
                "ONNX int8": _metrics(raw["int8"], f"{path}: int8"),
                **{f"ONNX int8, {d} payload": _metrics(m, f"{path}: payloads.{d}") for d, m in raw["payloads"].items()},
            }
            return cls(
                seed=int(raw["seed"]),
                backbone=str(raw["backbone"]),
                rows=rows,
                written=bool(raw["written"]),
                refused=raw.get("refused"),
                r10_drop=float(raw["r10_drop"]),
                max_r10_drop=raw["max_r10_drop"],
                min_query_cosine=float(raw["query_cosine"]["min"]),
                required_query_cosine=raw["query_cosine"]["required"],
                int8_bytes=int(raw["model_bytes"]["int8"]),
                fp32_bytes=int(raw["model_bytes"]["fp32"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(path, "bench edge-int8 run", exc) from None


def load_edge_int8_runs(results: Path) -> list[EdgeInt8Run]:
    return _each(results, "edge-int8-seed*.json", EdgeInt8Run.load, lambda r: r.seed)


@dataclass(frozen=True)
class SoakRun:
    """``benchmarks/soak.py``: ``soak-600s.json``."""

    duration_s: float
    cpu_count: int
    #: workload -> requests per second asked, requests made, and answers by status code
    rates_per_s: dict[str, float]
    requests: dict[str, int]
    status: dict[str, dict[str, int]]
    server_errors: int
    transport_errors: int
    rss_warm_mb: float
    rss_end_mb: float
    rss_growth: float

    @classmethod
    def load(cls, path: Path) -> SoakRun:
        raw = _load_json(path, "soak")
        try:
            return cls(
                duration_s=float(raw["duration_s"]),
                cpu_count=int(raw["cpu_count"]),
                rates_per_s={k: float(v) for k, v in raw["rates_per_s"].items()},
                requests={k: int(raw["requests"][k]) for k in raw["rates_per_s"]},
                status={k: {str(c): int(n) for c, n in raw["status"][k].items()} for k in raw["rates_per_s"]},
                server_errors=int(raw["server_errors"]),
                transport_errors=int(raw["transport_errors"]),
                rss_warm_mb=float(raw["rss_warm_mb"]),
                rss_end_mb=float(raw["rss_end_mb"]),
                rss_growth=float(raw["rss_growth"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad(path, "soak run", exc) from None


@dataclass(frozen=True)
class LoadSide:
    """One side of a load test: the service at one revision under the same load."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    revision: str | None = None
    torch_threads: int | None = None
    log_commits_per_query: float | None = None

    @classmethod
    def of(cls, raw: dict) -> LoadSide:
        return cls(
            rps=float(raw["rps"]),
            p50_ms=float(raw["p50_ms"]),
            p99_ms=float(raw["p99_ms"]),
            errors=int(raw["errors"]),
            revision=raw.get("revision"),
            torch_threads=raw.get("torch_threads"),
            log_commits_per_query=raw.get("log_commits_per_query"),
        )


@dataclass(frozen=True)
class LoadRun:
    """``benchmarks/load_test.py --compare-to REV``: ``load-{tag}.json``, before and after side by side."""

    before: LoadSide
    after: LoadSide
    rps_ratio: float

    @classmethod
    def load(cls, path: Path) -> LoadRun:
        raw = _load_json(path, "load test")
        try:
            return cls(LoadSide.of(raw["before"]), LoadSide.of(raw), float(raw["rps_ratio"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(path, "load test", exc) from None


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, raw: dict) -> Latency:
        return cls(float(raw["p50_ms"]), float(raw["p99_ms"]), float(raw["max_ms"]))


@dataclass(frozen=True)
class IngestSide:
    """Search latency idle and during an add, at one revision."""

    idle: Latency
    during: Latency
    p99_ratio: float
    add_s: float
    revision: str | None = None

    @classmethod
    def of(cls, raw: dict) -> IngestSide:
        return cls(
            Latency.of(raw["idle"]),
            Latency.of(raw["during"]),
            float(raw["p99_ratio"]),
            float(raw["add_s"]),
            raw.get("revision"),
        )


@dataclass(frozen=True)
class IngestRun:
    """``benchmarks/ingest_under_load.py --compare-to REV``: ``ingest-{tag}.json``."""

    writer: str
    base: int
    added: int
    before: IngestSide
    after: IngestSide

    @classmethod
    def load(cls, path: Path) -> IngestRun:
        raw = _load_json(path, "ingest")
        try:
            return cls(
                str(raw["writer"]),
                int(raw["base"]),
                int(raw["added"]),
                IngestSide.of(raw["before"]),
                IngestSide.of(raw),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(path, "ingest", exc) from None


@dataclass(frozen=True)
class AnnIndex:
    """One index family of an ANN run, against exact search on the same queries."""

    type: str
    nprobe: int | None
    build_s: float
    ann_p50_ms: float
    ann_p99_ms: float
    recall_at_10: float
    gib_per_million: float
    recall_at_10_rerank: float | None = None
    rerank_p50_ms: float | None = None


@dataclass(frozen=True)
class AnnRun:
    """``isacir bench search --index all``: ``ann-1m-{data}-{queries}.json``."""

    n: int
    dim: int
    queries: int
    exact_p50_ms: float
    indexes: list[AnnIndex]
    #: how the synthetic data were calibrated on a real gallery, when they were
    calibration: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> AnnRun:
        raw = _load_json(path, "ANN")
        try:
            indexes = [
                AnnIndex(
                    type=str(r["index"]["type"]),
                    nprobe=r["index"].get("nprobe"),
                    build_s=float(r["build_s"]),
                    ann_p50_ms=float(r["ann_p50_ms"]),
                    ann_p99_ms=float(r["ann_p99_ms"]),
                    recall_at_10=float(r["recall_at_10"]),
                    gib_per_million=float(r["gib_per_million"]),
                    recall_at_10_rerank=r.get("recall_at_10_rerank"),
                    rerank_p50_ms=r.get("rerank_p50_ms"),
                )
                for r in raw["indexes"].values()
            ]
            return cls(
                int(raw["n"]),
                int(raw["dim"]),
                int(raw["queries"]),
                float(raw["exact_p50_ms"]),
                indexes,
                raw.get("calibration"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad(path, "ANN", exc) from None


@dataclass(frozen=True)
class TunedIndex:
    """An IVF family on the Shapes-CIR gallery, its nprobe tuned on one kind of query."""

    family: str
    nlist: int
    tuned_on: str
    nprobe: int
    recall_at_10: float
    recall_at_10_reranked: float | None
    task_r10: float
    p50_ms: float


@dataclass(frozen=True)
class ShapesAnnRun:
    """``benchmarks/shapes_ann.py``: ``ann-shapes-seed{S}.json``."""

    gallery: int
    dim: int
    queries_measured: int
    queries_tuned_on: int
    exact_task_r10: float
    rows: list[TunedIndex]

    @classmethod
    def load(cls, path: Path) -> ShapesAnnRun:
        raw = _load_json(path, "Shapes-CIR ANN")
        try:
            rows = [
                TunedIndex(
                    kind,
                    int(fam["nlist"]),
                    tuned_on,
                    int(r["nprobe"]),
                    float(r["recall_at_10"]),
                    r["recall_at_10_reranked"],
                    float(r["task_r10"]),
                    float(r["p50_ms"]),
                )
                for kind, fam in raw["families"].items()
                for tuned_on, r in fam["tuned_on"].items()
            ]
            return cls(
                int(raw["gallery"]),
                int(raw["dim"]),
                int(raw["queries_measured"]),
                int(raw["queries_tuned_on"]),
                float(raw["exact_task_r10"]),
                rows,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad(path, "Shapes-CIR ANN", exc) from None


@dataclass(frozen=True)
class RuntimeRow:
    light_ms: float
    large_ms: float
    speedup: float


@dataclass(frozen=True)
class PayloadForm:
    bytes: int
    cosine: float


@dataclass(frozen=True)
class RuntimesRun:
    """``isacir bench query-side --runtime all``: ``query-side-runtimes-{backbone}-{cpu}.json``."""

    backbone: str
    foundation: str
    tokens: int
    threads: int
    torch: str
    onnxruntime: str
    cpu_model: str
    vector_extensions: list[str]
    #: runtime -> the light side's and the large encoder's milliseconds, and their ratio
    runtimes: dict[str, RuntimeRow]
    #: payload form -> its bytes and its composed query's cosine to fp32's
    payloads: dict[str, PayloadForm]
    jpeg_bytes: int

    @classmethod
    def load(cls, path: Path) -> RuntimesRun:
        raw = _load_json(path, "query-side runtimes")
        try:
            return cls(
                backbone=str(raw["backbone"]),
                foundation=str(raw["foundation"]),
                tokens=int(raw["tokens"]),
                threads=int(raw["threads"]),
                torch=str(raw["torch"]),
                onnxruntime=str(raw["onnxruntime"]),
                cpu_model=str(raw["cpu"]["model"]),
                vector_extensions=list(raw["cpu"]["vector_extensions"]),
                runtimes={
                    k: RuntimeRow(float(v["light_ms"]), float(v["large_ms"]), float(v["speedup"]))
                    for k, v in raw["runtimes"].items()
                },
                payloads={k: PayloadForm(int(v["bytes"]), float(v["cosine"])) for k, v in raw["payloads"].items()},
                jpeg_bytes=int(raw["jpeg_bytes"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad(path, "query-side runtimes", exc) from None


def load_runtimes_runs(results: Path) -> list[RuntimesRun]:
    return _each(results, "query-side-runtimes-*.json", RuntimesRun.load, lambda r: (r.backbone, r.cpu_model))


@dataclass(frozen=True)
class BrowserRun:
    """``benchmarks/browser_encode.py``: ``browser-encode-{backbone}-{cpu}.json``."""

    cpu_model: str
    backbone: str
    input_px: int
    preprocess_ms: float
    encode_ms: float
    python_onnx_ms: float
    wasm_over_native: float

    @classmethod
    def load(cls, path: Path) -> BrowserRun:
        raw = _load_json(path, "browser encode")
        try:
            return cls(
                str(raw["cpu"]["model"]),
                str(raw["backbone"]),
                int(raw["input_px"]),
                float(raw["preprocess_ms"]),
                float(raw["encode_ms"]),
                float(raw["python_onnx_ms"]),
                float(raw["wasm_over_native"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(path, "browser encode", exc) from None


def load_browser_runs(results: Path) -> list[BrowserRun]:
    return _each(results, "browser-encode-*.json", BrowserRun.load, lambda b: (b.cpu_model, b.encode_ms))


@dataclass(frozen=True)
class LargeEncoder:
    """The large image encoder's milliseconds in one runtime (measured before and after the light ones)."""

    large_ms: float
    large_ms_before: float
    large_ms_after: float


@dataclass(frozen=True)
class BackboneRow:
    """One light backbone: its size, and per runtime its milliseconds or why it failed."""

    backbone: str
    input_px: int
    params_m: float
    #: runtime -> light milliseconds, or an error message (a failed cell)
    light_ms: dict[str, float | str]


@dataclass(frozen=True)
class BackbonesRun:
    """``isacir bench backbones``: ``query-side-backbones.json``. Runs from before ``--runtime`` hold
    PyTorch only, at the top level; they read as runs of one runtime, ``torch``."""

    foundation: str
    threads: int
    large: dict[str, LargeEncoder]
    backbones: list[BackboneRow]
    source: str | None = None
    cpu_model: str | None = None
    vector_extensions: list[str] = field(default_factory=list)

    @property
    def runtimes(self) -> list[str]:
        return list(self.large)

    @classmethod
    def load(cls, path: Path) -> BackbonesRun:
        raw = _load_json(path, "backbones")
        try:
            large_raw = raw.get("runtimes") or {
                "torch": {k: raw[k] for k in ("large_ms", "large_ms_before", "large_ms_after")}
            }
            large = {
                rt: LargeEncoder(float(v["large_ms"]), float(v["large_ms_before"]), float(v["large_ms_after"]))
                for rt, v in large_raw.items()
            }
            rows = []
            for r in raw["backbones"]:
                cells = r.get("runtimes") or {"torch": r}
                rows.append(
                    BackboneRow(
                        backbone=str(r["backbone"]),
                        input_px=int(r["input_px"]),
                        params_m=float(r["params_m"]),
                        light_ms={
                            rt: str(cells[rt]["error"]) if "error" in cells[rt] else float(cells[rt]["light_ms"])
                            for rt in large
                        },
                    )
                )
            cpu = raw.get("cpu")
            return cls(
                foundation=str(raw["foundation"]),
                threads=int(raw["threads"]),
                large=large,
                backbones=rows,
                source=raw.get("source"),
                cpu_model=cpu["model"] if cpu else None,
                vector_extensions=list(cpu["vector_extensions"]) if cpu else [],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad(path, "backbones", exc) from None
