"""The tables of the benchmarks that measure speed, load and the device side (no learning)."""

from __future__ import annotations

import csv
import io

from .cells import METRICS, _arrow
from .records import (
    AnnRun,
    BackbonesRun,
    BrowserRun,
    DomainRun,
    EdgeInt8Run,
    IngestRun,
    LoadRun,
    PilotVersionsRun,
    RuntimesRun,
    ShapesAnnRun,
    SoakRun,
)


def backbones_table(result: BackbonesRun) -> str:
    note = f"; {result.source}" if result.source else ""
    where = f" on {result.cpu_model} ({', '.join(result.vector_extensions)})" if result.cpu_model else ""
    timing = "; ".join(
        f"{rt} {v.large_ms_before:.0f} ms before and {v.large_ms_after:.0f} ms after" for rt, v in result.large.items()
    )
    lines = [
        f"{result.foundation} image encoder, {result.threads} thread(s){where}: {timing} the light ones{note}.",
        "",
        "| backbone | input px | params (M, with token learner) | "
        + " | ".join(f"{rt} light ms | {rt} speedup" for rt in result.runtimes)
        + " |",
        "|---|---:|---:|" + "---:|---:|" * len(result.runtimes),
    ]
    errors = []
    for r in result.backbones:
        row = []
        for rt in result.runtimes:
            ms = r.light_ms[rt]
            if isinstance(ms, str):
                errors.append(f"- {r.backbone} in {rt}: `{ms}`")
                row.append(f"failed ({len(errors)}) | –")
            else:
                row.append(f"{ms:.1f} | **{result.large[rt].large_ms / ms:.0f}x**")
        lines.append(f"| {r.backbone} | {r.input_px} | {r.params_m:.2f} | {' | '.join(row)} |")
    if errors:
        lines += ["", "Failed cells:", "", *[f"{i}. {e[2:]}" for i, e in enumerate(errors, 1)]]
    return "\n".join(lines) + "\n"


def backbones_csv(result: BackbonesRun) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["backbone", "input_px", "params_m", "runtime", "light_ms", "large_ms", "speedup"])
    for r in result.backbones:
        for rt in result.runtimes:
            ms, big = r.light_ms[rt], result.large[rt].large_ms
            if isinstance(ms, str):
                w.writerow([r.backbone, r.input_px, r.params_m, rt, "", big, ""])
                continue
            w.writerow([r.backbone, r.input_px, r.params_m, rt, ms, big, f"{big / ms:.1f}"])
    return buf.getvalue()


def pilot_definitions() -> str:
    """The pilot's definitions as the code states them (so the docs cannot drift from the code)."""
    from isacir.pilot.metrics import DEFINITIONS

    return "| name | definition |\n|---|---|\n" + "".join(f"| `{k}` | {v} |\n" for k, v in DEFINITIONS.items())


def domain_table(runs: list[DomainRun]) -> str:
    """`bench domain` per seed: the shifted world's test (the customer's) and the standard one."""
    if not runs:
        return "No `bench domain` run is recorded yet.\n"
    lines = [
        "| seed | adaptation set | steps | shifted R@1 | shifted R@10 | standard R@1 | standard R@10 |",
        "|---:|---|---:|---|---|---|---|",
    ]
    for r in runs:
        images = "customer's + original photos" if r.replay else "customer's photos"
        cells = [
            _arrow(r.tests[world]["before"][k], r.tests[world]["after"][k])
            for world in ("shifted", "standard")
            for k in ("R@1", "R@10")
        ]
        lines.append(f"| {r.seed} | {images} | {r.steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pilot_versions_table(runs: list[PilotVersionsRun]) -> str:
    """`bench pilot-versions`: the pilot's rates per served version, with Wilson 95 % intervals."""
    if not runs:
        return "No `bench pilot-versions` run is recorded yet.\n"
    lines = [
        "| seed | version | queries | false-hit rate [95 %] | precision@1 [95 %] | hit@K |",
        "|---:|---|---:|---|---|---:|",
    ]
    for r in runs:
        for g in r.versions:
            fh, p1 = g.false_hit_rate_ci, g.precision_at_1_ci
            lines.append(
                f"| {r.seed} | `{g.key}` | {g.queries} | {g.false_hit_rate:.3f} [{fh[0]:.3f}, {fh[1]:.3f}] "
                f"| {g.precision_at_1:.3f} [{p1[0]:.3f}, {p1[1]:.3f}] | {g.hit_at_k:.3f} |"
            )
    return "\n".join(lines) + "\n"


def load_test_table(runs: list[tuple[str, LoadRun]]) -> str:
    """`benchmarks/load_test.py --compare-to REV`: before and after, side by side from one run each."""
    if not runs:
        return "No load-test run is recorded yet.\n"
    lines = [
        "| foundation | server | requests/s | p50 ms | p99 ms | p99 / p50 | log commits per query | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs:
        b, a = r.before, r.after
        names = {1: "1 torch thread", None: "torch's threads"}
        threads = names.get(b.torch_threads, f"{b.torch_threads} threads")
        for who, x, commits in (
            (f"before (`{b.revision}`, {threads})", b, "1 (one per query)"),
            ("after (defaults)", a, f"{a.log_commits_per_query:.3f}"),
        ):
            lines.append(
                f"| {name} | {who} | {x.rps:.1f} | {x.p50_ms:.1f} | {x.p99_ms:.1f} | "
                f"{x.p99_ms / x.p50_ms:.2f} | {commits} | {x.errors} |"
            )
        lines.append(f"| {name} | **after / before** | **{r.rps_ratio:.2f}x** | | | | | |")
    return "\n".join(lines) + "\n"


def soak_table(run: SoakRun | None) -> str:
    """`benchmarks/soak.py`: requests per workload, server errors and resident memory."""
    if run is None:
        return "No soak run is recorded yet.\n"
    lines = ["| workload | rate /s | requests | statuses |", "|---|---:|---:|---|"]
    for name, rate in run.rates_per_s.items():
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(run.status[name].items()))
        lines.append(f"| {name} | {rate:g} | {run.requests[name]} | {codes} |")
    lines.append("")
    lines.append(
        f"{run.duration_s:.0f} s on {run.cpu_count} cores: **{run.server_errors} server errors**, "
        f"{run.transport_errors} transport errors; resident memory {run.rss_warm_mb:.0f} MB after warm-up, "
        f"{run.rss_end_mb:.0f} MB at the end (**{100 * run.rss_growth:+.1f} %**, goal at most +10 %)."
    )
    return "\n".join(lines) + "\n"


def ann_table(runs: list[tuple[str, AnnRun]]) -> str:
    """`isacir bench search --index all`: every index family on the same data, against exact search."""
    if not runs:
        return "No ANN run is recorded yet.\n"
    lines = [
        "| data, queries | index | nprobe | build s | p50 ms | p99 ms | recall@10 "
        "| re-ranked top 100: recall@10, p50 ms | GiB per 1M vectors |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, run in runs:
        for r in run.indexes:
            rerank = (
                f"{r.recall_at_10_rerank:.3f}, {r.rerank_p50_ms:.2f}"
                if r.recall_at_10_rerank is not None and r.rerank_p50_ms is not None
                else "(exact)"
            )
            nprobe = r.nprobe if r.nprobe is not None else "-"
            lines.append(
                f"| {name} | {r.type} | {nprobe} | {r.build_s:.0f} | {r.ann_p50_ms:.2f} | "
                f"{r.ann_p99_ms:.2f} | {r.recall_at_10:.3f} | {rerank} | {r.gib_per_million:.3f} |"
            )
    first = runs[0][1]
    lines.append("")
    lines.append(
        f"{first.n:,} x {first.dim} vectors; {first.queries} single queries for the first data set, "
        f"{runs[-1][1].queries} for the others; exact search p50 {first.exact_p50_ms:.0f} ms. Memory is the "
        "serialized index (codes, ids, lists and the id map)."
    )
    cal = next((r.calibration for _, r in runs if r.calibration), None)
    if cal:
        lines.append(
            f"Calibrated on `{cal['gallery']}` ({cal['source_n']:,} vectors, {cal['source_dim']}-d): "
            f"{cal['clusters']} k-means clusters, median cosine to the centre {cal['cos_to_centre_median']:.2f}, "
            f"mean cosine between centres {cal['centre_pairwise_cos']:.3f}."
        )
    return "\n".join(lines) + "\n"


def shapes_ann_table(run: ShapesAnnRun | None) -> str:
    """`benchmarks/shapes_ann.py`: IVF families on the Shapes-CIR gallery with its real composed queries."""
    if run is None:
        return "No Shapes-CIR ANN run is recorded yet.\n"
    lines = [
        "| index | nprobe tuned on | nprobe | recall@10 | after exact re-ranking | task R@10 | p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in run.rows:
        rr = f"{r.recall_at_10_reranked:.3f}" if r.recall_at_10_reranked is not None else "-"
        lines.append(
            f"| {r.family} ({r.nlist} lists) | {r.tuned_on} | {r.nprobe} | {r.recall_at_10:.3f} | {rr} | "
            f"{r.task_r10:.1f} | {r.p50_ms:.3f} |"
        )
    lines.append("")
    lines.append(
        f"{run.gallery:,} gallery images ({run.dim}-d), {run.queries_measured} held-out composed queries "
        f"(tuned on {run.queries_tuned_on} others); exact search's task R@10 is {run.exact_task_r10:.1f}."
    )
    return "\n".join(lines) + "\n"


def ingest_table(runs: list[IngestRun]) -> str:
    """`benchmarks/ingest_under_load.py --compare-to REV`: search latency idle and during a 20k add."""
    if not runs:
        return "No ingest run is recorded yet.\n"
    lines = [
        "| writer | gallery | code | idle p50 / p99 ms | during p50 / p99 / max ms | p99 during / idle | add time |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for r in runs:
        where = f"{r.base // 1000}k + {r.added // 1000}k"
        writer = "another process (nice 10)" if r.writer == "process" else "a thread of the service"
        for who, x in ((f"before (`{r.before.revision}`)", r.before), ("after", r.after)):
            lines.append(
                f"| {writer} | {where} | {who} | {x.idle.p50_ms:.2f} / {x.idle.p99_ms:.2f} | "
                f"{x.during.p50_ms:.2f} / {x.during.p99_ms:.2f} / {x.during.max_ms:.0f} | "
                f"**{x.p99_ratio:.2f}x** | "
                f"{x.add_s:.0f} s |"
            )
    return "\n".join(lines) + "\n"


def runtimes_table(runs: list[RuntimesRun], browser: list[BrowserRun]) -> str:
    """`isacir bench query-side --runtime all` per backbone and CPU, and `benchmarks/browser_encode.py`."""
    if not runs:
        return "No per-runtime run is recorded yet.\n"
    first = runs[0]
    lines = [
        f"{first.threads} thread; foundation `{first.foundation}`, {first.tokens} tokens; PyTorch {first.torch}.",
        "",
        "| CPU (vector extensions) | ONNX Runtime | backbone | runtime | light ms | large ms | speedup |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in runs:
        cpu = f"{r.cpu_model} ({', '.join(r.vector_extensions) or 'none listed'})"
        for name, row in r.runtimes.items():
            lines.append(
                f"| {cpu} | {r.onnxruntime} | {r.backbone} | {name} | {row.light_ms:.1f} | "
                f"{row.large_ms:.0f} | **{row.speedup:.0f}x** |"
            )
    lines += [
        "",
        f"Payload forms ({first.backbone}; the cosine is the composed query's to the fp32 one, the least over "
        f"four modifiers; a {first.jpeg_bytes:,}-byte JPEG of the same photo for scale):",
        "",
        "| payload | bytes | of the JPEG | query cosine |",
        "|---|---:|---:|---:|",
    ]
    for name, form in first.payloads.items():
        lines.append(f"| {name} | {form.bytes:,} | {form.bytes / first.jpeg_bytes:.2f} | {form.cosine:.4f} |")
    if browser:
        lines += [
            "",
            "In the browser (headless Chromium, ONNX Runtime Web WASM, 1 thread):",
            "",
            "| CPU | backbone | input px | preprocess ms | encode ms | Python ONNX Runtime ms | WASM / native |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for b in browser:
            lines.append(
                f"| {b.cpu_model} | {b.backbone} | {b.input_px} | {b.preprocess_ms:.1f} | "
                f"{b.encode_ms:.1f} | {b.python_onnx_ms:.1f} | {b.wasm_over_native:.2f} |"
            )
    return "\n".join(lines) + "\n"


def edge_int8_table(runs: list[EdgeInt8Run]) -> str:
    """`isacir-lab bench edge-int8`: Shapes-CIR test R@K with PyTorch, ONNX fp32 and ONNX int8 tokens."""
    if not runs:
        return "No edge-int8 run is recorded yet.\n"
    lines = [
        "| seed | tokens from | " + " | ".join(METRICS) + " |",
        "|---:|---|" + "---:|" * len(METRICS),
    ]
    for r in runs:
        for name, m in r.rows.items():
            lines.append(f"| {r.seed} | {name} | " + " | ".join(f"{m[k]:.2f}" for k in METRICS) + " |")
    lines.append("")
    for r in runs:
        verdict = "written" if r.written else f"refused ({r.refused})"
        lines.append(
            f"- seed {r.seed} ({r.backbone}): int8's R@10 is {r.r10_drop:.2f} points below fp32's "
            f"(allowed {r.max_r10_drop}); least composed-query cosine {r.min_query_cosine:.4f} "
            f"(required {r.required_query_cosine}); model {r.int8_bytes:,} bytes against {r.fp32_bytes:,}: "
            f"int8 model {verdict}."
        )
    return "\n".join(lines) + "\n"
