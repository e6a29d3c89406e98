"""The crash matrix: SIGKILL `batchgen run` at each crash point, run it again, and nothing is lost or paid twice.

Each case runs in a fresh workspace on an embedded emulator that answers at once. After the second run: the
emulator holds at most one batch per idempotency key and no orphaned input file, every request has exactly one
final outcome, `batchgen ledger check` passes, and the dataset equals an uninterrupted run's byte for byte (except
`_provenance.batch_id`, which differs between emulators).
"""

from __future__ import annotations

import pytest
from workspaces import (
    EVOL,
    TASK_API,
    assert_no_duplicate_batches,
    assert_one_final_outcome_each,
    batchgen,
    dataset,
    events,
    fresh_workspace,
)

from batchgen.crashpoints import POINTS

CASES = [
    ("lock", TASK_API),          # half of the holder's pid written into the lock file
    ("intent", TASK_API),        # intent committed, nothing uploaded
    ("upload", TASK_API),        # file uploaded, its id never recorded: an orphan to delete
    ("create", TASK_API),        # batch created, never recorded: to adopt, not to create again
    ("download", TASK_API),      # a .part result file half written
    ("ingest", TASK_API),        # result rows written inside the uncommitted collect transaction
    ("export:250", TASK_API),    # 250 lines in the dataset's temporary file
    ("stage", TASK_API),         # inside the transaction that marks the job done
    ("stage", EVOL),             # inside the transaction that opens the second stage
    ("create:2", EVOL),          # the second stage's batch created, never recorded
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The datasets of runs that nothing interrupted, by job directory."""
    found = {}
    for job in (TASK_API, EVOL):
        workspace = fresh_workspace(tmp_path_factory.mktemp(job.name))
        done = batchgen(workspace, "run", str(job), "--quiet")
        assert done.returncode == 0, done.stderr
        found[job] = dataset(workspace, job.name)
    return found


def test_every_crash_point_is_in_the_matrix():
    assert {point.partition(":")[0] for point, _ in CASES} == set(POINTS)


@pytest.mark.parametrize(("point", "job"), CASES, ids=[f"{p}-{j.name}" for p, j in CASES])
def test_killed_at_a_crash_point_then_run_again(point, job, uninterrupted, tmp_path):
    workspace = fresh_workspace(tmp_path)
    killed = batchgen(workspace, "run", str(job), "--quiet", BATCHGEN_CRASH_AT=point)
    assert killed.returncode == -9, f"the run was not killed at {point}: {killed.stderr}"

    again = batchgen(workspace, "run", str(job), "--quiet")
    assert again.returncode == 0, again.stderr
    assert f"Job {job.name}: done" in again.stdout

    assert_no_duplicate_batches(workspace)
    assert_one_final_outcome_each(workspace)
    check = batchgen(workspace, "ledger", "check")
    assert check.returncode == 0, check.stdout
    assert dataset(workspace, job.name) == uninterrupted[job]
    if point.startswith("create"):
        assert len(events(workspace, "adopted")) == 1
    if point == "upload":
        assert len(events(workspace, "orphans_deleted")) == 1
