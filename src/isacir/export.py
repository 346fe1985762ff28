"""Export a query encoder to ONNX for the edge runtime, and prove the export is faithful.

The export writes ``model.onnx`` (+ ``model.int8.onnx`` on request) and ``edge.json`` with the
preprocessing, the shapes and both fingerprints. Before anything is written into place, ONNX
Runtime's outputs are compared with PyTorch's on random inputs and on a real photo, and the
NumPy/Pillow preprocessing with torchvision's; a mismatch beyond tolerance aborts the export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._fs import replace_dir
from .errors import IsacirError
from .query import QueryEncoder

EDGE_FORMAT = 1
#: Max |onnx - torch| allowed, relative to the RMS of the tokens.
PARITY_RTOL = 1e-3


class ExportError(IsacirError):
    pass


class _PixelsToTokens(nn.Module):
    def __init__(self, qe: QueryEncoder):
        super().__init__()
        self.qe = qe

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.qe(pixels)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12
    return float((num / den).mean())


def export_edge(
    qe: QueryEncoder, out_dir: str | os.PathLike, int8: bool = False, opset: int = 17, seed: int = 0
) -> dict:
    """Export ``qe``; returns the verification report (also stored in ``edge.json``)."""
    import onnxruntime as ort

    from .bench.sample_images import natural_photo
    from .edge.runner import EDGE_CONFIG, preprocess_image

    if qe.uses_foundation_features:
        raise ExportError(
            f"method {qe.config.method!r} reads the large model's image features, so it cannot run on a "
            "device; only 'isa' query encoders export to the edge"
        )
    qe = qe.eval().cpu()
    size = qe.config.preprocess.image_size
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model_path = tmp / "model.onnx"
        torch.onnx.export(
            _PixelsToTokens(qe).eval(),
            (torch.randn(1, 3, size, size),),
            str(model_path),
            input_names=["pixels"],
            output_names=["tokens"],
            dynamic_axes={"pixels": {0: "batch"}, "tokens": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        spec = qe.config.preprocess.to_dict()
        photo, source = natural_photo("astronaut")
        g = torch.Generator().manual_seed(seed)
        random_px = torch.randn(2, 3, size, size, generator=g)
        tv_px = qe.preprocess(photo).unsqueeze(0)
        np_px = preprocess_image(photo, spec)[None]
        pre_diff = float(np.abs(np_px - tv_px.numpy()).max())
        if pre_diff > 1e-5:
            raise ExportError(f"NumPy preprocessing differs from torchvision's by {pre_diff:.2e}")
        inputs = torch.cat([random_px, tv_px])
        with torch.no_grad():
            ref = qe(inputs).numpy()
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        got = sess.run(["tokens"], {"pixels": inputs.numpy()})[0]
        diff = float(np.abs(got - ref).max())
        rms = float(np.sqrt((ref**2).mean()))
        tol = PARITY_RTOL * rms
        if not diff <= tol:
            raise ExportError(f"ONNX Runtime output differs from PyTorch by {diff:.2e} (tolerance {tol:.2e})")
        report = {
            "onnx_vs_torch_max_abs_diff": diff,
            "tolerance": tol,
            "token_rms": rms,
            "preprocess_max_abs_diff": pre_diff,
            "checked_on": f"2 random inputs + {source}",
        }
        files = {"fp32": "model.onnx"}
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q_path = tmp / "model.int8.onnx"
            quantize_dynamic(str(model_path), str(q_path), weight_type=QuantType.QInt8)
            q_sess = ort.InferenceSession(str(q_path), providers=["CPUExecutionProvider"])
            q_out = q_sess.run(["tokens"], {"pixels": inputs.numpy()})[0]
            report["int8"] = {
                "max_abs_diff": float(np.abs(q_out - ref).max()),
                "mean_token_cosine": _cosine(q_out, ref),
                "bytes": q_path.stat().st_size,
            }
            files["int8"] = "model.int8.onnx"
        report["fp32_bytes"] = model_path.stat().st_size
        config = {
            "format": EDGE_FORMAT,
            "query_encoder_fingerprint": qe.fingerprint,
            "foundation_id": qe.config.foundation_id,
            "foundation_fingerprint": qe.config.foundation_fingerprint,
            "backbone": qe.config.backbone,
            "num_tokens": qe.num_tokens,
            "word_dim": qe.word_dim,
            "preprocess": spec,
            "opset": opset,
            "files": files,
            "verification": report,
        }
        (tmp / EDGE_CONFIG).write_text(json.dumps(config, indent=2))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config
