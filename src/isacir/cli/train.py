"""``isacir train``: its options are generated from :class:`~isacir.training.TrainConfig`.

A setting is written once, as a field with its help text; this module turns every field into an
option that defaults to "not given", so a value comes from (in order of precedence) ``--override``,
an explicit option, ``--config`` (a named preset or a JSON file), and the field's default.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ..errors import IsacirError
from ..training.config import TrainConfig, _allowed, coerce, list_presets, load_config, preset_description
from ._app import JSON_ALWAYS_HELP, JSON_HELP, app, emit_json, err, out


def _option(f: dataclasses.Field, hint: Any) -> inspect.Parameter:
    kinds, _ = _allowed(hint)
    name = f.name.replace("_", "-")
    flags = tuple(f.metadata.get("flags") or ())
    if kinds == (bool,):
        annotation: Any = Optional[bool]
        flags = flags or (f"--{name}/--no-{name}",)
    elif len(kinds) > 1:  # bool or a path, for example: parsed by coerce()
        annotation = Optional[str]
        flags = flags or (f"--{name}",)
    else:
        annotation = Optional[kinds[0]]
        flags = flags or (f"--{name}",)
    shown = f.default if f.default is not dataclasses.MISSING else None
    help_text = f"{f.metadata.get('help', '')} [default: {json.dumps(shown)}]"
    option = typer.Option(None, *flags, help=help_text, show_default=False, rich_help_panel="Training settings")
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _fixed_parameters() -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter(
            "images",
            kw,
            annotation=Optional[list[str]],
            default=typer.Option(
                None, "--images", help="Folder, .txt file list or .tar shards (brace patterns ok); repeatable."
            ),
        ),
        inspect.Parameter(
            "foundation",
            kw,
            annotation=Optional[str],
            default=typer.Option(None, help="Frozen large model, e.g. openclip:ViT-L-14/openai."),
        ),
        inspect.Parameter(
            "out_dir",
            kw,
            annotation=Optional[Path],
            default=typer.Option(None, "--out", help="Run folder: checkpoints/, final/, train_log.csv."),
        ),
        inspect.Parameter(
            "config",
            kw,
            annotation=Optional[str],
            default=typer.Option(
                None, "--config", help=f"A named preset ({', '.join(list_presets())}) or a JSON file of settings."
            ),
        ),
        inspect.Parameter(
            "override",
            kw,
            annotation=list[str],
            default=typer.Option(
                [],
                "--override",
                help="KEY=VALUE on top of everything else (repeatable); VALUE is JSON where it parses.",
            ),
        ),
        inspect.Parameter(
            "print_config",
            kw,
            annotation=bool,
            default=typer.Option(
                False, "--print-config", help="Print the resolved settings as JSON and exit (nothing is trained)."
            ),
        ),
        inspect.Parameter(
            "as_json",
            kw,
            annotation=bool,
            default=typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
        ),
        inspect.Parameter(
            "resume",
            kw,
            annotation=Optional[str],
            default=typer.Option(None, help="'auto' (latest checkpoint in OUT) or a checkpoint folder."),
        ),
    ]


def resolve_config(config: str | None, explicit: dict[str, Any], override: list[str]) -> TrainConfig:
    """Preset or file, then explicit options, then ``--override``: the same order for every caller."""
    cfg = load_config(config)
    changes = {k: coerce(TrainConfig, k, v, f"--{k.replace('_', '-')}") for k, v in explicit.items() if v is not None}
    return cfg.replace(**changes).with_overrides(override)


def train_cmd(**kwargs: Any) -> None:
    """Train a query encoder from unlabeled images (GCD + optional LAR)."""
    fixed = {p.name: kwargs.pop(p.name) for p in FIXED_PARAMETERS}
    cfg = resolve_config(fixed["config"], kwargs, fixed["override"])
    if fixed["print_config"]:
        table = Table("setting", "value", "what it does")
        for name, value, help_text in cfg.describe():
            table.add_row(name, json.dumps(value), help_text)
        err.print(table)
        emit_json(cfg.to_dict())
        return
    if not fixed["foundation"] and cfg.init_from:
        from ..query import QueryEncoder

        fixed["foundation"] = QueryEncoder.load_config(cfg.init_from).foundation_id or None  # the parent's
    missing = [
        flag
        for flag, key in (("--images", "images"), ("--foundation", "foundation"), ("--out", "out_dir"))
        if not fixed[key]
    ]
    if missing:
        raise IsacirError(f"train needs {', '.join(missing)} (or --print-config to see the settings)")

    from ..foundation import create_foundation
    from ..training import train

    fnd = create_foundation(fixed["foundation"])
    resume_arg: bool | str = False
    if fixed["resume"]:
        resume_arg = True if fixed["resume"] == "auto" else fixed["resume"]
    result = train(
        fixed["images"], fnd, fixed["out_dir"], cfg, resume=resume_arg, log=lambda m: err.print(m, highlight=False)
    )
    emit_json(
        {
            "out": str(result.out_dir),
            "steps": result.steps,
            "final_loss": result.final_loss,
            "skipped": result.skipped,
            "seconds": round(result.seconds, 2),
        }
    )
    from ..training.distributed import shutdown_distributed

    del result  # nothing of the run may keep the process group alive past the shutdown
    shutdown_distributed()


FIXED_PARAMETERS = _fixed_parameters()
hints = typing.get_type_hints(TrainConfig)
train_cmd.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    FIXED_PARAMETERS + [_option(f, hints[f.name]) for f in dataclasses.fields(TrainConfig)]
)
app.command("train")(train_cmd)


@app.command("presets")
def presets_cmd(
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the named training presets (`isacir train --config NAME`)."""
    if as_json:
        emit_json([{"name": name, "description": preset_description(name)} for name in list_presets()])
        return
    for name in list_presets():
        out.print(f"[bold]{name}[/]: {preset_description(name)}", highlight=False)
