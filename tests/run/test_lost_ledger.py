"""A ledger restored from a backup, deleted, or left as a 0-byte file costs nothing new.

Submission keys are deterministic, so the same shards compile to the same keys, and `submit_shard` finds the
provider's batch for a key before it uploads or creates anything: a run on such a ledger adopts what the provider
already holds. Real processes on the embedded emulator (whose state lives beside the ledger and survives it).
"""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from workspaces import assert_no_duplicate_batches, batchgen, dataset, fresh_workspace, multi_shard_job, remote_state


def spent(workspace: Path) -> Decimal:
    shown = batchgen(workspace, "show", "evol_task_api", "--json", check=True)
    return Decimal(json.loads(shown.stdout)["spent_usd"])


@pytest.mark.parametrize("loss", ["restored", "deleted", "empty"])
def test_a_lost_ledger_adopts_what_the_provider_holds(loss: str, tmp_path: Path) -> None:
    workspace, job = fresh_workspace(tmp_path), multi_shard_job(tmp_path)
    batchgen(workspace, "submit", str(job), check=True)
    backup = tmp_path / "backup.db"
    batchgen(workspace, "ledger", "backup", str(backup), check=True)
    batchgen(workspace, "run", str(job), "--quiet", check=True)
    before_batches = {b.id for b in remote_state(workspace)[0]}
    before_spent, before_dataset = spent(workspace), dataset(workspace, "evol_task_api")
    assert len(before_batches) > 4  # several shards a stage; the backup knows only the first stage's

    ledger = workspace / "ledger.db"
    for leftover in (ledger, ledger.with_name("ledger.db-wal"), ledger.with_name("ledger.db-shm")):
        leftover.unlink(missing_ok=True)
    if loss == "restored":
        shutil.copy(backup, ledger)
        audit = batchgen(workspace, "ledger", "reconcile", "--json")
        report = json.loads(audit.stdout)
        unknown = {u["batch"] for u in report["unrecorded"]}
        assert audit.returncode != 0 and unknown and unknown < before_batches
        assert "'batchgen run evol_task_api' adopts them" in report["summary"]
    elif loss == "empty":
        ledger.write_bytes(b"")

    again = batchgen(workspace, "run", str(job), "--quiet", check=True)
    assert "Job evol_task_api: done" in again.stdout
    assert {b.id for b in assert_no_duplicate_batches(workspace)} == before_batches  # nothing new at the provider
    assert spent(workspace) == before_spent
    assert dataset(workspace, "evol_task_api") == before_dataset
    batchgen(workspace, "ledger", "check", check=True)
