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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._fs import make_temp_dir, replace_dir
from .errors import IsacirError
from .query import QueryEncoder

EDGE_FORMAT = 1
#: Max |onnx - torch| allowed, relative to the RMS of the tokens.
PARITY_RTOL = 1e-3
#: The least cosine between a composed query from int8 tokens and the same query from fp32 tokens
#: (every check input, every check modifier) for the int8 model to be written.
INT8_MIN_QUERY_COSINE = 0.99
#: Modifiers the int8 gate composes with (what a query's text side sees in practice).
INT8_CHECK_MODIFIERS = ("", "make it red", "same but larger and striped", "without the background")


class ExportError(IsacirError):
    pass


class Int8Refused(ExportError):
    """The int8 model failed a gate; ``numbers`` holds everything both gates measured."""

    def __init__(self, message: str, numbers: dict):
        super().__init__(message)
        self.numbers = numbers


class _PixelsToTokens(nn.Module):
    def __init__(self, qe: QueryEncoder):
        super().__init__()
        self.qe = qe

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.qe(pixels)


def _file_version(fingerprint: str, path: Path) -> str:
    """A quantised model's identity: its encoder's fingerprint and a hash of its own bytes."""
    import hashlib

    return f"{fingerprint}-{path.stem.split('.')[-1]}-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamically quantise the ONNX model ``src`` to int8 weights at ``dst``.

    ONNX Runtime's pre-processing (ONNX shape inference and the graph optimiser's constant
    folding) runs first, as its quantiser asks: without it, graphs whose convolution weights are
    computed rather than stored (EfficientViT's, for one) cannot be quantised at all. Its symbolic
    shape inference is skipped: it asserts on ViT image towers and the quantiser does not need it.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    staged = dst.with_name(f".{dst.stem}.pre.onnx")
    try:
        quant_pre_process(str(src), str(staged), skip_symbolic_shape=True)
        quantize_dynamic(str(staged), str(dst), weight_type=QuantType.QInt8)
    finally:
        staged.unlink(missing_ok=True)
    return dst


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12
    return float((num / den).mean())


def composed_cosines(foundation, template: str, fp32_tokens: np.ndarray, other_tokens: np.ndarray) -> np.ndarray:
    """Cosine between the composed query from ``other_tokens`` and from ``fp32_tokens``, for every
    input and every check modifier: what the server would search with, not the tokens alone."""
    a, b = torch.from_numpy(fp32_tokens).float(), torch.from_numpy(other_tokens).float()
    out = []
    with torch.no_grad():
        for mod in INT8_CHECK_MODIFIERS:
            mods = [[mod]] * len(a)
            qa = foundation.encode_composed(a.to(foundation.device), mods, template).float().cpu()
            qb = foundation.encode_composed(b.to(foundation.device), mods, template).float().cpu()
            out.append(torch.nn.functional.cosine_similarity(qa, qb, dim=-1).numpy())
    return np.concatenate(out)


def export_edge(
    qe: QueryEncoder,
    out_dir: str | os.PathLike,
    int8: bool = False,
    opset: int = 17,
    seed: int = 0,
    foundation=None,
    min_query_cosine: float = INT8_MIN_QUERY_COSINE,
    int8_check: Callable[[Path, Path], dict] | None = None,
) -> dict:
    """Export ``qe``; returns the verification report (also stored in ``edge.json``).

    ``int8`` also writes a dynamically quantised model, gated: with ``foundation`` (the one ``qe``
    belongs to), every composed query from int8 tokens must stay within ``min_query_cosine`` of
    the fp32 one on the export's checks, or the export is refused with the numbers. The int8 model
    gets its own version identity (``versions.int8`` in ``edge.json``); its payloads carry the
    query encoder's fingerprint, so the same server decodes them.

    ``int8_check(fp32_model, int8_model)`` is a second, task-level gate on the staged models (the
    Shapes-CIR bench measures R@10 with both): it returns its numbers with ``"ok"``; they land in
    the report under ``int8.quality``, and ``ok`` false refuses the int8 model. Both gates are
    measured before either refuses, so a refusal names every number.
    """
    if int8 and foundation is None:
        raise ExportError("--int8 needs the foundation, to check the composed queries int8 tokens make")
    if foundation is not None:
        qe.check_foundation(foundation)
    import onnxruntime as ort

    from .data.samples import natural_photo
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
    tmp = make_temp_dir(out_dir)
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
            q_path = quantize_int8(model_path, tmp / "model.int8.onnx")
            q_sess = ort.InferenceSession(str(q_path), providers=["CPUExecutionProvider"])
            q_out = q_sess.run(["tokens"], {"pixels": inputs.numpy()})[0]
            cos = composed_cosines(foundation, qe.config.template, ref, q_out)
            report["int8"] = {
                "max_abs_diff": float(np.abs(q_out - ref).max()),
                "mean_token_cosine": _cosine(q_out, ref),
                "min_query_cosine": float(cos.min()),
                "mean_query_cosine": float(cos.mean()),
                "required_query_cosine": min_query_cosine,
                "query_checks": int(cos.size),
                "bytes": q_path.stat().st_size,
            }
            problems = []
            if not cos.min() >= min_query_cosine:
                problems.append(
                    f"the int8 model moves composed queries too far: least cosine to the fp32 query "
                    f"{cos.min():.4f} (mean {cos.mean():.4f}) over {cos.size} checks, below the required "
                    f"{min_query_cosine}"
                )
            if int8_check is not None:
                quality = int8_check(model_path, q_path)
                report["int8"]["quality"] = quality
                if not quality.get("ok"):
                    problems.append(f"the int8 model fails the quality check: {quality.get('reason', quality)}")
            if problems:
                raise Int8Refused(
                    "; ".join(problems) + "; export without --int8, or with a larger tolerance if that is acceptable",
                    report["int8"],
                )
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
            # each file is its own model version: a registry and the pilot tell int8 from fp32
            "versions": {
                name: qe.fingerprint if name == "fp32" else _file_version(qe.fingerprint, tmp / fname)
                for name, fname in files.items()
            },
            "verification": report,
        }
        (tmp / EDGE_CONFIG).write_text(json.dumps(config, indent=2))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config
