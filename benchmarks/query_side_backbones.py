"""Every curated light backbone against one large image encoder, measured in the same run.

    .venv/bin/python benchmarks/query_side_backbones.py --foundation openclip:ViT-L-14 --threads 1 --runtime all

The same measurement as ``isacir bench backbones`` (``isacir.bench.query_side.bench_backbones``);
this script keeps the command the docs quote. Weights are random (speed does not depend on values).
Prints a table on stderr and one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import sys

from isacir.bench.query_side import BACKBONES, backbones_report, bench_backbones, parse_runtimes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--foundation", default="openclip:ViT-L-14")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats-light", type=int, default=30)
    ap.add_argument("--repeats-large", type=int, default=5)
    ap.add_argument("--runtime", default="torch", help="torch | onnx | onnx-int8 | all (comma-separated)")
    args = ap.parse_args()
    try:
        runtimes = parse_runtimes(args.runtime)
    except ValueError as exc:
        ap.error(str(exc))
    result = bench_backbones(
        args.foundation,
        args.backbones.split(","),
        args.tokens,
        args.threads,
        args.repeats_light,
        args.repeats_large,
        runtimes,
    )
    print(backbones_report(result), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
