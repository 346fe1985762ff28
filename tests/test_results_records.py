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
