"""The on-device query side in a browser: encode time in headless Chromium (WebAssembly, 1 thread).

    .venv/bin/python benchmarks/browser_encode.py --foundation openclip:ViT-L-14 --backbone efficientnet_b0

Exports the light model (random weights: speed does not depend on values) exactly as
``isacir export-edge`` does, serves it with the operator UI's own scripts (``edge.js`` and the
ONNX Runtime Web files that ``make web`` installs), and times in Chromium, in the same run:
  * ``preprocess_ms``: the JavaScript preprocessing of a 640x480 photo (Pillow-exact bicubic
    resize, crop, normalise);
  * ``encode_ms``: one forward pass of the light model in ONNX Runtime Web (WASM, 1 thread);
  * ``python_onnx_ms``: the same model file in ONNX Runtime for Python (1 thread), for reference.
Prints one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import mimetypes
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

STATIC = Path(__file__).resolve().parents[1] / "src" / "isacir" / "serve" / "static"
CHROMIUM = os.environ.get("ISACIR_CHROMIUM", "/usr/bin/chromium")  # Debian's, as the browser tests use

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="/ui/vendor/ort.wasm.min.js"></script><script src="/ui/edge.js"></script></head><body></body></html>"""

TIMING = """async ([repeats, size]) => {
  ort.env.wasm.wasmPaths = "/ui/vendor/";
  ort.env.wasm.numThreads = 1;
  const config = await (await fetch("/edge/edge.json")).json();
  const model = await (await fetch("/edge/model.onnx")).arrayBuffer();
  const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
  const w = 640, h = 480, rgba = new Uint8ClampedArray(w * h * 4);
  for (let i = 0; i < rgba.length; i++) rgba[i] = (i * 2654435761) >>> 24;
  const pre = [], enc = [];
  let pixels = null;
  for (let r = 0; r < repeats + 2; r++) {
    let t0 = performance.now();
    pixels = IsacirEdge.preprocess(rgba, w, h, config.preprocess);
    const t1 = performance.now();
    const input = new ort.Tensor("float32", pixels, [1, 3, size, size]);
    await session.run({ pixels: input });
    const t2 = performance.now();
    if (r >= 2) { pre.push(t1 - t0); enc.push(t2 - t1); }
  }
  const median = (a) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)];
  return { preprocess_ms: median(pre), encode_ms: median(enc), user_agent: navigator.userAgent };
}"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--foundation", default="openclip:ViT-L-14")
    ap.add_argument("--backbone", default="efficientnet_b0")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch
    from playwright.sync_api import sync_playwright

    from isacir.bench.machine import cpu_info
    from isacir.export import export_edge
    from isacir.foundation import create_foundation
    from isacir.query import QueryEncoder

    if not (STATIC / "vendor" / "ort.wasm.min.js").is_file():
        sys.exit("ONNX Runtime Web is missing: run `make web` first")
    torch.manual_seed(0)
    fnd = create_foundation(args.foundation)
    qe = QueryEncoder.create(fnd, backbone=args.backbone, num_tokens=args.tokens).eval()
    size = qe.config.preprocess.image_size
    with tempfile.TemporaryDirectory(prefix="isacir-browser-") as tmp:
        root = Path(tmp)
        export_edge(qe, root / "edge")
        (root / "ui").symlink_to(STATIC)
        (root / "index.html").write_text(PAGE)
        mimetypes.add_type("application/wasm", ".wasm")
        mimetypes.add_type("text/javascript", ".mjs")
        handler = functools.partial(_Quiet, directory=str(root))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
                got = page.evaluate(TIMING, [args.repeats, size])
                version = browser.version
                browser.close()
        finally:
            httpd.shutdown()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(root / "edge" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)
        times = []
        for r in range(args.repeats + 2):
            t0 = time.perf_counter()
            sess.run(None, {"pixels": x})
            if r >= 2:
                times.append((time.perf_counter() - t0) * 1000)
        model_bytes = (root / "edge" / "model.onnx").stat().st_size
    result = {
        "foundation": args.foundation,
        "backbone": args.backbone,
        "tokens": args.tokens,
        "input_px": size,
        "threads": 1,
        "browser": f"Chromium {version} (headless), ONNX Runtime Web WASM",
        "onnxruntime_web": json.loads((STATIC / "vendor" / "VERSION.json").read_text())["onnxruntime-web"],
        "preprocess_ms": round(got["preprocess_ms"], 2),
        "encode_ms": round(got["encode_ms"], 2),
        "python_onnx_ms": round(statistics.median(times), 2),
        "wasm_over_native": round(got["encode_ms"] / statistics.median(times), 2),
        "model_bytes": model_bytes,
        "cpu": cpu_info(),
    }
    print(json.dumps(result))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    main()
