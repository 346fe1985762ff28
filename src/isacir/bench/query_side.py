"""Query-side latency and payload: what the asymmetric split saves.

Weights are random (nothing can be downloaded here), which does not change speed. ``light_ms`` is
backbone + token learner on one image, ``large_ms`` the foundation's image encoder on one image,
both on the same number of CPU threads and measured in the same run.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.samples import PHOTOS, center_square, jpeg_size, natural_photo
from .machine import cpu_info


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), times


def bench_query_side(
    foundation: str = "openclip:ViT-L-14",
    backbone: str = "efficientnet_b0",
    tokens: int = 8,
    threads: int = 1,
    repeats_light: int = 30,
    repeats_large: int = 7,
    warmup: int = 2,
    image_size: int | None = None,
    output_stride: int | None = None,
) -> dict:
    torch.set_num_threads(threads)
    fnd, qe = _models(foundation, backbone, tokens, image_size, output_stride)
    return _torch_report(fnd, qe, foundation, backbone, tokens, threads, repeats_light, repeats_large, warmup)


def _models(foundation: str, backbone: str, tokens: int, image_size: int | None, output_stride: int | None):
    """The foundation (random weights unless named) and a fresh light query side for it, seeded."""
    from ..foundation import create_foundation
    from ..query import QueryEncoder

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fnd = create_foundation(foundation)
    qe = QueryEncoder.create(
        fnd, backbone=backbone, num_tokens=tokens, image_size=image_size, output_stride=output_stride
    ).eval()
    return fnd, qe


def _torch_report(
    fnd,
    qe,
    foundation: str,
    backbone: str,
    tokens: int,
    threads: int,
    repeats_light: int,
    repeats_large: int,
    warmup: int,
) -> dict:
    """Both sides in PyTorch eager mode, with the payload and JPEG sizes (bench_query_side's keys)."""
    photo, source = natural_photo("astronaut")
    light_px = qe.preprocess(photo).unsqueeze(0)
    large_px = fnd.preprocess(photo).unsqueeze(0)

    with torch.inference_mode():
        light_ms, light_all = _median_ms(lambda: qe(light_px), repeats_light, warmup)
        large_ms, large_all = _median_ms(lambda: fnd.encode_image(large_px), repeats_large, warmup)
        pseudo = qe(light_px)
        compose_ms, _ = _median_ms(lambda: fnd.encode_composed(pseudo, ["is red and larger"]), repeats_light, warmup)

    jpeg = jpeg_size(center_square(photo, 224), quality=90)
    others = {}
    for name in PHOTOS:
        img, src = natural_photo(name)
        others[src] = jpeg_size(center_square(img, 224), quality=90)
    payload = tokens * fnd.word_dim * 2
    return {
        "foundation": foundation,
        "backbone": backbone,
        "tokens": tokens,
        "threads": threads,
        "word_dim": fnd.word_dim,
        "light_ms": round(light_ms, 3),
        "large_ms": round(large_ms, 3),
        "speedup": round(large_ms / light_ms, 2),
        "light_ms_p90": round(sorted(light_all)[int(0.9 * (len(light_all) - 1))], 3),
        "large_ms_min": round(min(large_all), 3),
        "server_compose_ms": round(compose_ms, 3),
        "light_params": sum(p.numel() for p in qe.parameters()),
        "large_image_params": sum(p.numel() for p in fnd.model.visual.parameters())
        if hasattr(fnd, "model") and hasattr(fnd.model, "visual")
        else None,
        "light_input_px": qe.config.preprocess.image_size,
        "output_stride": qe.config.output_stride,
        "large_input_px": int(large_px.shape[-1]),
        "payload_bytes": payload,
        "payload_format": f"{tokens} x {fnd.word_dim} fp16, raw tensor bytes",
        "jpeg_bytes": jpeg,
        "jpeg_source": f"{source}, centre crop, 224x224, quality 90",
        "payload_over_jpeg": round(payload / jpeg, 3),
        "jpeg_bytes_by_image": others,
        "torch": torch.__version__,
    }


#: The curated light backbones, measured side by side by :func:`bench_backbones`.
BACKBONES = (
    "efficientnet_b0",
    "efficientnet_b2",
    "mobilenetv2_100",
    "efficientvit_m2",
    "mobilevitv2_100",
    "efficientnet_lite0",
)


def bench_backbones(
    foundation: str = "openclip:ViT-L-14",
    backbones: tuple[str, ...] | list[str] = BACKBONES,
    tokens: int = 8,
    threads: int = 1,
    repeats_light: int = 30,
    repeats_large: int = 5,
    runtimes: tuple[str, ...] = ("torch",),
) -> dict:
    """Every backbone against one large image encoder in the same run, in each of ``runtimes``.

    Per runtime, the large encoder is timed before and after the light ones and the two medians are
    pooled, so drift during the run shows up as a spread between them rather than skewing one
    ratio. The top-level keys and each row's ``light_ms``/``speedup`` describe PyTorch (always
    measured); ``runtimes`` holds every runtime's ``large_ms`` and each row's ``runtimes`` its own.
    """
    import tempfile

    from ..export import _PixelsToTokens
    from ..foundation import create_foundation
    from ..query import QueryEncoder

    _check_runtimes(runtimes)
    order = ("torch",) + tuple(rt for rt in RUNTIMES if rt in runtimes and rt != "torch")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fnd = create_foundation(foundation)
    photo, source = natural_photo("astronaut")
    large_px = fnd.preprocess(photo).unsqueeze(0)
    encoders = {name: QueryEncoder.create(fnd, backbone=name, num_tokens=tokens).eval() for name in backbones}
    pixels = {name: qe.preprocess(photo).unsqueeze(0) for name, qe in encoders.items()}
    rows: dict[str, dict] = {
        name: {
            "backbone": name,
            "input_px": qe.config.preprocess.image_size,
            "params_m": round(sum(p.numel() for p in qe.parameters()) / 1e6, 2),
            "runtimes": {},
        }
        for name, qe in encoders.items()
    }
    large_by_rt: dict[str, dict] = {}
    # no_grad rather than inference_mode: the ONNX exports happen in here too
    with tempfile.TemporaryDirectory(prefix="isacir-bench-") as tmp, torch.no_grad():
        large_onnx = None
        light_onnx: dict[str, Path] = {}
        for rt in order:
            if rt == "torch":
                large = lambda: _inference(fnd.encode_image, large_px)  # noqa: E731
                lights = {n: (lambda qe=qe, px=pixels[n]: _inference(qe, px)) for n, qe in encoders.items()}
            else:
                if large_onnx is None:
                    large_onnx = _export_onnx(_ImageTower(fnd).eval(), large_px, Path(tmp) / "large.onnx")
                session, _ = _session(large_onnx, threads, int8=rt == "onnx-int8")
                gx = large_px.numpy()
                large = lambda s=session, x=gx: s.run(None, {"x": x})  # noqa: E731
                lights = {}
                for n, qe in encoders.items():
                    # one backbone that a runtime cannot take costs its own cell, not the run
                    try:
                        if n not in light_onnx:
                            light_onnx[n] = _export_onnx(_PixelsToTokens(qe).eval(), pixels[n], Path(tmp) / f"{n}.onnx")
                        light, _ = _session(light_onnx[n], threads, int8=rt == "onnx-int8")
                    except Exception as exc:  # noqa: BLE001 - the message is the result
                        rows[n]["runtimes"][rt] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                        continue
                    lights[n] = lambda s=light, x=pixels[n].numpy(): s.run(None, {"x": x})
            before, _ = _median_ms(large, repeats_large, 1)
            light_ms = {n: _median_ms(fn, repeats_light, 3)[0] for n, fn in lights.items()}
            after, _ = _median_ms(large, repeats_large, 1)
            mean = statistics.mean([before, after])
            large_by_rt[rt] = {
                "large_ms": round(mean, 1),
                "large_ms_before": round(before, 1),
                "large_ms_after": round(after, 1),
            }
            for n, ms in light_ms.items():
                rows[n]["runtimes"][rt] = {"light_ms": round(ms, 2), "speedup": round(mean / ms, 1)}
            del large, lights
    for r in rows.values():
        r.update(r["runtimes"]["torch"])
    import onnxruntime

    return {
        "foundation": foundation,
        "threads": threads,
        "tokens": tokens,
        "photo": source,
        **large_by_rt["torch"],
        "runtimes": large_by_rt,
        "backbones": list(rows.values()),
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def backbones_report(result: dict) -> str:
    """:func:`bench_backbones`'s result as an aligned text table: light ms and speedup per runtime."""
    rts = list(result["runtimes"])
    lines = [
        f"{result['foundation']} image encoder, {result['threads']} thread(s), photo: {result['photo']}: "
        + "; ".join(
            f"{rt} {v['large_ms_before']:.0f} ms before, {v['large_ms_after']:.0f} ms after"
            for rt, v in result["runtimes"].items()
        ),
        f"{'backbone':<20}{'px':>5}{'params M':>10}" + "".join(f"{rt + ' ms':>16}{'x':>7}" for rt in rts),
    ]
    for r in result["backbones"]:
        lines.append(
            f"{r['backbone']:<20}{r['input_px']:>5}{r['params_m']:>10}"
            + "".join(
                f"{c['light_ms']:>16}{c['speedup']:>7}" if "error" not in c else f"{'failed':>16}{'-':>7}"
                for c in (r["runtimes"][rt] for rt in rts)
            )
        )
    lines += [
        f"{r['backbone']} in {rt} failed: {c['error']}"
        for r in result["backbones"]
        for rt, c in r["runtimes"].items()
        if "error" in c
    ]
    return "\n".join(lines)


# ----- per runtime -----------------------------------------------------------------------------------
RUNTIMES = ("torch", "onnx", "onnx-int8")


class _ImageTower(torch.nn.Module):
    def __init__(self, foundation):
        super().__init__()
        self.foundation = foundation

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.foundation.encode_image(pixels)


def _inference(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> object:
    with torch.inference_mode():
        return fn(x)


def _export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``module`` traced to ONNX at ``path`` (input ``x``, output ``y``)."""
    # frozen attention layers take PyTorch's fused fast path, which has no ONNX form: trace the plain one
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch.onnx.export(
            module, (example,), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False
        )
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return path


def _session(path: Path, threads: int, int8: bool):
    """An ONNX Runtime session on ``threads`` threads for ``path`` (dynamically quantised to int8 on
    request, next to it), and the size in bytes of the model it runs."""
    import onnxruntime as ort

    if int8:
        from ..export import quantize_int8

        q = path.with_suffix(".int8.onnx")
        path = q if q.is_file() else quantize_int8(path, q)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), path.stat().st_size


def parse_runtimes(text: str) -> tuple[str, ...]:
    """``all`` or a comma list of :data:`RUNTIMES`, as the bench verbs take it."""
    chosen = RUNTIMES if text.strip() == "all" else tuple(r.strip() for r in text.split(",") if r.strip())
    if not chosen:
        raise ValueError(f"runtimes are {', '.join(RUNTIMES)} or all; got {text!r}")
    _check_runtimes(chosen)
    return chosen


def _check_runtimes(runtimes: tuple[str, ...]) -> None:
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise ValueError(f"unknown runtime(s) {sorted(unknown)}; choose from {', '.join(RUNTIMES)} or all")


def payload_forms(fnd, qe, pixels: torch.Tensor) -> dict:
    """Every payload form of one photo's tokens: its encoded size and the cosine of the composed
    query its decoded tokens make to the query from the fp32 tokens (what the server searches with)."""
    from ..edge.payload import decode_payload, encode_payload
    from ..export import composed_cosines

    with torch.inference_mode():
        ref = qe(pixels).float().numpy()
    out = {}
    for dtype in ("fp16", "int8", "int4"):
        data = encode_payload(ref[0], "0" * 16, dtype)
        back = decode_payload(data).tokens[None]
        cos = composed_cosines(fnd, qe.config.template, ref, back)
        out[dtype] = {
            "bytes": len(data),
            "cosine": round(float(cos.min()), 5),
            "cosine_mean": round(float(cos.mean()), 5),
        }
    return out


def bench_runtimes(
    foundation: str = "openclip:ViT-L-14",
    backbone: str = "efficientnet_b0",
    tokens: int = 8,
    threads: int = 1,
    runtimes: tuple[str, ...] = RUNTIMES,
    repeats_light: int = 30,
    repeats_large: int = 7,
    warmup: int = 2,
    image_size: int | None = None,
    output_stride: int | None = None,
) -> dict:
    """:func:`bench_query_side` (its keys describe the torch row) plus, per runtime, the light side
    and the large image encoder in that same runtime, each with its ``speedup``; and every payload form."""
    import tempfile

    from ..export import _PixelsToTokens

    _check_runtimes(runtimes)
    torch.set_num_threads(threads)
    # one load of the (large) foundation serves every runtime's row
    fnd, qe = _models(foundation, backbone, tokens, image_size, output_stride)
    result = _torch_report(fnd, qe, foundation, backbone, tokens, threads, repeats_light, repeats_large, warmup)
    photo, _ = natural_photo("astronaut")
    light_px = qe.preprocess(photo).unsqueeze(0)
    large_px = fnd.preprocess(photo).unsqueeze(0)
    rows: dict[str, dict] = {}
    if "torch" in runtimes:
        rows["torch"] = {k: result[k] for k in ("light_ms", "large_ms", "speedup")}
    with tempfile.TemporaryDirectory(prefix="isacir-bench-") as tmp:
        for rt in runtimes:
            if rt == "torch":
                continue
            int8 = rt == "onnx-int8"
            light, light_bytes = _session(
                _export_onnx(_PixelsToTokens(qe).eval(), light_px, Path(tmp) / "light.onnx"), threads, int8
            )
            large, large_bytes = _session(
                _export_onnx(_ImageTower(fnd).eval(), large_px, Path(tmp) / "large.onnx"), threads, int8
            )
            lx, gx = light_px.numpy(), large_px.numpy()
            light_ms, _ = _median_ms(lambda s=light, x=lx: s.run(None, {"x": x}), repeats_light, warmup)
            large_ms, _ = _median_ms(lambda s=large, x=gx: s.run(None, {"x": x}), repeats_large, warmup)
            with torch.inference_mode():
                ref = qe(light_px).numpy()
            got = light.run(None, {"x": lx})[0]
            rows[rt] = {
                "light_ms": round(light_ms, 3),
                "large_ms": round(large_ms, 3),
                "speedup": round(large_ms / light_ms, 2),
                "light_model_bytes": light_bytes,
                "large_model_bytes": large_bytes,
                "light_tokens_max_abs_diff_vs_torch": float(abs(got - ref).max()),
            }
            for p in Path(tmp).iterdir():
                p.unlink()
        result["payloads"] = payload_forms(fnd, qe, light_px)
    import onnxruntime

    result["runtimes"] = rows
    result["onnxruntime"] = onnxruntime.__version__
    result["cpu"] = cpu_info()
    return result
