"""The workspace lock: exclusive, released by the kernel when its holder dies, handed over between ticks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from workspaces import (
    ROOT,
    TASK_API,
    assert_no_duplicate_batches,
    assert_one_final_outcome_each,
    batchgen,
    dataset,
    fresh_workspace,
    remote_state,
    spawn,
)

from batchgen.errors import WorkspaceBusy
from batchgen.ledger import Ledger
from batchgen.run.lock import WorkspaceLock

HOLD = """
import sys, time
from pathlib import Path
from batchgen.run.lock import WorkspaceLock
lock = WorkspaceLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def hold_in_another_process(root):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_one_holder_at_a_time_and_the_file_names_it(tmp_path):
    first, second = WorkspaceLock(tmp_path), WorkspaceLock(tmp_path)
    with first:
        assert first.held and first.holder().pid == os.getpid()
        assert not second.try_acquire()
        with pytest.raises(WorkspaceBusy, match=f"another batchgen is working on {tmp_path} \\(pid {os.getpid()}\\)"):
            second.acquire(timeout=0.1)
    assert second.try_acquire()
    second.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = hold_in_another_process(tmp_path)
    lock = WorkspaceLock(tmp_path)
    try:
        assert not lock.try_acquire()
        assert lock.holder().pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert (tmp_path / "lock").exists()
    lock.acquire(timeout=1)
    assert lock.holder().pid == os.getpid()
    lock.release()


def with_ledger(workspace):
    """A workspace whose ledger exists (commands other than run and submit refuse a workspace without one)."""
    Ledger.open(workspace / "ledger.db").close()
    return workspace


def test_a_half_written_lock_file_is_taken_over(tmp_path):
    with_ledger(tmp_path / "ws")
    killed = batchgen(tmp_path / "ws", "jobs", "list", BATCHGEN_CRASH_AT="lock")  # a read: takes no lock
    assert killed.returncode == 0
    killed = batchgen(tmp_path / "ws", "collect", BATCHGEN_CRASH_AT="lock")
    assert killed.returncode == -9
    assert WorkspaceLock(tmp_path / "ws").holder().pid is None  # half a JSON object
    again = batchgen(tmp_path / "ws", "collect")
    assert again.returncode == 0, again.stderr
    assert WorkspaceLock(tmp_path / "ws").holder().pid is not None


def test_tick_skips_at_once_while_another_process_works(tmp_path):
    workspace = with_ledger(tmp_path / "ws")
    holder = hold_in_another_process(workspace)
    try:
        started = time.monotonic()
        skipped = batchgen(workspace, "tick", "--wait", "0.3")
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.communicate()
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout == f"another batchgen is working on {workspace} (pid {holder.pid}); skipped\n"


def test_status_reads_without_polling_while_another_process_works(tmp_path):
    workspace = with_ledger(tmp_path / "ws")
    holder = hold_in_another_process(workspace)
    try:
        status = batchgen(workspace, "status")
    finally:
        holder.kill()
        holder.communicate()
    assert status.returncode == 0, status.stderr
    assert status.stdout == "No batches yet\n"


def test_a_pausing_holder_hands_the_lock_to_a_waiting_tick(tmp_path):
    workspace = with_ledger(tmp_path / "ws")
    lock = WorkspaceLock(workspace)
    lock.acquire()
    stepped_aside = []
    tick = spawn(workspace, "tick", "--wait", "60")
    try:
        pause = lock.pausing(lambda: stepped_aside.append(True))
        deadline = time.monotonic() + 60
        while not stepped_aside and time.monotonic() < deadline:
            pause(0.5)
        out, err = tick.communicate(timeout=60)
    finally:
        lock.release()
        if tick.poll() is None:
            tick.kill()
            tick.communicate()
    assert stepped_aside == [True]
    assert tick.returncode == 0, err
    assert out == "tick: no active jobs\n"
    assert lock.holder().pid == os.getpid() or not lock.held


def test_two_concurrent_runs_submit_each_shard_once(tmp_path):
    slow = '{"line_seconds": 0.02, "validation_seconds": 0.3, "finalizing_seconds": 0.3}'
    workspace = fresh_workspace(tmp_path / "both", slow)
    runs = [spawn(workspace, "run", str(TASK_API), "--quiet") for _ in range(2)]
    outputs = [run.communicate(timeout=180) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
        assert "Job task_api: done" in out
    assert any("waiting for its turn" in err for _, err in outputs)

    alone = fresh_workspace(tmp_path / "alone", slow)
    assert batchgen(alone, "run", str(TASK_API), "--quiet").returncode == 0
    batches = assert_no_duplicate_batches(workspace)  # each shard once: the plan's and the top-up's
    keys = sorted(batch.metadata["batchgen_key"] for batch in batches)
    assert len(keys) == 2 and keys == sorted(batch.metadata["batchgen_key"] for batch in remote_state(alone)[0])
    assert_one_final_outcome_each(workspace)
    assert batchgen(workspace, "ledger", "check").returncode == 0
    assert dataset(workspace) == dataset(alone)
