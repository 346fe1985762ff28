"""The service on a loopback port in a background thread: for simulations, benchmarks and tests.

A real uvicorn on a real socket, so that whatever talks to it goes through HTTP exactly as a
device or a browser would; not a substitute for ``isacir serve`` in production.
"""

from __future__ import annotations

import socket
import threading
import time
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
