"""Polling that fits the backend: a server on this machine is asked again after about a second, a remote API after
30 s and more, the embedded emulator at once."""

from __future__ import annotations

import time

import pytest
from loopback import free_port, serve
from workspaces import batchgen, fresh_workspace, one_batch_job

from batchgen.ledger import Ledger
from batchgen.run.client import BatchClient, is_loopback_url
from batchgen.run.polling import poll_interval


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:8000/v1", True), ("http://127.3.2.1/v1", True), ("http://localhost:9/v1", True),
    ("http://[::1]:8080/v1", True), ("http://api.localhost/v1", True),
    ("https://api.openai.com/v1", False), ("http://10.0.0.5:8000/v1", False), ("http://[::2]/v1", False),
    ("http://127.0.0.1.example.com/v1", False),
])
def test_loopback_urls(url, loopback):
    assert is_loopback_url(url) is loopback


def client_at(monkeypatch: pytest.MonkeyPatch, url: str) -> BatchClient:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    return BatchClient("openai")  # no request is made until it is used


def test_a_local_server_is_polled_from_about_a_second_a_remote_api_from_30_s(monkeypatch):
    local = client_at(monkeypatch, "http://127.0.0.1:8000/v1")
    remote = client_at(monkeypatch, "https://api.openai.com/v1")
    try:
        assert local.loopback and not remote.loopback
        local_waits = [poll_interval(local, "in_progress", polls) for polls in range(1, 30)]
        assert 0.8 <= local_waits[0] <= 1.6 and max(local_waits) <= 15 * 1.2
        assert local_waits[8] > local_waits[0]  # it backs off, gently
        remote_waits = [poll_interval(remote, "in_progress", polls) for polls in range(1, 30)]
        assert remote_waits[0] >= 30 * 1.5 * 0.8 and max(remote_waits) <= 300 * 1.2
        assert poll_interval(local, "in_progress", 1, first=20.0) >= 20 * 1.5 * 0.8  # --poll-interval wins
    finally:
        local.close()
        remote.close()


def test_a_job_on_batchgen_serve_is_polled_again_within_seconds(tmp_path):
    port = free_port()
    server = serve(tmp_path / "state", port, "--line-seconds", "30")  # the batch stays in progress
    try:
        workspace, job = fresh_workspace(tmp_path), one_batch_job(tmp_path)
        env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "sk-local"}
        batchgen(workspace, "submit", str(job), "--backend", "openai", check=True, **env)
        batchgen(workspace, "collect", "task_api", "--json", check=True, **env)
        polled = time.time()
        with Ledger.open(workspace / "ledger.db") as ledger:
            (row,) = ledger.rows("SELECT status, polls, next_poll_utc FROM batches")
        assert row["polls"] >= 1 and row["status"] in ("validating", "in_progress")
        assert float(row["next_poll_utc"]) - polled <= 1.25 ** row["polls"] * 1.2
    finally:
        server.terminate()
        server.communicate(timeout=15)
