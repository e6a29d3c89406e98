"""Read-only commands stay read-only, and a mistyped --workspace is an error, never a new empty ledger."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from workspaces import TASK_API, batchgen, fresh_workspace

READERS = [("show", "task_api"), ("report", "task_api"), ("export", "task_api", "-o", "{out}"), ("jobs", "list"),
           ("ledger", "status"), ("ledger", "check")]
NEED_A_LEDGER = [("collect",), ("tick",), ("status",), ("cancel", "task_api"), ("ledger", "reconcile"),
                 *READERS]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = fresh_workspace(tmp_path_factory.mktemp("done"))
    batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    return workspace


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", NEED_A_LEDGER, ids=" ".join)
def test_a_mistyped_workspace_is_an_error_and_makes_nothing(command: tuple[str, ...], tmp_path: Path) -> None:
    wrong = tmp_path / "typo" / ".batchgen"
    done = batchgen(wrong, *(a.format(out=tmp_path / "out.jsonl") for a in command))
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: No ledger at {wrong / 'ledger.db'}; check --workspace or run a job first " \
                                  "('batchgen run JOB')"
    assert not (tmp_path / "typo").exists()


def test_readers_leave_the_ledger_as_it_was(finished: Path, tmp_path: Path) -> None:
    before = digest(finished / "ledger.db")
    for command in READERS:
        batchgen(finished, *(a.format(out=tmp_path / "out.jsonl") for a in command), check=True)
    assert digest(finished / "ledger.db") == before
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 500


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_readers_work_on_a_read_only_workspace(finished: Path, tmp_path: Path) -> None:
    paths = [finished, *finished.rglob("*")]
    modes = {path: path.stat().st_mode for path in paths}
    for path in paths:
        path.chmod(modes[path] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        for command in READERS:
            batchgen(finished, *(a.format(out=tmp_path / "out.jsonl") for a in command), check=True)
    finally:
        for path in reversed(paths):
            path.chmod(modes[path])
