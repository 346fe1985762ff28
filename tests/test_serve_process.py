"""``isacir serve`` as a child process: the helpers the load test, the soak and the fault tests share."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from isacir.serve.local import ServerDidNotStart, free_port, start_serve, stop_serve


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('no such gallery: /nowhere', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(ServerDidNotStart, match=r"exited with 3(.|\n)*no such gallery: /nowhere"):
        start_serve(cmd, f"http://127.0.0.1:{free_port()}/readyz", tmp_path / "serve.log", start_timeout=60)


def test_start_waits_for_an_answer_and_stop_terminates(tmp_path):
    port = free_port()
    # the server listens only after a delay, so the first polls are refused
    code = (
        "import time, http.server as h; time.sleep(1); "
        f"h.ThreadingHTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()"
    )
    server = start_serve([sys.executable, "-c", code], f"http://127.0.0.1:{port}/", tmp_path / "serve.log")
    assert server.poll() is None
    stop_serve(server)
    assert server.returncode == -signal.SIGTERM


def test_a_server_that_ignores_sigterm_is_killed():
    code = "import signal as s, time; s.signal(s.SIGTERM, s.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert server.stdout.readline().strip() == "ready"  # the handler is in place before the signal
    stop_serve(server, timeout=1)
    assert server.returncode == -signal.SIGKILL
    stop_serve(server)  # a second stop is a no-op
