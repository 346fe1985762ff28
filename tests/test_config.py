"""Training settings: one dataclass, presets, overrides, and the CLI generated from them."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_cli import last_json, run

from isacir.errors import ConfigError
from isacir.training import TrainConfig, list_presets, load_config


def test_every_field_documents_itself_and_is_an_option():
    import typer

    from isacir.cli import app

    params = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name
        flags = f.metadata.get("flags") or (f"--{f.name.replace('_', '-')}",)
        option = params[f.name]
        assert flags[0].split("/")[0] in option.opts and f.metadata["help"] in option.help, f.name
        assert option.default is None  # "not given", so a preset's value is never overwritten by a default


def test_presets_load_and_are_complete():
    assert {"shapes-cir", "cc3m-vitl14"} <= set(list_presets())
    shapes = load_config("shapes-cir")
    assert (shapes.method, shapes.backbone, shapes.output_stride, shapes.augment) == (
        "isa",
        "mobilenetv3_small_100",
        16,
        "medium",
    )
    assert shapes.temperature == 0.2 and shapes.learn_temperature is False and shapes.max_steps == 1500
    assert load_config("cc3m-vitl14").pretrained_backbone is True


def test_print_config_resolves_preset_then_options_then_overrides(tmp_path):
    res = last_json(
        run(
            "train",
            "--config",
            "shapes-cir",
            "--lr",
            "0.005",
            "--batch-size",
            "7",
            "--override",
            "lr=0.01",
            "--override",
            "output_stride=null",
            "--fixed-temperature",
            "--print-config",
        )
    )
    assert res["lr"] == 0.01  # --override beats the option
    assert res["batch_size"] == 7 and res["output_stride"] is None and res["learn_temperature"] is False
    assert res["max_steps"] == 1500 and res["template"] == "{} , {}"  # from the preset
    # a printed config is a valid --config file and round-trips exactly
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(res))
    assert last_json(run("train", "--config", str(path), "--print-config")) == res
    assert TrainConfig.from_dict(res) == load_config(str(path))


def test_method_alias_becomes_the_registered_spelling():
    assert last_json(run("train", "--method", "isa_symmetric", "--print-config"))["method"] == "isa-symmetric"
    assert TrainConfig(method="isa_symmetric").method == "isa-symmetric"


def test_pretrained_backbone_takes_a_bool_or_a_path():
    assert last_json(run("train", "--pretrained-backbone", "true", "--print-config"))["pretrained_backbone"] is True
    assert (
        last_json(run("train", "--backbone-weights", "/w/b0.pth", "--print-config"))["pretrained_backbone"]
        == "/w/b0.pth"
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--config", "nope"], "unknown preset 'nope'"),
        (["--config", "/no/such.json"], "config file /no/such.json not found"),
        (["--override", "lr"], "KEY=VALUE"),
        (["--override", "lrr=1"], "unknown training setting 'lrr'"),
        (["--override", "tokens=2.5"], "tokens must be int"),
        (["--override", "learn_temperature=maybe"], "learn_temperature must be bool"),
        ([], "train needs --images, --foundation, --out"),
    ],
)
def test_bad_settings_are_one_line_errors(args, needle):
    proc = run("train", *args, *([] if not args else ["--print-config"]), check=False)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_config_file_with_unknown_or_mistyped_keys_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lr": 0.1, "bacth_size": 3}))
    with pytest.raises(ConfigError, match="unknown training setting.*bacth_size"):
        load_config(bad)
    bad.write_text(json.dumps({"batch_size": "many"}))
    with pytest.raises(ConfigError, match="batch_size must be int"):
        load_config(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)


def test_methods_and_presets_verbs_list_the_registries():
    methods = run("methods").stdout
    for name in ("isa", "isa-symmetric", "pic2word", "isa_symmetric"):
        assert name in methods
    presets = run("presets").stdout
    assert "shapes-cir" in presets and "cc3m-vitl14" in presets


def test_adapt_options_default_to_the_settings_defaults():
    """`isacir adapt` writes its defaults as literals (its module imports no torch); they must be
    AdaptSettings' own, so that the command and the library train the same recipe. An option left
    unset (None) passes nothing, so the settings' default stands; the recipe's unset default is
    the automatic choice, which custom-only options turn into ``custom``."""
    import typer

    from isacir.adapt import AdaptSettings
    from isacir.cli import app

    params = {p.name: p for p in typer.main.get_command(app).commands["adapt"].params}
    defaults = AdaptSettings.auto()
    shared = [f.name for f in dataclasses.fields(AdaptSettings) if f.name in params]
    assert len(shared) >= 20, shared
    unset = [name for name in shared if params[name].default is None]
    assert "recipe" in unset and "lora_rank" in unset and "steps" not in unset
    for name in shared:
        if name not in unset:
            assert params[name].default == getattr(defaults, name), name


def test_settings_are_checked_without_importing_torch():
    """`isacir train`'s setting errors, aliases and --print-config answer before torch loads
    (about 8 s on a laptop); the trainer imports it only once there is something to train."""
    import subprocess
    import sys

    code = """
import sys
from typer.testing import CliRunner
from isacir.cli import app
from isacir.training import TrainConfig

runner = CliRunner()
printed = runner.invoke(app, ["train", "--method", "isa_symmetric", "--print-config"])
bad = runner.invoke(app, ["train", "--override", "lrr=1", "--print-config"])
missing = runner.invoke(app, ["train", "--config", "shapes-cir"])
print(printed.exit_code, '"isa-symmetric"' in printed.stdout, TrainConfig(method="isa_symmetric").method)
print(type(bad.exception).__name__, "unknown training setting 'lrr'" in str(bad.exception))
print(type(missing.exception).__name__, "train needs --images, --foundation, --out" in str(missing.exception))
print("torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-4:] == [
        "0 True isa-symmetric",
        "ConfigError True",
        "IsacirError True",
        "False",
    ], proc.stdout


def test_builtin_method_names_match_the_registry():
    from isacir.query.methods import BUILTIN, canonical_method, list_methods
    from isacir.query.methods.base import _REGISTRY

    assert set(BUILTIN) <= set(list_methods())
    for name, aliases in BUILTIN.items():
        assert _REGISTRY[name].aliases == aliases
        assert all(canonical_method(a) == name for a in (name, *aliases))
    with pytest.raises(ConfigError, match="unknown method 'nope'.*isa"):
        canonical_method("nope")


def test_a_plugin_method_is_found_by_name_and_a_builtin_cannot_change_its_aliases():
    from isacir.query.methods import canonical_method, get_method, register_method
    from isacir.query.methods.base import _ALIASES, _REGISTRY, QueryMethod

    class Plugin(QueryMethod):
        name = "test-plugin"
        aliases = ("test_plugin",)

    class Impostor(QueryMethod):
        name = "pic2word"
        aliases = ("p2w",)

    try:
        register_method(Plugin)
        assert canonical_method("test_plugin") == "test-plugin"
        assert isinstance(get_method("test_plugin"), Plugin)
        with pytest.raises(ValueError, match="'pic2word' declares aliases.*BUILTIN"):
            register_method(Impostor)
        assert _ALIASES.get("p2w") is None and _REGISTRY["pic2word"] is not Impostor
    finally:
        for key in ("test-plugin", "test_plugin"):
            _ALIASES.pop(key, None)
        _REGISTRY.pop("test-plugin", None)
    assert TrainConfig(method="test_plugin").method == "test_plugin"  # unknown again: the trainer names it


def test_the_lazy_query_package_exports_what_it_lists():
    import isacir.query as query
    import isacir.query.methods as methods

    assert sorted(query.__all__) == sorted(query._EXPORTS)
    for name in query.__all__:
        assert getattr(query, name) is not None, name
    assert set(methods.__all__) == {"BUILTIN", "canonical_method", *methods._REGISTRY_EXPORTS}
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        query.nope  # noqa: B018
