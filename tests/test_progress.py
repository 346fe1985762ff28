"""Progress output: bars on a terminal, a bounded number of plain lines in logs."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from isacir.progress import LogProgress, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_at_a_bounded_rate():
    clock, out = FakeClock(), io.StringIO()
    bar = LogProgress(total=1000, desc="train isa", unit="step", stream=out, interval_s=30, clock=clock)
    for _ in range(1000):  # 95 simulated seconds
        clock.t += 0.095
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    bar.close()  # closing twice writes one end line
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 3 + 1  # start, at 30 / 60 / 90 s, end
    assert lines[0].startswith("train isa: started 0/1000 step")
    assert lines[-1].startswith("train isa: done 1000/1000 step, 95 s") and "loss=0.5" in lines[-1]
    assert "\r" not in out.getvalue()


def test_iterating_counts_and_closes():
    out = io.StringIO()
    assert list(LogProgress(range(7), desc="x", stream=out)) == list(range(7))
    assert out.getvalue().splitlines()[-1].startswith("x: done 7/7")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_bar_and_disabled_prints_nothing():
    from tqdm.auto import tqdm

    assert isinstance(progress_bar(total=3, stream=FakeTTY()), tqdm)
    assert isinstance(progress_bar(total=3, stream=io.StringIO()), LogProgress)
    quiet = io.StringIO()
    bar = progress_bar(total=3, disable=True, stream=quiet)
    bar.update(3)
    bar.close()
    assert quiet.getvalue() == ""


def test_cli_writes_plain_lines_to_a_log(tmp_path, tiny_openclip_dir):
    from test_gallery import ENV, make_folder

    folder = make_folder(tmp_path / "imgs", 40)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "index",
            str(folder),
            "--gallery",
            str(tmp_path / "g"),
            "--foundation",
            tiny_openclip_dir[0],
            "--workers",
            "0",
            "--batch-size",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1])["added"] == 40
    assert "\r" not in proc.stderr
    progress_lines = [line for line in proc.stderr.splitlines() if line.startswith("indexing:")]
    assert [line.split()[1] for line in progress_lines] == ["started", "done"]  # 20 batches, well under 30 s
