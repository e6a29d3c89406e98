"""Dead ends stop: a backend that fails every line the same way, or rounds that yield nothing, end the job
`blocked` with its cause, instead of retrying and topping up for ever. Real processes: `batchgen serve --upstream`
in front of a tiny HTTP server that answers every call with one 500, and `batchgen run --backend openai`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from loopback import loopback_server
from workspaces import ROOT, TASK_API, batchgen, fresh_workspace, one_batch_job

REFUSAL = {"error": {"message": "response_format json_schema is not supported", "type": "server_error",
                     "param": None, "code": None}}


class Refusing(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        type(self).calls += 1
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps(REFUSAL).encode()
        self.send_response(500)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_upstream() -> Iterator[str]:
    Refusing.calls = 0
    with loopback_server(Refusing) as base_url:
        yield base_url


def serve(state: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "batchgen", "serve", "--port", str(port), "--state", str(state),
                                "--validation-seconds", "0", "--finalizing-seconds", "0", "--log-level", "warning",
                                *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
    process.kill()
    raise AssertionError("batchgen serve did not start")


def test_an_upstream_that_fails_every_line_the_same_way_blocks_the_job(tmp_path: Path, refusing_upstream: str):
    # lines go as they are (no structured-output probe), so every request the server counts is a line
    server, base_url = serve(tmp_path / "state", "--upstream", refusing_upstream, "--upstream-structured",
                             "json_schema")
    try:
        workspace = tmp_path / ".batchgen"
        done = batchgen(workspace, "run", str(TASK_API), "--backend", "openai", "--poll-interval", "0.05",
                        OPENAI_BASE_URL=base_url)
    finally:
        server.terminate()
        server.communicate(timeout=15)
    assert done.returncode == 3, done.stderr
    assert "Blocked: stage main: all 55 request(s) of round 1 failed the same way (HTTP 500: response_format " \
           "json_schema is not supported)" in done.stdout
    assert Refusing.calls == 55  # one round, no retry and no top-up
    shown = json.loads(batchgen(workspace, "show", "task_api", "--json", check=True).stdout)
    assert shown["status"] == "blocked" and "HTTP 500" in shown["blocked"]
    assert "Blocked: job task_api" in batchgen(workspace, "status", check=True).stdout
    again = batchgen(workspace, "run", str(TASK_API), "--backend", "openai", OPENAI_BASE_URL=base_url)
    assert again.returncode == 3 and Refusing.calls == 55  # a blocked job spends nothing more


def test_rounds_that_yield_no_valid_example_block_after_one_retry_round(tmp_path: Path):
    workspace = fresh_workspace(tmp_path, json.dumps({"malformed_rate": 1.0, "line_seconds": 0,
                                                      "validation_seconds": 0, "finalizing_seconds": 0}))
    done = batchgen(workspace, "run", str(TASK_API), "--quiet")
    assert done.returncode == 3, done.stderr
    assert "Blocked: stage main: round 2 (55 request(s)) yielded no valid example" in done.stdout
    shown = json.loads(batchgen(workspace, "show", "task_api", "--json", check=True).stdout)
    assert shown["requests"] == {"invalid": 55, "retried": 55}  # the first round and one retry round, no more


def test_transient_failures_are_still_retried(tmp_path: Path):
    """A fifth of the lines fail with a 500 while the rest come through: retried, and the job reaches its target."""
    workspace = fresh_workspace(tmp_path, json.dumps({"error_rate": 0.2, "line_seconds": 0, "validation_seconds": 0,
                                                      "finalizing_seconds": 0}))
    done = batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    assert "Blocked" not in done.stdout and "Dataset: 500 examples" in done.stdout



def test_an_unblocked_job_gets_one_more_round_and_finishes_once_the_cause_is_fixed(tmp_path: Path):
    config = {"malformed_rate": 1.0, "line_seconds": 0, "validation_seconds": 0, "finalizing_seconds": 0}
    workspace = fresh_workspace(tmp_path, json.dumps(config))
    job = one_batch_job(tmp_path)  # no cell left short by near-dedupe or the date check: only the cause counts
    assert batchgen(workspace, "run", str(job), "--quiet").returncode == 3
    refused = batchgen(workspace, "jobs", "unblock", "nope")
    assert refused.returncode == 1 and refused.stderr.startswith("Error: No job 'nope'")

    still_broken = batchgen(workspace, "jobs", "unblock", "task_api", check=True)
    assert "Unblocked job task_api (it was blocked: stage main: round 2" in still_broken.stdout
    again = batchgen(workspace, "run", str(job), "--quiet")
    assert again.returncode == 3 and "Blocked: stage main: round 3 (55 request(s)) yielded no valid" in again.stdout

    (workspace / "emulator" / "config.json").write_text(json.dumps({**config, "malformed_rate": 0}), encoding="utf-8")
    batchgen(workspace, "jobs", "unblock", "task_api", check=True)
    fixed = batchgen(workspace, "run", str(job), "--quiet", check=True)
    assert "Blocked" not in fixed.stdout and "Dataset: 500 examples" in fixed.stdout
    not_blocked = batchgen(workspace, "jobs", "unblock", "task_api")
    assert not_blocked.returncode == 1 and "Error: Job 'task_api' is not blocked (it is done)" in not_blocked.stderr
