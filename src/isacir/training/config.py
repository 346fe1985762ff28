"""Training settings: one dataclass, named JSON presets, and ``KEY=VALUE`` overrides.

:class:`TrainConfig` is the single source of truth. Each field carries its help text, and the
``isacir train`` options are generated from the fields, so a setting is written down once. Named
recipes (``isacir train --config shapes-cir``) are JSON files shipped in ``isacir/training/presets``;
any other ``--config`` value is read as a path to a JSON file with the same keys.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError
from ..template import DEFAULT_TEMPLATE, TEMPLATES, resolve_template

PRESET_PACKAGE = "isacir.training.presets"


def setting(default: Any, help: str, *, flags: tuple[str, ...] = ()) -> Any:
    """A config field with its help text (and, optionally, its command-line spelling)."""
    return field(default=default, metadata={"help": help, "flags": flags})


@dataclass
class TrainConfig:
    """Everything that determines a training run, apart from its data, foundation and output folder."""

    method: str = setting("isa", "isa | isa-symmetric | pic2word (`isacir methods` lists them).")
    backbone: str = setting("efficientnet_b0", "Light backbone for isa (`isacir backbones`; any timm name works).")
    pretrained_backbone: Union[bool, str] = setting(
        False,
        "Backbone start: false (random), true (ImageNet weights) or a local weights file (timm layout).",
        flags=("--pretrained-backbone", "--backbone-weights"),
    )
    tokens: int = setting(8, "Pseudo tokens N (pic2word always writes 1).")
    image_size: Optional[int] = setting(None, "Query-side input size in pixels (default: the backbone's own).")
    output_stride: Optional[int] = setting(
        None, "isa backbone output stride 8 | 16 | 32 (default: its own). 16 keeps a 4x4 map at 64 px."
    )
    epochs: int = setting(1, "Passes over the data (ignored when max_steps is set).")
    max_steps: Optional[int] = setting(None, "Optimizer steps for the schedule (default: epochs x steps per epoch).")
    stop_after: Optional[int] = setting(None, "Stop after this many steps without changing the schedule.")
    batch_size: int = setting(64, "Per-process batch size.")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.")
    lr: float = setting(3e-4, "Peak learning rate (AdamW).")
    weight_decay: float = setting(0.05, "AdamW weight decay (not on norms, biases or the temperature).")
    warmup_steps: int = setting(100, "Linear warmup steps before the cosine decay.")
    min_lr_ratio: float = setting(0.0, "Final learning rate as a fraction of the peak.")
    grad_clip: float = setting(1.0, "Gradient norm clip (0 = off).")
    temperature: float = setting(0.07, "InfoNCE temperature (the start value when it is learned).")
    learn_temperature: bool = setting(
        True, "Learn the temperature, or keep it fixed.", flags=("--learn-temperature/--fixed-temperature",)
    )
    lar_weight: float = setting(0.0, "Weight of the local alignment regulariser (0 = GCD only).")
    word_weight: float = setting(
        0.0, "Weight of the word prior (pull tokens towards real words); an ablation, 0 = off."
    )
    local_grid: Optional[int] = setting(None, "Pool cached patch features to GRID x GRID (saves disk).")
    template: str = setting(
        DEFAULT_TEMPLATE,
        "Prompt the pseudo tokens are trained in ({} = tokens, {} = modifier), or a language's: "
        + ", ".join(TEMPLATES)
        + ".",
    )
    augment: str = setting(
        "light", "Query-side augmentation: none | light (scale jitter) | medium (+ brightness/contrast)."
    )
    seed: int = setting(0, "Seed for initialisation, data order and augmentation.")
    init_from: Optional[str] = setting(
        None,
        "Continue distillation from this query-encoder folder (same foundation; the new encoder "
        "records it as its parent), e.g. to adapt to a customer's own unlabeled photos.",
    )
    num_workers: Optional[int] = setting(
        None, "DataLoader workers (default: 8 on CUDA, 0 on CPU).", flags=("--workers", "--num-workers")
    )
    checkpoint_every: int = setting(500, "Save a resumable checkpoint every N steps.")
    keep_checkpoints: int = setting(2, "Resumable checkpoints kept on disk.")
    log_every: int = setting(10, "Steps between rows of train_log.csv.")
    use_cache: bool = setting(
        True, "Cache the frozen teacher's features (off recomputes them every step).", flags=("--cache/--no-cache",)
    )
    cache_dir: Optional[str] = setting(None, "Teacher-feature cache root (default: OUT/teacher-cache).")
    progress: bool = setting(
        True, "Show progress (a bar on a terminal, plain lines in logs).", flags=("--progress/--no-progress",)
    )

    def __post_init__(self) -> None:
        from ..query.methods import canonical_method

        # a language name is stored as its template: the tokens are trained for these exact words
        self.template = resolve_template(self.template)

        try:
            self.method = canonical_method(self.method)
        except ConfigError:
            pass  # the trainer's settings check names it together with every other problem

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        """Build from a dict, refusing unknown keys (a typo must not silently train the default)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object of training settings")
        data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" keys document presets
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"{source}: unknown training setting(s) {unknown}; `isacir train --print-config` lists them"
            )
        return cls(**{k: coerce(cls, k, v, source) for k, v in data.items()})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
        """Apply ``KEY=VALUE`` strings; VALUE is read as JSON where it parses (``null``, ``true``, ``1e-3``)."""
        changes: dict[str, Any] = {}
        names = {f.name for f in fields(self)}
        for item in overrides:
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ConfigError(f"--override wants KEY=VALUE, got {item!r}")
            if key not in names:
                raise ConfigError(
                    f"--override: unknown training setting {key!r}; `isacir train --print-config` lists them"
                )
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            changes[key] = coerce(type(self), key, value, "--override")
        return self.replace(**changes)

    def describe(self) -> list[tuple[str, Any, str]]:
        """(name, value, help) for every setting, in declaration order."""
        return [(f.name, getattr(self, f.name), f.metadata.get("help", "")) for f in fields(self)]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed(tp: Any) -> tuple[tuple[type, ...], bool]:
    """The plain types a field accepts and whether it accepts None."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    return tuple(a for a in args if a is not type(None)), type(None) in args


def coerce(cls: type, name: str, value: Any, source: str) -> Any:
    """Check (and where lossless, convert) ``value`` for field ``name``; a wrong type is an error."""
    kinds, nullable = _allowed(_field_types(cls)[name])
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{source}: {name} cannot be null")
    if isinstance(value, str) and bool in kinds and value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in kinds:
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
        elif kind is str and isinstance(value, str):
            return value
    names = " or ".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
    raise ConfigError(f"{source}: {name} must be {names}, got {value!r}")


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".json"))


def preset_description(name: str) -> str:
    """The ``_comment`` a preset file carries (what it is for)."""
    data = json.loads((resources.files(PRESET_PACKAGE) / f"{name}.json").read_text())
    return str(data.get("_comment", ""))


def load_config(preset_or_file: str | Path | None = None) -> TrainConfig:
    """The defaults, a named preset (``shapes-cir``), or a JSON file written by ``--print-config``."""
    if preset_or_file is None:
        return TrainConfig()
    text, source = None, str(preset_or_file)
    path = Path(preset_or_file)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} not found (named presets: {', '.join(list_presets())})")
        text = path.read_text()
    else:
        candidate = resources.files(PRESET_PACKAGE) / f"{preset_or_file}.json"
        if not candidate.is_file():
            raise ConfigError(
                f"unknown preset {str(preset_or_file)!r}: choose one of {', '.join(list_presets())}, "
                "or pass a JSON file"
            )
        text, source = candidate.read_text(), f"preset {preset_or_file}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not valid JSON: {exc}") from None
    return TrainConfig.from_dict(data, source)
