"""Every curated light backbone against one large image encoder, measured in the same run.

    .venv/bin/python benchmarks/query_side_backbones.py --foundation openclip:ViT-L-14 --threads 1

Weights are random (speed does not depend on values). The large encoder is timed before and after
the light ones and the two medians are pooled, so drift during the run shows up as a spread rather
than skewing one ratio. Prints a table on stderr and one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings

import torch

from isacir.bench.query_side import _median_ms
from isacir.bench.sample_images import natural_photo
from isacir.foundation import create_foundation
from isacir.query import QueryEncoder

BACKBONES = [
    "efficientnet_b0",
    "efficientnet_b2",
    "mobilenetv2_100",
    "efficientvit_m2",
    "mobilevitv2_100",
    "efficientnet_lite0",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--foundation", default="openclip:ViT-L-14")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats-light", type=int, default=30)
    ap.add_argument("--repeats-large", type=int, default=5)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fnd = create_foundation(args.foundation)
    photo, source = natural_photo("astronaut")
    large_px = fnd.preprocess(photo).unsqueeze(0)
    rows = []
    with torch.inference_mode():
        large_before, _ = _median_ms(lambda: fnd.encode_image(large_px), args.repeats_large, 1)
        for name in args.backbones.split(","):
            qe = QueryEncoder.create(fnd, backbone=name, num_tokens=args.tokens).eval()
            px = qe.preprocess(photo).unsqueeze(0)
            ms, _ = _median_ms(lambda qe=qe, px=px: qe(px), args.repeats_light, 3)
            rows.append(
                {
                    "backbone": name,
                    "input_px": qe.config.preprocess.image_size,
                    "light_ms": round(ms, 2),
                    "params_m": round(sum(p.numel() for p in qe.parameters()) / 1e6, 2),
                }
            )
        large_after, _ = _median_ms(lambda: fnd.encode_image(large_px), args.repeats_large, 1)
    large = statistics.mean([large_before, large_after])
    for r in rows:
        r["speedup"] = round(large / r["light_ms"], 1)
    print(
        f"{args.foundation} image encoder: {large_before:.0f} ms before, {large_after:.0f} ms after "
        f"({args.threads} thread(s), photo: {source})",
        file=sys.stderr,
    )
    print(f"{'backbone':<20}{'px':>5}{'params M':>10}{'light ms':>10}{'speedup':>9}", file=sys.stderr)
    for r in rows:
        print(
            f"{r['backbone']:<20}{r['input_px']:>5}{r['params_m']:>10}{r['light_ms']:>10}{r['speedup']:>9}",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {
                "foundation": args.foundation,
                "threads": args.threads,
                "tokens": args.tokens,
                "large_ms": round(large, 1),
                "large_ms_before": round(large_before, 1),
                "large_ms_after": round(large_after, 1),
                "backbones": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
