"""Several processes on one workspace share its embedded emulator: the lock holder serves, the others attach.

Every test runs real processes (`python -m batchgen ...`, or a small holder script) against a real emulator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from workspaces import batchgen

from batchgen.emulator import AttachedEmulator, EmbeddedEmulator, StateInUse, connect_embedded
from batchgen.emulator.shared import SERVER_FILE, Published, publish, read_published
from batchgen.errors import BackendError
from batchgen.ledger import Ledger
from batchgen.run.client import BatchClient

ROOT = Path(__file__).resolve().parents[2]
SLOW = {"line_seconds": 0.1}  # 55 lines of jobs/task_api take about 6 s: long enough to act while it runs
HOLDER = """
import sys
from batchgen.emulator import start_embedded

emulator = start_embedded(sys.argv[1])
sys.stdin.readline()  # stop cleanly when the test closes our stdin
emulator.stop()
"""
T = TypeVar("T")


def wait_for(probe: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def make_workspace(tmp_path: Path, config: dict[str, Any]) -> Path:
    workspace = tmp_path / ".batchgen"
    (workspace / "emulator").mkdir(parents=True)
    (workspace / "emulator" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return workspace


def environment(workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGEN_CRASH")}
    return {**env, "BATCHGEN_WORKSPACE": str(workspace)}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Background processes of a test; any still running at the end are killed and reaped."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def spawn_run(workspace: Path, processes: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "batchgen", "run", "jobs/task_api", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env=environment(workspace))
    processes.append(process)
    return process


def spawn_holder(state: Path, processes: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """A process that runs the emulator on `state` until its stdin is closed; returns once it serves."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(state)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    processes.append(process)
    wait_for(lambda: serving_pid(state) == process.pid or process.poll() is not None, "the holder to serve")
    assert process.poll() is None, process.communicate()
    return process


def stop_holder(process: subprocess.Popen[str]) -> None:
    out, err = process.communicate(input="", timeout=30)
    assert process.returncode == 0, err


def serving_pid(state: Path) -> int | None:
    published = read_published(state)
    return None if published is None else published.pid


def remote_batches(state: Path) -> list[Any]:
    """The emulator's batches, through the openai SDK on whichever server now serves the state."""
    with connect_embedded(state) as emulator:
        with openai.OpenAI(base_url=emulator.base_url, api_key="local") as sdk:
            return list(sdk.batches.list(limit=100))


def input_file(tmp_path: Path, lines: int) -> Path:
    path = tmp_path / "input.jsonl"
    rows = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say {i}"}]}}
            for i in range(lines)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def answered_ids(client: BatchClient, batch: Any, tmp_path: Path) -> Counter[str]:
    """custom_id → how many times it appears in the batch's output and error files."""
    seen: Counter[str] = Counter()
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            path = client.download(file_id, tmp_path / f"{file_id}.jsonl")
            seen.update(json.loads(line)["custom_id"] for line in path.read_text().splitlines())
    return seen


# -- (a) a second process while `batchgen run` holds the emulator ----------------------------------------------


ATTACHED_PROBE = """
import json, sys, time
from pathlib import Path
from batchgen.run.client import BatchClient

with BatchClient("embedded", emulator_dir=Path(sys.argv[1])) as client:
    seconds, statuses = [], []
    for _ in range(5):
        began = time.monotonic()
        statuses.append({b.id: b.status for b in client.list_batches()})
        seconds.append(time.monotonic() - began)
    print(json.dumps({"base_url": client.base_url, "statuses": statuses, "seconds": seconds}))
"""


def test_status_and_an_attached_client_get_answers_while_run_works(tmp_path, processes):
    workspace = make_workspace(tmp_path, SLOW)
    state = workspace / "emulator"
    run = spawn_run(workspace, processes)
    wait_for(lambda: serving_pid(state) == run.pid, "batchgen run to serve the emulator")

    def batch_rows() -> list[dict[str, Any]]:
        status = batchgen(workspace, "status", "task_api", "--json")
        assert status.returncode == 0, status.stderr
        return list(json.loads(status.stdout))

    rows = wait_for(batch_rows, "batchgen status to show the batch")
    probe = subprocess.run([sys.executable, "-c", ATTACHED_PROBE, str(state)], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    still_running = run.poll() is None

    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["base_url"] == read_published(state).base_url  # attached to run's server, not a second one
    ids = {row["batch"] for row in rows}
    assert all(ids <= set(statuses) for statuses in seen["statuses"])  # both see the same batch
    assert max(seen["seconds"]) < 2.0, seen["seconds"]  # the busy holder keeps answering
    assert still_running, "batchgen run ended before the other processes asked; make SLOW slower"

    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert "Job task_api: done" in out
    assert not (state / SERVER_FILE).exists()  # withdrawn on a clean stop


def test_cli_commands_work_through_another_process_s_emulator(tmp_path, processes):
    workspace = make_workspace(tmp_path, {"time_scale": 0})  # frozen clock: batches wait in validating
    state = workspace / "emulator"
    holder = spawn_holder(state, processes)

    submit = batchgen(workspace, "submit", "jobs/task_api", timeout=60)
    assert submit.returncode == 0, submit.stderr
    status = batchgen(workspace, "status", "task_api", "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    ids = {row["batch"] for row in json.loads(status.stdout)}

    assert ids and ids == {b.id for b in remote_batches(state)}  # created on the holder's emulator
    assert serving_pid(state) == holder.pid
    stop_holder(holder)


# -- (b) the holder is killed: its server.json is stale -----------------------------------------------------------


def test_after_the_holder_is_killed_the_next_process_serves_and_the_job_finishes(tmp_path, processes):
    workspace = make_workspace(tmp_path, SLOW)
    state = workspace / "emulator"
    run = spawn_run(workspace, processes)
    wait_for(lambda: serving_pid(state) == run.pid, "batchgen run to serve the emulator")
    wait_for(lambda: any(b.request_counts and b.request_counts.completed for b in remote_batches(state)),
             "lines of the first batch to run")
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    assert serving_pid(state) == run.pid  # a stale file: nobody cleaned it up

    with connect_embedded(state, timeout=5) as emulator:
        assert isinstance(emulator, EmbeddedEmulator)  # the lock was free: started here, not attached
        assert serving_pid(state) == os.getpid()
    assert not (state / SERVER_FILE).exists()

    again = batchgen(workspace, "run", "jobs/task_api", "--quiet")
    assert again.returncode == 0, again.stderr
    assert "Job task_api: done" in again.stdout
    with Ledger.open(workspace / "ledger.db") as ledger:
        unanswered = ledger.rows("SELECT r.custom_id FROM requests r LEFT JOIN results s USING (custom_id) "
                                 "WHERE s.custom_id IS NULL AND r.status != 'retried'")
        answered = ledger.scalar("SELECT count(*) FROM results")
    assert unanswered == [] and answered >= 55
    with BatchClient("embedded", emulator_dir=state) as client:
        seen: Counter[str] = Counter()
        for batch in client.list_batches():
            seen += answered_ids(client, batch, tmp_path)
    assert sum(seen.values()) == answered
    assert [cid for cid, n in seen.items() if n != 1] == []  # no line answered twice across both emulators


# -- (c) the holder exits cleanly while an attached client still works --------------------------------------------


def test_an_attached_client_carries_on_when_the_holder_exits(tmp_path, processes):
    state = make_workspace(tmp_path, {"line_seconds": 0.05}) / "emulator"
    holder = spawn_holder(state, processes)
    with BatchClient("embedded", emulator_dir=state) as client:
        assert client.base_url == read_published(state).base_url  # attached
        uploaded = client.upload(input_file(tmp_path, 20))
        batch = client.create_batch(uploaded.id, "/v1/chat/completions", {"test": "handover"})
        stop_holder(holder)

        assert client.retrieve(batch.id).id == batch.id  # re-resolved: the lock was free, so it serves now
        assert serving_pid(state) == os.getpid()
        done = wait_for(lambda: (b := client.retrieve(batch.id)).status == "completed" and b, "the batch to end")
        assert answered_ids(client, done, tmp_path) == Counter({f"req-{i}": 1 for i in range(20)})
    assert not (state / SERVER_FILE).exists()


def test_an_attached_client_follows_a_new_holder(tmp_path, processes):
    state = make_workspace(tmp_path, {}) / "emulator"
    first = spawn_holder(state, processes)
    with BatchClient("embedded", emulator_dir=state) as client:
        uploaded = client.upload(input_file(tmp_path, 3))
        stop_holder(first)
        second = spawn_holder(state, processes)

        assert [f.id for f in client.list_files()] == [uploaded.id]
        assert client.base_url == read_published(state).base_url  # attached to the second holder
        stop_holder(second)


def test_a_create_that_lost_its_holder_is_not_sent_again(tmp_path, processes):
    state = make_workspace(tmp_path, {}) / "emulator"
    holder = spawn_holder(state, processes)
    with BatchClient("embedded", emulator_dir=state) as client:
        uploaded = client.upload(input_file(tmp_path, 3))
        stop_holder(holder)

        with pytest.raises(BackendError, match="Creating a batch failed: cannot reach"):
            client.create_batch(uploaded.id, "/v1/chat/completions", {})
        assert list(client.list_batches()) == []  # switched to its own emulator, and nothing was created twice
        assert client.create_batch(uploaded.id, "/v1/chat/completions", {}).status == "validating"


def test_a_published_server_that_is_not_the_holder_is_never_attached_to(tmp_path, processes):
    other = make_workspace(tmp_path / "other", {}) / "emulator"
    state = make_workspace(tmp_path, {}) / "emulator"
    spawn_holder(other, processes)
    spawn_holder(state, processes)
    real = read_published(state)
    forged = Published(read_published(other).base_url, real.pid, "0" * 16)  # a live server, but not this state's
    publish(state, forged)

    with pytest.raises(StateInUse, match=f"held by pid {real.pid}, which does not answer"):
        connect_embedded(state, timeout=0.3)
    publish(state, real)
    with connect_embedded(state, timeout=0.3) as emulator:
        assert emulator.base_url == real.base_url


# -- the handle ------------------------------------------------------------------------------------------------


def test_an_attached_handle_has_the_embedded_interface_and_leaves_the_server_running(tmp_path, processes):
    state = make_workspace(tmp_path, {}) / "emulator"
    holder = spawn_holder(state, processes)
    with connect_embedded(state) as emulator:
        assert isinstance(emulator, AttachedEmulator) and emulator.pid == holder.pid
        assert emulator.control.state()["executor"]  # the holder's control API (on in the embedded preset)
    assert emulator.alive()  # stopping the handle did not stop the holder's server
    stop_holder(holder)
    assert not emulator.alive()
