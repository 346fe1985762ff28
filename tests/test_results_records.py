"""The docs' run records are read typed and checked once: a drifted record names its file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isacir_lab.results.records import ORACLES, RecordError, ShapesRun, load_shapes_runs

pytestmark = pytest.mark.lab

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_every_recorded_shapes_run_reads_as_its_json_says():
    runs = load_shapes_runs(RESULTS)
    assert [r.seed for r in runs] == sorted(r.seed for r in runs) and len(runs) >= 5
    for run in runs:
        raw = json.loads((RESULTS / f"shapes-seed{run.seed}.json").read_text())
        assert run.methods["isa"]["R@1"] == raw["methods"]["isa"]["R@1"]
        assert list(run.rows()) == [*raw["methods"], *(o for o in raw.get("oracles", {}) if o in ORACLES)]


def test_a_drifted_record_is_refused_with_its_file_and_field_named(tmp_path):
    raw = json.loads((RESULTS / "shapes-seed0.json").read_text())
    del raw["methods"]["isa"]["R@10"]
    (tmp_path / "shapes-seed0.json").write_text(json.dumps(raw))
    with pytest.raises(RecordError, match=r"shapes-seed0.json: methods.isa: missing R@10"):
        load_shapes_runs(tmp_path)
    (tmp_path / "shapes-seed0.json").write_text("{not json")
    with pytest.raises(RecordError, match="is not a bench shapes run record"):
        ShapesRun.load(tmp_path / "shapes-seed0.json")
    with pytest.raises(RecordError, match="no shapes-seed"):
        load_shapes_runs(tmp_path / "empty")


@pytest.mark.parametrize(
    "pattern, loader, field",
    [
        ("domain-seed*.json", "load_domain_runs", "steps"),
        ("pilot-versions-seed*.json", "load_pilot_versions_runs", "versions"),
        ("edge-int8-seed*.json", "load_edge_int8_runs", "r10_drop"),
    ],
)
def test_the_bench_records_read_typed_and_name_a_missing_field(tmp_path, pattern, loader, field):
    from isacir_lab.results import records

    load = getattr(records, loader)
    files = sorted(RESULTS.glob(pattern))
    assert files and len(load(RESULTS)) == len(files)
    raw = json.loads(files[0].read_text())
    del raw[field]
    (tmp_path / files[0].name).write_text(json.dumps(raw))
    with pytest.raises(RecordError, match=rf"{files[0].name} is not a .* record: missing or bad '{field}'"):
        load(tmp_path)


def test_the_soak_record_reads_as_its_json_says():
    from isacir_lab.results.records import SoakRun

    raw = json.loads((RESULTS / "soak-600s.json").read_text())
    run = SoakRun.load(RESULTS / "soak-600s.json")
    assert run.server_errors == raw["server_errors"] and set(run.requests) == set(raw["rates_per_s"])
    assert sum(run.requests.values()) == sum(raw["requests"][k] for k in raw["rates_per_s"])


def test_the_serving_and_index_records_read_as_their_json_says():
    from isacir_lab.results.records import AnnRun, IngestRun, LoadRun, ShapesAnnRun

    for path in sorted(RESULTS.glob("load-*.json")):
        raw, run = json.loads(path.read_text()), LoadRun.load(path)
        assert (run.before.rps, run.after.rps, run.rps_ratio) == (raw["before"]["rps"], raw["rps"], raw["rps_ratio"])
    for path in sorted(RESULTS.glob("ingest-*.json")):
        raw, run = json.loads(path.read_text()), IngestRun.load(path)
        assert run.after.during.p99_ms == raw["during"]["p99_ms"] and run.before.revision == raw["before"]["revision"]
    for path in sorted(RESULTS.glob("ann-1m-*.json")):
        raw, run = json.loads(path.read_text()), AnnRun.load(path)
        assert [i.type for i in run.indexes] == [r["index"]["type"] for r in raw["indexes"].values()]
    raw = json.loads((RESULTS / "ann-shapes-seed0.json").read_text())
    run = ShapesAnnRun.load(RESULTS / "ann-shapes-seed0.json")
    assert len(run.rows) == sum(len(f["tuned_on"]) for f in raw["families"].values())


def test_a_load_record_without_its_ratio_is_named(tmp_path):
    from isacir_lab.results.records import LoadRun

    raw = json.loads((RESULTS / "load-tiny.json").read_text())
    del raw["rps_ratio"]
    (tmp_path / "load-tiny.json").write_text(json.dumps(raw))
    with pytest.raises(RecordError, match="load-tiny.json is not a load test record: missing or bad 'rps_ratio'"):
        LoadRun.load(tmp_path / "load-tiny.json")


def test_the_query_side_records_read_as_their_json_says(tmp_path):
    from isacir_lab.results.records import BackbonesRun, load_browser_runs, load_runtimes_runs

    runtimes = load_runtimes_runs(RESULTS)
    assert len(runtimes) == len(list(RESULTS.glob("query-side-runtimes-*.json"))) > 0
    assert all(set(r.payloads) >= {"fp16", "int8"} and r.jpeg_bytes > 0 for r in runtimes)
    assert len(load_browser_runs(RESULTS)) == len(list(RESULTS.glob("browser-encode-*.json")))
    raw = json.loads((RESULTS / "query-side-backbones.json").read_text())
    run = BackbonesRun.load(RESULTS / "query-side-backbones.json")
    assert run.runtimes == list(raw["runtimes"]) and [b.backbone for b in run.backbones] == [
        b["backbone"] for b in raw["backbones"]
    ]
    # a run from before --runtime holds PyTorch only, at the top level: it reads as one runtime
    legacy = {k: v for k, v in raw.items() if k != "runtimes"}
    legacy["backbones"] = [{k: v for k, v in b.items() if k != "runtimes"} for b in raw["backbones"]]
    path = tmp_path / "legacy-backbones.json"
    path.write_text(json.dumps(legacy))
    old = BackbonesRun.load(path)
    assert old.runtimes == ["torch"] and old.backbones[0].light_ms["torch"] == raw["backbones"][0]["light_ms"]
