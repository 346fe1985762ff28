"""Shared fixtures: tiny random-init models of the real architectures, saved in real formats."""

from __future__ import annotations

import os

# No machine of this project can reach a model hub: make any accidental download fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# `make test` runs test files in pytest-xdist workers side by side: each worker gets its share of
# the cores, and so do the CLI subprocesses its tests start, so that workers never fight over them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 2) // _WORKERS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)

# The files that take longest go first (with `--dist loadfile --no-loadscope-reorder`, workers take
# files in this order), so that no worker is left with a long one at the end. test_shapes_bench
# builds the scaled-down bench that test_pilot_sim copies: it starts first, so that the bench is
# ready, not being built, when another worker reaches test_pilot_sim.
_LONGEST_FIRST = ("test_shapes_bench", "test_training", "test_cli", "test_pilot_sim", "test_gallery", "test_adapt")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(autouse=True, scope="session")
def _patient_browser_checks():
    """Playwright's ``expect`` waits 20 s, not 5, for the page to reach a state: with another test
    worker on the same cores, a dashboard that loads in one second alone took more than five."""
    try:
        from playwright.sync_api import expect
    except ImportError:
        return
    expect.set_options(timeout=20_000)


@pytest.fixture(scope="session")
def tiny_openclip_dir(tmp_path_factory) -> tuple[str, str]:
    """(name of the folder form, name of the .pt file form) of the same tiny weights."""
    from isacir.testing import save_tiny_openclip

    folder = tmp_path_factory.mktemp("tiny_openclip")
    as_dir = save_tiny_openclip(folder / "dir", seed=0)
    as_file = save_tiny_openclip(folder / "file", seed=0, as_file=True)
    return as_dir, as_file


@pytest.fixture(scope="session")
def openclip_fnd(tiny_openclip_dir):
    from isacir.foundation import create_foundation

    return create_foundation(tiny_openclip_dir[0])


@pytest.fixture(scope="session")
def tiny_blip_name(tmp_path_factory) -> str:
    from isacir.testing import save_tiny_blip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_tiny_blip(tmp_path_factory.mktemp("tiny_blip"), seed=0)


@pytest.fixture(scope="session")
def blip_fnd(tiny_blip_name):
    from isacir.foundation import create_foundation

    return create_foundation(tiny_blip_name)


@pytest.fixture(params=["openclip", "blip"])
def foundation(request, openclip_fnd, blip_fnd):
    return openclip_fnd if request.param == "openclip" else blip_fnd


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL for the session (Debian's postgresql package; `make test` installs it as root)."""
    from pg_server import TempPostgres

    server = TempPostgres().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request, tmp_path):
    """A factory of fresh feedback stores on each backend: the same tests run against both."""
    from isacir.feedback.postgres import open_store

    if request.param == "sqlite":
        spec = str(tmp_path / "feedback.sqlite")
    else:
        spec = request.getfixturevalue("postgres").new_database()
    stores = []

    def make():
        stores.append(open_store(spec))
        return stores[-1]

    make.spec = spec
    yield make
    for s in stores:
        s.close()


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory, worker_id):
    """The scaled-down Shapes bench, run once per test run: ``(out, summary, seconds)``.

    Benches that build on it (feedback, pilot versions, edge-int8) copy its cache with
    :func:`copy_shapes_cache` rather than train the tiny foundation and ISA again. Under
    pytest-xdist, the first worker to ask builds it in the run's shared temporary folder and the
    others wait on a file lock and read it, as pytest-xdist's documentation recommends.
    """
    import json
    import time

    from filelock import FileLock

    from isacir_lab.shapes.bench import ShapesBenchConfig, run_shapes_bench

    def build(out):
        t0 = time.perf_counter()
        summary = run_shapes_bench(out, ShapesBenchConfig.small(seed=0), progress=False, log=lambda *_: None)
        return out, summary, time.perf_counter() - t0

    if worker_id == "master":  # not under xdist
        return build(tmp_path_factory.mktemp("shapes-bench"))
    shared = tmp_path_factory.getbasetemp().parent / "shapes-bench"
    done = shared / "fixture.json"
    with FileLock(str(shared) + ".lock"):
        if not done.is_file():
            shared.mkdir(exist_ok=True)
            _, summary, seconds = build(shared)
            done.write_text(json.dumps({"summary": summary, "seconds": seconds}))
        stored = json.loads(done.read_text())
    return shared, stored["summary"], stored["seconds"]


def copy_shapes_cache(src, dst) -> None:
    """The cached stages of a bench folder (worlds, foundation, teacher features, methods), not its results."""
    import shutil

    for sub in ("worlds", "foundations", "teacher-cache", "methods"):
        if (src / sub).exists():
            shutil.copytree(src / sub, dst / sub, symlinks=True)


def assert_replicates_add_up(rep: dict) -> None:
    """A ``bench replicates`` result against its own per-replicate rows: the pooled R@K are their
    means (equal sizes), the flips their sum, the goals and intervals those of the pooled numbers.

    The per-replicate rows come from the benchmark's metrics and each replicate's flip rate, the
    pooled numbers from counting hits across replicates: two paths that must agree."""
    from isacir_lab.shapes.feedback_goals import feedback_goals, goals_met, verdict_intervals

    rows, pooled = rep["per_replicate"], rep["pooled"]
    assert [r["index"] for r in rows] == list(range(1, rep["replicates"] + 1))
    assert rep["queries"] % rep["replicates"] == 0
    per = rep["queries"] // rep["replicates"]

    def mean(values) -> float:  # the mean and the pooled value are each rounded to 2 decimals
        return pytest.approx(sum(values) / len(rows), abs=0.01 + 1e-9)

    for metric in ("R@1", "R@10"):
        assert pooled["before"][metric] == mean(r["before"][metric] for r in rows)
    for name, served in pooled.items():
        if name in ("before", "known_phrasings_before"):
            continue
        for metric in ("R@1", "R@10", "known_phrasings_R@10"):
            assert served[metric] == mean(r[name][metric] for r in rows)
        had = [round(r["before"]["R@1"] * per / 100) for r in rows]
        flips = sum(round((r[name]["flip_rate"] or 0.0) * h) for r, h in zip(rows, had, strict=True))
        right = sum(had)
        assert (served["flips"], served["right_before"]) == (flips, right)
        assert served["flip_rate"] == (round(flips / right, 4) if right else None)
        goals = feedback_goals(
            pooled["before"],
            served,
            served["flip_rate"],
            pooled["known_phrasings_before"],
            {"R@10": served["known_phrasings_R@10"]},
        )
        assert served["goals"] == goals and served["every_goal"] == goals_met(goals)
        assert served["replicates_meeting_every_goal"] == sum(r[name]["every_goal"] for r in rows)
        if not right:
            assert served["intervals"] is None
            continue
        gain = served["intervals"]["r1_gain"]
        # both R@1 are rounded to 2 decimals; the interval's gain is counted exactly
        assert gain["points"] == pytest.approx(served["R@1"] - pooled["before"]["R@1"], abs=0.01 + 1e-9)
        assert gain["interval"][0] <= gain["points"] <= gain["interval"][1]
        expected = verdict_intervals(pooled["before"], served, rep["queries"])["r1_gain"]["interval"]
        assert gain["interval"] == pytest.approx(list(expected))
