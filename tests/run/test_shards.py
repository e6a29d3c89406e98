"""Shard bookkeeping: splitting a shard that is over the queued-token cap, whatever compile made it."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.ledger import Ledger
from batchgen.ledger.check import check_ledger
from batchgen.ledger.workspace import Workspace
from batchgen.recipe.compile import compile_stage
from batchgen.recipe.spec import LimitsSpec
from batchgen.run import shards
from batchgen.run.session import Session
from batchgen.run.tick import register_job

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def job(tmp_path):
    workspace = Workspace(tmp_path / ".batchgen").ensure()
    ledger = Ledger.open(workspace.ledger_path)
    session = Session(ledger, workspace)
    spec = register_job(session, ROOT / "jobs" / "task_api")
    yield ledger, workspace, spec
    ledger.close()


@pytest.mark.parametrize("indices", [None, list(range(20))], ids=["first-compile", "subset-compile"])
def test_a_shard_is_split_into_parts_of_its_own(job, indices):
    """A retry or top-up shard is a subset compile; its split must not land on its own folder and shard id."""
    ledger, workspace, spec = job
    stage = spec.stage()
    attempt = 1 if indices is None else 2
    result = compile_stage(spec, stage, shards_dir=workspace.shards_dir, attempt=attempt, indices=indices)
    with ledger.transaction():
        shards.record_compile(ledger, workspace, spec, stage, result)
    (shard,) = ledger.rows("SELECT * FROM shards")
    before = workspace.locate(shard["path"]).read_bytes()
    small = LimitsSpec.model_validate({"max_queued_tokens": shard["input_tokens"] // 3})
    shards.split_shard(ledger, workspace, spec, shard, small)
    parts = ledger.rows("SELECT * FROM shards WHERE id != ?", [shard["id"]])
    assert len(parts) >= 3 and all(p["status"] == "pending" for p in parts)
    assert ledger.scalar("SELECT status FROM shards WHERE id = ?", [shard["id"]]) == "split"
    assert sum(p["lines"] for p in parts) == shard["lines"]
    assert {p["path"] for p in parts}.isdisjoint({shard["path"]})
    assert workspace.locate(shard["path"]).read_bytes() == before  # the split shard's file is left as it was recorded
    moved = ledger.scalar("SELECT count(*) FROM requests WHERE shard_id IN (SELECT id FROM shards "
                          "WHERE status = 'pending')")
    assert moved == shard["lines"]
    assert check_ledger(ledger, workspace).clean
