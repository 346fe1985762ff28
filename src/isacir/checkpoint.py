"""Model folders in the Hugging Face shape: a JSON config beside ``safetensors`` weights.

The query encoder and the query adapter are both saved this way, so both get the same guarantees
from one place: a folder is written aside and swapped in with renames (a crash leaves the old
folder or none, never half of one), and reading it names exactly what is wrong (no folder, no
weights, bad JSON, another kind of model, weights that do not fit the config).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._fs import make_temp_dir, replace_dir
from .errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn


def save_folder(
    directory: str | os.PathLike,
    model: nn.Module,
    files: dict[str, dict[str, Any]],
    weights_name: str = "model.safetensors",
) -> Path:
    """Write ``model``'s weights and each JSON document of ``files`` (name -> content) as one
    folder, atomically."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory)
    try:
        save_model(model, str(tmp / weights_name))
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_config(directory: str | os.PathLike, config_name: str, weights_name: str, model_type: str, what: str) -> dict:
    """The config of a folder from :func:`save_folder`, checked to be a ``model_type`` with weights
    beside it (``what`` names the kind of folder in errors)."""
    directory = Path(directory)
    cfg_path, weights = directory / config_name, directory / weights_name
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{directory} is not a {what}: expected {config_name} and {weights_name}")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("model_type") != model_type:
        raise CheckpointError(f"{cfg_path} is not an isacir {model_type.removeprefix('isacir-')} config")
    return raw


def load_weights(model: nn.Module, weights: str | os.PathLike, device: str = "cpu") -> None:
    """Load ``weights`` into ``model`` strictly; a mismatch is a :class:`CheckpointError`."""
    from safetensors.torch import load_model

    try:
        load_model(model, str(weights), strict=True, device=device)
    except Exception as exc:
        raise CheckpointError(f"weights in {weights} do not match its config: {exc}") from None
