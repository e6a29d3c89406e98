"""Loopback servers for tests: a small HTTP server on 127.0.0.1 for an upstream or a provider batchgen did not
write, and `batchgen serve` as a subprocess."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free loopback port in a thread; yields its base URL with /v1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(state: Path, port: int, *extra: str, log_level: str = "warning") -> subprocess.Popen[str]:
    """`batchgen serve` with its control routes on 127.0.0.1:`port`, once it accepts connections."""
    command = [sys.executable, "-m", "batchgen", "serve", "--port", str(port), "--state", str(state), "--control",
               "--log-level", log_level, *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.communicate()[1]) from None
            time.sleep(0.05)
    process.kill()
    raise AssertionError("batchgen serve did not start")
