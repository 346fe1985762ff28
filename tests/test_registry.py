"""The model registry: versions, states, lineage, the quality gate and concurrent writers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from isacir.registry import GateError, Registry, RegistryError


def _encoder(folder: Path, fnd, seed: int, parent: str | None = None) -> tuple[Path, str]:
    from isacir.query import QueryEncoder

    torch.manual_seed(seed)
    qe = QueryEncoder.create(fnd, backbone="mobilenetv3_small_050", num_tokens=2, image_size=48)
    if parent is not None:
        qe.config.parent_fingerprint = parent
    qe.save_pretrained(folder)
    return folder, QueryEncoder.from_pretrained(folder).fingerprint


def _adapter(folder: Path, fnd, qe_fingerprint: str, report: dict | None) -> Path:
    from isacir.adapter import AdapterConfig, QueryAdapter

    cfg = AdapterConfig(
        word_dim=fnd.word_dim,
        num_tokens=2,
        query_encoder_fingerprint=qe_fingerprint,
        foundation_fingerprint=fnd.fingerprint,
    )
    QueryAdapter(cfg).save_pretrained(folder, report=report)
    return folder


def _adapt_report(before: float, after: float, flip_rate: float) -> dict:
    """The held-out part of an ``isacir adapt`` report, as adapt writes it."""
    return {
        "holdout": {
            "before": {"n": 40, "hit@1": before, "hit@10": 0.8},
            "after": {"n": 40, "hit@1": after, "hit@10": 0.85},
            "flip_rate": flip_rate,
        }
    }


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, openclip_fnd):
    tmp = tmp_path_factory.mktemp("encoders")
    a, fa = _encoder(tmp / "a", openclip_fnd, 1)
    b, fb = _encoder(tmp / "b", openclip_fnd, 2, parent=fa)  # trained on from a (train --init-from)
    return {"a": (a, fa), "b": (b, fb), "tmp": tmp}


def test_versions_move_through_their_states_with_a_history(tmp_path, encoders, openclip_fnd):
    reg = Registry(tmp_path / "reg")
    a = reg.add("v1", encoders["a"][0], actor="test:alice")
    b = reg.add("v2", encoders["b"][0], actor="test:alice")
    assert (a["state"], b["state"]) == ("staged", "staged")
    assert a["fingerprint"] == encoders["a"][1] and a["foundation_fingerprint"] == openclip_fnd.fingerprint
    assert b["parent"] == "v1" and a["parent"] is None  # lineage through the recorded parent fingerprint
    assert (reg.path_of("v1") / "model.safetensors").is_file()  # a copy: the registry stands alone

    reg.set_state("v1", "active", actor="test:bob", force=True, reason="the first version")
    assert reg.active(openclip_fnd.fingerprint)["version"] == "v1"
    reg.set_state("v2", "canary", actor="test:bob")
    reg.set_state("v2", "active", actor="test:bob", force=True, reason="canary looked fine")
    assert reg.get("v1")["state"] == "deprecated" and reg.get("v2")["state"] == "active"
    with pytest.raises(RegistryError, match="promote another version to active first"):
        reg.set_state("v2", "retired")
    reg.set_state("v1", "retired", actor="test:bob", reason="no device left on it")
    with pytest.raises(RegistryError, match="is retired; it cannot become active"):
        reg.set_state("v1", "active", force=True, reason="x")

    moves = [(h["version"], h["from"], h["to"], h["actor"]) for h in reg.history()]
    assert moves == [
        ("v1", None, "staged", "test:alice"),
        ("v2", None, "staged", "test:alice"),
        ("v1", "staged", "active", "test:bob"),
        ("v2", "staged", "canary", "test:bob"),
        ("v1", "active", "deprecated", "test:bob"),
        ("v2", "canary", "active", "test:bob"),
        ("v1", "deprecated", "retired", "test:bob"),
    ]
    forced = [h for h in reg.history("v2") if h["to"] == "active"][0]
    assert forced["reason"] == "canary looked fine" and forced["gate"]["forced"] is True
    assert "no evaluation report" in forced["gate"]["refusal"]


def test_bad_requests_are_refused_with_the_reason(tmp_path, encoders):
    reg = Registry(tmp_path / "reg")
    reg.add("v1", encoders["a"][0])
    with pytest.raises(RegistryError, match="already exists"):
        reg.add("v1", encoders["b"][0])
    with pytest.raises(RegistryError, match="already registered as version 'v1'"):
        reg.add("v1-again", encoders["a"][0])
    with pytest.raises(RegistryError, match="version name"):
        reg.add("../escape", encoders["b"][0])
    with pytest.raises(RegistryError, match="no version 'nope'"):
        reg.set_state("nope", "canary")
    with pytest.raises(RegistryError, match="--force needs --reason"):
        reg.set_state("v1", "active", force=True)
    with pytest.raises(GateError, match="no evaluation report"):
        reg.set_state("v1", "active")
    assert reg.get("v1")["state"] == "staged" and not (tmp_path / "reg" / "versions" / "v1-again").exists()


def test_the_quality_gate_reads_the_adapter_report(tmp_path, encoders, openclip_fnd):
    reg = Registry(tmp_path / "reg")
    qe, fp = encoders["a"]
    reg.add("base", qe)
    reg.set_state("base", "active", force=True, reason="zero-shot start")
    worse = _adapter(tmp_path / "worse", openclip_fnd, fp, _adapt_report(0.40, 0.35, 0.02))
    flippy = _adapter(tmp_path / "flippy", openclip_fnd, fp, _adapt_report(0.40, 0.50, 0.08))
    good = _adapter(tmp_path / "good", openclip_fnd, fp, _adapt_report(0.40, 0.55, 0.03))
    # adapters differ only by their report: give each its own weights so that they are distinct versions
    for name, folder in (("worse", worse), ("flippy", flippy), ("good", good)):
        from isacir.adapter import QueryAdapter

        qa = QueryAdapter.from_pretrained(folder)
        with torch.no_grad():
            next(qa.parameters()).add_(0.01 * (hash(name) % 7 + 1))
        report = json.loads((folder / "report.json").read_text())
        report.pop("fingerprint")
        qa.save_pretrained(folder, report=report)
        reg.add(name, qe, adapter=folder)
    assert reg.get("good")["kind"] == "query_encoder+adapter" and reg.get("good")["parent"] == "base"
    with pytest.raises(GateError, match=r"hit@1 0.350 is below the active version's 0.400"):
        reg.set_state("worse", "active")
    with pytest.raises(GateError, match=r"flip rate 0.080 exceeds 0.05"):
        reg.set_state("flippy", "active")
    record = reg.set_state("good", "active", actor="test")
    assert record["state"] == "active" and reg.get("base")["state"] == "deprecated"
    gate = [h for h in reg.history("good") if h["to"] == "active"][0]["gate"]
    assert gate["passed"] and gate["score"] == 0.55 and gate["active_score"] == 0.40
    # the next candidate's report compares with zero-shot, but the active version is now 'good'
    with pytest.raises(GateError, match="evaluate against the active version"):
        reg.set_state("flippy", "active")


def test_a_benchmark_report_against_the_active_version_passes_the_gate(tmp_path, encoders):
    reg = Registry(tmp_path / "reg")
    reg.add("v1", encoders["a"][0])
    reg.add("v2", encoders["b"][0])
    reg.set_state("v1", "active", force=True, reason="start")
    report = tmp_path / "bench.json"
    body = {"metric": "R@1", "score": 31.0, "flip_rate": 0.04, "baseline": {"query_encoder": encoders["a"][1]}}
    report.write_text(json.dumps({**body, "baseline": {**body["baseline"], "score": 32.5}}))
    with pytest.raises(GateError, match="R@1 31.000 is below the active version's 32.500"):
        reg.set_state("v2", "active", report=report)
    report.write_text(json.dumps({**body, "baseline": {**body["baseline"], "score": 30.0}}))
    assert reg.set_state("v2", "active", report=report)["state"] == "active"


def test_cli_flow_and_json(tmp_path, encoders):
    from isacir.cli import app as cli

    runner = CliRunner()
    gal = tmp_path / "gallery"
    gal.mkdir()
    r = runner.invoke(cli, ["models", "promote", "v1", "--to", "active", "--gallery", str(gal)])
    assert r.exit_code != 0 and not (gal / "models").exists()  # a refused first change leaves no folder
    r = runner.invoke(
        cli, ["models", "add", "--gallery", str(gal), "--version", "v1", "--query-encoder", str(encoders["a"][0])]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["models", "ls", "--gallery", str(gal), "--json"])
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert [set(x) for x in rows] == [
        {"version", "kind", "fingerprint", "foundation_fingerprint", "state", "parent", "created"}
    ]
    r = runner.invoke(cli, ["models", "promote", "v1", "--to", "active", "--gallery", str(gal)])
    assert r.exit_code != 0 and "no evaluation report" in str(r.exception)
    args = ["models", "promote", "v1", "--to", "active", "--gallery", str(gal), "--force", "--reason", "first"]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    shown = json.loads(
        runner.invoke(cli, ["models", "show", "v1", "--gallery", str(gal)]).stdout.strip().splitlines()[-1]
    )
    assert shown["state"] == "active" and [h["to"] for h in shown["history"]] == ["staged", "active"]
    assert (gal / "models" / "registry.json").is_file()


WRITER = """
import sys
from isacir.registry import Registry, RegistryError
reg = Registry(sys.argv[1])
name = sys.argv[2]
for i in range(6):
    target = "canary" if i % 2 == 0 else "staged"
    try:
        reg.set_state(name, target, actor=name, reason=str(i))
    except RegistryError:
        pass
"""


def test_concurrent_commands_never_lose_or_corrupt_an_entry(tmp_path, encoders, openclip_fnd):
    reg = Registry(tmp_path / "reg")
    names = []
    for i in range(4):
        folder, _ = _encoder(encoders["tmp"] / f"c{i}", openclip_fnd, 100 + i)
        reg.add(f"c{i}", folder)
        names.append(f"c{i}")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "reg"), n]) for n in names]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    data = json.loads((tmp_path / "reg" / "registry.json").read_text())
    assert set(data["versions"]) == set(names)
    for n in names:
        moves = [h for h in data["history"] if h["version"] == n and h["from"] is not None]
        assert len(moves) == 6  # every transition of every writer is there, once
        last = moves[-1]["to"]
        assert data["versions"][n]["state"] == last == "staged"
