"""The service on a loopback port, for simulations, benchmarks and tests.

Two ways, both a real uvicorn on a real socket, so that whatever talks to it goes through HTTP
exactly as a device or a browser would; neither is a substitute for ``isacir serve`` in
production:

- :class:`LocalServer`: an app in a background thread of this process;
- :func:`start_serve` / :func:`stop_serve`: ``isacir serve`` as a child process, for the load
  test, the soak and the fault tests, which kill it or measure it from outside. Its stderr goes
  to a file (a pipe that nobody reads fills up, and the server then blocks on its next log line
  with requests open), and a server that ignores SIGTERM (uvicorn waits for open requests) is
  killed rather than left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """``with LocalServer(app) as server: server.url``; stops (and joins) on exit."""

    def __init__(self, app: Any, port: int | None = None, start_timeout: float = 30.0):
        import uvicorn

        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"isacir-local-{self.port}")
        self.start_timeout = start_timeout

    def start(self) -> LocalServer:
        self.thread.start()
        deadline = time.time() + self.start_timeout
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerDidNotStart(RuntimeError):
    """The server exited, or did not answer in time; the message ends with its log's tail."""


def start_serve(
    cmd: Sequence[str],
    url: str,
    log: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    start_timeout: float = 180.0,
) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own, its stderr to the file ``log``, and wait until a GET
    of ``url`` answers 2xx (a ``/readyz`` that says 503 is waited for, not taken as an answer)."""
    log = Path(log)
    with open(log, "w") as sink:
        server = subprocess.Popen(list(cmd), stderr=sink, start_new_session=True, env=env)
    deadline = time.monotonic() + start_timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return server
        except OSError:  # refused, reset, timed out, or an HTTP error status
            exited = server.poll() is not None
            if exited or time.monotonic() > deadline:
                why = f"exited with {server.returncode}" if exited else f"no answer in {start_timeout:.0f} s"
                stop_serve(server)
                raise ServerDidNotStart(f"server did not start ({why}): {url}\n{log.read_text()[-5000:]}") from None
            time.sleep(0.2)


def stop_serve(server: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM to the server's session, then SIGKILL if it has not exited within ``timeout``."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
