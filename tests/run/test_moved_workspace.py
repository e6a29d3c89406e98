"""A workspace can be moved: the ledger records the paths inside it relative to it, and finds the job directory
at its absolute path or, after the whole project folder moved, under the project folder the workspace is in now.

Real processes on the embedded emulator, whose state moves with the workspace.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from workspaces import batchgen, dataset, fresh_workspace, multi_shard_job

from batchgen.ledger import Ledger

JOB = "evol_task_api"
QUEUE = ("--queue-limit", "7000")  # two of the first stage's four shards in the queue at a time: two wait


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The dataset of the multi-shard job run where it started, in a workspace that never moved."""
    parent = tmp_path_factory.mktemp("reference")
    workspace = fresh_workspace(parent)
    batchgen(workspace, "run", str(multi_shard_job(parent)), "--quiet", *QUEUE, check=True)
    return dataset(workspace, JOB)


def recorded_paths(workspace: Path) -> list[str]:
    with Ledger.open(workspace / "ledger.db") as ledger:
        shards = [row["path"] for row in ledger.rows("SELECT path FROM shards")]
        datasets = [row["dataset_path"] for row in ledger.rows("SELECT dataset_path FROM jobs")]
    return shards + [path for path in datasets if path is not None]


def test_a_moved_workspace_goes_on_to_the_dataset_an_unmoved_one_gives(tmp_path: Path, reference: bytes) -> None:
    project = tmp_path / "project"
    job = multi_shard_job(project)
    workspace = fresh_workspace(project)
    submitted = batchgen(workspace, "submit", str(job), *QUEUE, check=True)
    assert "Submitted 2 batch(es)" in submitted.stdout  # and two shards wait, compiled before the move
    moved = tmp_path / "elsewhere" / "ws"
    moved.parent.mkdir()
    workspace.rename(moved)
    where = ("--workspace", str(moved))

    checked = batchgen(moved, "ledger", "check", *where, check=True)
    assert "is clean" in checked.stdout
    shown = batchgen(moved, "show", JOB, *where, check=True)
    assert "Requests: compiled 7, submitted 8" in shown.stdout and "Missing" not in shown.stdout
    ran = batchgen(moved, "run", str(job), "--quiet", *QUEUE, *where)
    assert ran.returncode == 0, ran.stderr
    assert f"Dataset: 500 examples in {moved / 'datasets' / JOB}.sharegpt.jsonl" in ran.stdout
    exported = batchgen(moved, "export", JOB, *where, check=True)
    assert f"Wrote 500 examples to {moved / 'datasets'}" in exported.stdout

    assert dataset(moved, JOB) == reference
    assert "is clean" in batchgen(moved, "ledger", "check", *where, check=True).stdout
    paths = recorded_paths(moved)
    assert paths and all(not Path(p).is_absolute() and (moved / p).is_file() for p in paths)
    assert not workspace.exists()  # nothing was written where the workspace used to be


def test_a_moved_project_folder_finds_its_job_directory_inside_it(tmp_path: Path, reference: bytes) -> None:
    """The job directory moved with the workspace: the absolute path the ledger recorded is gone, its path from the
    project folder is not. `tick` names no job directory, so that path is what finds it (and is recorded)."""
    project = tmp_path / "project"
    workspace = fresh_workspace(project)
    batchgen(workspace, "submit", str(multi_shard_job(project)), *QUEUE, check=True)
    project.rename(tmp_path / "renamed")
    moved, job = tmp_path / "renamed" / ".batchgen", tmp_path / "renamed" / "jobs" / JOB

    ticked = batchgen(moved, "tick", *QUEUE)
    assert ticked.returncode == 0 and "error" not in ticked.stdout, ticked.stdout + ticked.stderr
    with Ledger.open(moved / "ledger.db") as ledger:
        row = ledger.job(JOB)
    assert (row["job_dir"], row["job_dir_relative"]) == (str(job.resolve()), f"jobs/{JOB}")
    assert "Missing" not in batchgen(moved, "show", JOB, check=True).stdout
    batchgen(moved, "run", str(job), "--quiet", *QUEUE, check=True)
    assert dataset(moved, JOB) == reference
    batchgen(moved, "ledger", "check", check=True)


def as_before_relative_paths(ledger_path: Path, root: Path) -> None:
    """Make the ledger what a batchgen before m005 wrote: absolute paths, and no columns of m005."""
    conn = sqlite3.connect(str(ledger_path))
    with conn:
        conn.execute("UPDATE shards SET path = ? || '/' || path", [str(root)])
        conn.execute("UPDATE jobs SET dataset_path = ? || '/' || dataset_path", [str(root)])
        conn.execute("ALTER TABLE jobs DROP COLUMN job_dir_relative")
        conn.execute("ALTER TABLE jobs DROP COLUMN job_files_json")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_paths_relative_to_the_workspace'")
    conn.close()


def test_a_ledger_with_absolute_paths_keeps_working_after_a_move(tmp_path: Path, reference: bytes) -> None:
    """An older ledger recorded absolute paths; the first command that writes migrates it, wherever it is now."""
    project = tmp_path / "project"
    workspace = fresh_workspace(project)
    batchgen(workspace, "run", str(multi_shard_job(project)), "--quiet", *QUEUE, check=True)
    as_before_relative_paths(workspace / "ledger.db", workspace)
    moved = tmp_path / "moved"
    shutil.move(workspace, moved)

    refused = batchgen(moved, "ledger", "check")  # read-only: it may not migrate
    assert refused.returncode == 1 and "needs migrating" in refused.stderr
    assert batchgen(moved, "tick", check=True).stdout == "tick: no active jobs\n"
    assert "is clean" in batchgen(moved, "ledger", "check", check=True).stdout
    shown = batchgen(moved, "show", JOB, check=True)
    assert f"Dataset: 500 examples in {moved / 'datasets' / JOB}.sharegpt.jsonl" in shown.stdout
    (moved / "datasets" / f"{JOB}.sharegpt.jsonl").unlink()
    batchgen(moved, "export", JOB, check=True)
    assert dataset(moved, JOB) == reference
    assert all(not Path(p).is_absolute() for p in recorded_paths(moved))
