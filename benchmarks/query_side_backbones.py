"""Every curated light backbone against one large image encoder, measured in the same run.

    .venv/bin/python benchmarks/query_side_backbones.py --foundation openclip:ViT-L-14 --threads 1

The same measurement as ``isacir bench backbones`` (``isacir.bench.query_side.bench_backbones``);
this script keeps the command the docs quote. Weights are random (speed does not depend on values).
Prints a table on stderr and one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import sys

from isacir.bench.query_side import BACKBONES, bench_backbones


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--foundation", default="openclip:ViT-L-14")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats-light", type=int, default=30)
    ap.add_argument("--repeats-large", type=int, default=5)
    args = ap.parse_args()
    result = bench_backbones(
        args.foundation, args.backbones.split(","), args.tokens, args.threads, args.repeats_light, args.repeats_large
    )
    print(
        f"{args.foundation} image encoder: {result['large_ms_before']:.0f} ms before, "
        f"{result['large_ms_after']:.0f} ms after ({args.threads} thread(s), photo: {result['photo']})",
        file=sys.stderr,
    )
    print(f"{'backbone':<20}{'px':>5}{'params M':>10}{'light ms':>10}{'speedup':>9}", file=sys.stderr)
    for r in result["backbones"]:
        print(
            f"{r['backbone']:<20}{r['input_px']:>5}{r['params_m']:>10}{r['light_ms']:>10}{r['speedup']:>9}",
            file=sys.stderr,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
