"""``isacir-lab bench edge-int8``: does the int8 edge model keep Shapes-CIR retrieval where fp32 has it?

The export's own int8 gate compares composed queries on a handful of inputs. This bench is the
task-level gate: the ISA encoder of a ``bench shapes`` cache is exported to ONNX (fp32 and
dynamically quantised int8), every test reference photo goes through each model in ONNX Runtime
(the device's path: NumPy/Pillow preprocessing, no torch), and the 500 test queries are scored with
both. The int8 model is written only when its R@10 is within ``max_r10_drop`` points of fp32 and the
export's cosine gate holds; either way the numbers are reported. The payload forms a device sends
(fp16, int8, int4 tokens from the int8 model) are scored too, since what the server searches with
is the decoded payload.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from isacir._fs import atomic_write_text

from .bench import METRICS, ShapesBenchConfig, cached_isa

#: The most R@10 (points) the int8 model may lose against fp32 on the Shapes-CIR test queries.
MAX_R10_DROP = 1.0


def through_payload(source: Callable[[list], np.ndarray], dtype: str) -> Callable[[list], np.ndarray]:
    """``source``'s tokens after a round trip through the wire format in ``dtype``."""
    from isacir.edge.payload import decode_payload, encode_payload

    def tokens(images: list) -> np.ndarray:
        return np.stack([decode_payload(encode_payload(t, "0" * 16, dtype)).tokens for t in source(images)])

    return tokens


def run_edge_bench(
    out: str | Path,
    seed: int = 0,
    max_r10_drop: float = MAX_R10_DROP,
    min_query_cosine: float | None = None,
    edge_out: str | Path | None = None,
    config: ShapesBenchConfig | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """R@K on the Shapes-CIR test with torch, ONNX fp32 and ONNX int8 tokens (and int8's payload
    forms); writes the gated edge folder to ``edge_out`` (default ``OUT/edge-seed{S}``) and
    ``edge-int8-seed{S}.json`` into ``out``.

    The last-line summary: ``{"seed", "torch", "fp32", "int8", "payloads": {dtype: {...}},
    "r10_drop", "max_r10_drop", "query_cosine": {"min", "mean", "required"}, "written", "edge",
    "refused"}``.
    """
    from isacir.edge.runner import OnnxTokens
    from isacir.evaluation.benchmarks import load_shapes
    from isacir.evaluation.evaluate import encode_gallery, evaluate
    from isacir.export import INT8_MIN_QUERY_COSINE, Int8Refused, export_edge

    out = Path(out)
    config = config or ShapesBenchConfig(seed=seed)
    required_cos = INT8_MIN_QUERY_COSINE if min_query_cosine is None else min_query_cosine
    t0 = time.perf_counter()
    world, fnd, _, qe = cached_isa(out, config, log, progress)
    bench = load_shapes(world)
    names = list(bench.gallery)
    vecs = encode_gallery(fnd, [bench.gallery[n] for n in names], progress=progress)
    spec = qe.config.preprocess.to_dict()

    def score(label: str, source=None) -> dict[str, float]:
        metrics, _ = evaluate(
            bench,
            fnd,
            "isa",
            query_encoder=qe,
            template=config.template,
            gallery_vecs=vecs,
            progress=False,
            token_source=source,
        )
        row = {k: round(metrics[k], 2) for k in METRICS}
        log(f"{label}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
        return row

    results: dict[str, Any] = {"torch": score("torch")}

    def quality(fp32_model: Path, int8_model: Path) -> dict:
        results["fp32"] = score("onnx fp32", OnnxTokens(fp32_model, spec))
        int8_tokens = OnnxTokens(int8_model, spec)
        results["int8"] = score("onnx int8", int8_tokens)
        results["payloads"] = {
            dtype: score(f"onnx int8, {dtype} payload", through_payload(int8_tokens, dtype))
            for dtype in ("fp16", "int8", "int4")
        }
        results["model_bytes"] = {"fp32": fp32_model.stat().st_size, "int8": int8_model.stat().st_size}
        drop = round(results["fp32"]["R@10"] - results["int8"]["R@10"], 2)
        ok = drop <= max_r10_drop
        return {
            "benchmark": f"Shapes-CIR seed {seed} test ({len(bench.queries)} queries)",
            "fp32_R@10": results["fp32"]["R@10"],
            "int8_R@10": results["int8"]["R@10"],
            "r10_drop": drop,
            "max_r10_drop": max_r10_drop,
            "ok": ok,
            **({} if ok else {"reason": f"R@10 {drop} points below fp32's, more than {max_r10_drop}"}),
        }

    edge = Path(edge_out) if edge_out is not None else out / f"edge-seed{seed}"
    refused = None
    try:
        report = export_edge(qe, edge, int8=True, foundation=fnd, min_query_cosine=required_cos, int8_check=quality)
        gate = report["verification"]["int8"]
    except Int8Refused as exc:
        # a refusal leaves whatever was at ``edge`` before untouched
        refused, gate = str(exc), exc.numbers
    summary = {
        "seed": seed,
        "torch": results["torch"],
        "fp32": results["fp32"],
        "int8": results["int8"],
        "payloads": results["payloads"],
        "r10_drop": gate["quality"]["r10_drop"],
        "max_r10_drop": max_r10_drop,
        "query_cosine": {
            "min": round(gate["min_query_cosine"], 5),
            "mean": round(gate["mean_query_cosine"], 5),
            "required": required_cos,
        },
        "written": refused is None,
        "edge": str(edge) if refused is None else None,
        "refused": refused,
    }
    detail = {
        **summary,
        "query_encoder_fingerprint": qe.fingerprint,
        "backbone": qe.config.backbone,
        "model_bytes": results["model_bytes"],
        "took_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / f"edge-int8-seed{seed}.json", json.dumps(detail, indent=2))
    return summary
