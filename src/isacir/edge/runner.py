"""On-device query encoder: ONNX Runtime + NumPy + Pillow, no torch.

Preprocessing replays the query encoder's :class:`~isacir.query.preprocess.PreprocessConfig`
(written to ``edge.json`` by the export) with the same Pillow operations torchvision applies to
PIL images, so pixels match the training-time pipeline exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.imageio import ImageSource, load_image
from .payload import encode_payload

EDGE_CONFIG = "edge.json"
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def preprocess_image(image: Image.Image, spec: dict) -> np.ndarray:
    """Resize the short side, centre-crop, scale to [0, 1], normalise: ``[3, S, S]`` float32."""
    size = int(spec["image_size"])
    short = int(round(size / float(spec.get("crop_pct", 1.0))))
    w, h = image.size
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), _RESAMPLE[spec.get("interpolation", "bicubic")])
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    arr: np.ndarray = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class OnnxTokens:
    """One exported token model: photos in, pseudo tokens out, preprocessed as ``spec`` says.

    The edge runner and the export's int8 check (which weighs a model before any edge folder
    exists) both encode through this, so they cannot differ.
    """

    def __init__(self, model: str | os.PathLike, spec: dict, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self.spec = spec

    def preprocess(self, image: ImageSource) -> np.ndarray:
        return preprocess_image(load_image(image), self.spec)

    def __call__(self, images: Iterable[ImageSource]) -> np.ndarray:
        pixels = np.stack([self.preprocess(im) for im in images])
        return self.session.run(["tokens"], {"pixels": pixels})[0]


class EdgeEncoder:
    """Photo -> pseudo tokens -> payload bytes, entirely on the device."""

    def __init__(self, edge_dir: str | os.PathLike, variant: str = "fp32", threads: int | None = None):
        self.dir = Path(edge_dir)
        cfg_path = self.dir / EDGE_CONFIG
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{self.dir} is not an exported edge model (no {EDGE_CONFIG})")
        self.config = json.loads(cfg_path.read_text())
        files = self.config["files"]
        if variant not in files:
            raise ValueError(f"variant {variant!r} not exported; available: {sorted(files)}")
        self._tokens = OnnxTokens(self.dir / files[variant], self.config["preprocess"], threads)
        self.variant = variant

    @property
    def session(self) -> Any:
        """The ONNX Runtime session of the variant in use."""
        return self._tokens.session

    @property
    def fingerprint(self) -> str:
        return self.config["query_encoder_fingerprint"]

    @property
    def num_tokens(self) -> int:
        return int(self.config["num_tokens"])

    @property
    def dim(self) -> int:
        return int(self.config["word_dim"])

    def preprocess(self, image: ImageSource) -> np.ndarray:
        return self._tokens.preprocess(image)

    def tokens(self, images: Iterable[ImageSource]) -> np.ndarray:
        return self._tokens(images)

    def payload(self, image: ImageSource, dtype: str = "int8") -> bytes:
        return encode_payload(self.tokens([image])[0], self.fingerprint, dtype)
