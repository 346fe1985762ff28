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

import torch

from .sample_images import PHOTOS, center_square, jpeg_size, natural_photo


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
    from ..foundation import create_foundation
    from ..query import QueryEncoder

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fnd = create_foundation(foundation)
    qe = QueryEncoder.create(
        fnd, backbone=backbone, num_tokens=tokens, image_size=image_size, output_stride=output_stride
    ).eval()

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
) -> dict:
    """Every backbone against one large image encoder in the same run.

    The large encoder is timed before and after the light ones and the two medians are pooled, so
    drift during the run shows up as a spread between them rather than skewing one ratio.
    """
    from ..foundation import create_foundation
    from ..query import QueryEncoder

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fnd = create_foundation(foundation)
    photo, source = natural_photo("astronaut")
    large_px = fnd.preprocess(photo).unsqueeze(0)
    rows = []
    with torch.inference_mode():
        large_before, _ = _median_ms(lambda: fnd.encode_image(large_px), repeats_large, 1)
        for name in backbones:
            qe = QueryEncoder.create(fnd, backbone=name, num_tokens=tokens).eval()
            px = qe.preprocess(photo).unsqueeze(0)
            ms, _ = _median_ms(lambda qe=qe, px=px: qe(px), repeats_light, 3)
            rows.append(
                {
                    "backbone": name,
                    "input_px": qe.config.preprocess.image_size,
                    "light_ms": round(ms, 2),
                    "params_m": round(sum(p.numel() for p in qe.parameters()) / 1e6, 2),
                }
            )
        large_after, _ = _median_ms(lambda: fnd.encode_image(large_px), repeats_large, 1)
    large = statistics.mean([large_before, large_after])
    for r in rows:
        r["speedup"] = round(large / r["light_ms"], 1)
    return {
        "foundation": foundation,
        "threads": threads,
        "tokens": tokens,
        "photo": source,
        "large_ms": round(large, 1),
        "large_ms_before": round(large_before, 1),
        "large_ms_after": round(large_after, 1),
        "backbones": rows,
    }
