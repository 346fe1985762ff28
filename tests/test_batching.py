"""Micro-batching and group commit: what concurrent requests share, and what they never lose."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from isacir.serve.batching import BatcherClosed, MicroBatcher
from isacir.serve.querylog import QueryLog


def test_concurrent_submits_share_batches_and_each_gets_its_own_result():
    sizes = []

    def square(items):
        time.sleep(0.02)  # while one group runs, the next gathers
        sizes.append(len(items))
        return [x * x for x in items]

    b = MicroBatcher(square, max_batch=8, max_wait_s=0.01)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(b, range(40)))
    b.close()
    assert got == [x * x for x in range(40)]
    assert sum(sizes) == 40 and max(sizes) <= 8
    assert len(sizes) < 40 / 2, sizes  # grouped, not one call per item


def test_a_bad_member_fails_alone():
    def invert(items):
        return [1 / x for x in items]

    b = MicroBatcher(invert, max_batch=8, max_wait_s=0.05)
    futures = [b.submit(x) for x in (1, 2, 0, 4)]
    assert [f.exception() is None for f in futures] == [True, True, False, True]
    assert isinstance(futures[2].exception(), ZeroDivisionError)
    assert [futures[i].result() for i in (0, 1, 3)] == [1.0, 0.5, 0.25]
    b.close()


def test_close_finishes_what_is_queued_then_refuses():
    done = []
    b = MicroBatcher(lambda items: [done.append(x) or x for x in items], max_batch=2, max_wait_s=0.0)
    futures = [b.submit(i) for i in range(7)]
    b.close()
    assert [f.result(timeout=5) for f in futures] == list(range(7)) and sorted(done) == list(range(7))
    with pytest.raises(BatcherClosed):
        b.submit(1)


def test_short_gathering_waits_never_strand_a_group_on_a_busy_machine():
    """A regression test for a hang seen in a soak: the worker gathered with SimpleQueue.get(timeout=t),
    which in CPython 3.11 blocks for ever when the thread is descheduled inside the call for
    longer than t. Busy processes on every core make that happen; on the old queue this loop hung
    within a second in each of three tries."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range((os.cpu_count() or 1) + 1)]
    b = MicroBatcher(lambda items: [x + 1 for x in items], max_batch=8, max_wait_s=5e-6)
    try:
        t0, n = time.monotonic(), 0
        while time.monotonic() - t0 < 3.0:
            assert b.submit(n).result(timeout=10) == n + 1, n  # a stranded group raises TimeoutError
            n += 1
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        b.close()
    assert n > 1000  # the loop really exercised the gathering wait


def _log_args(i: int):
    return ("tokens", f"query {i}", b"\x00" * 64, 10, list(range(10)), "qe", "fnd")


def test_durable_log_returns_only_committed_rows_and_groups_commits(make_store):
    store = make_store()
    log = QueryLog(store, "durable", max_wait_s=0.01)
    reader = make_store()  # another connection sees only committed rows

    def log_and_check(i):
        qid = log.log(*_log_args(i))
        return reader._fetchall("SELECT COUNT(*) FROM queries WHERE query_id = ?", (qid,))[0][0]

    with ThreadPoolExecutor(16) as pool:
        seen = list(pool.map(log_and_check, range(64)))
    log.close()
    assert seen == [1] * 64
    assert log.rows == 64 and log.commits <= 64 / 4, log.commits
    assert store.counts()["queries"] == 64


def test_async_log_answers_before_the_commit_and_flush_makes_rows_visible(make_store):
    store = make_store()
    gate = threading.Event()
    log = QueryLog(store, "async", max_wait_s=0.0)
    real = store.log_rows

    def slow(rows):
        gate.wait(5)
        real(rows)

    store.log_rows = slow  # the writer is stuck until the gate opens
    qid = log.log(*_log_args(0))  # returns although nothing is committed yet
    assert store.counts()["queries"] == 0
    gate.set()
    assert log.flush(5)
    assert [q["query_id"] for q in store.queries()] == [qid]
    log.close()


def test_closing_the_log_commits_the_last_group(make_store):
    store = make_store()
    log = QueryLog(store, "async", max_wait_s=0.5)  # a long window: rows are still queued at close
    ids = [log.log(*_log_args(i)) for i in range(5)]
    log.close()
    assert sorted(q["query_id"] for q in make_store().queries()) == sorted(ids)
