"""Reconciliation of an unanswered create, in process, against an emulator over real HTTP."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from workspaces import TASK_API

from batchgen.emulator import start_embedded
from batchgen.errors import BackendError
from batchgen.ledger import Ledger, utcnow
from batchgen.ledger.workspace import Workspace
from batchgen.run.recovery import open_intent, upload_name
from batchgen.run.tick import Runner, ensure_compiled, register_job, submit_shard, tick


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A runner on the openai backend pointed at an emulator the test controls, the job compiled."""
    emulator = start_embedded(tmp_path / "emulator", {"line_seconds": 0, "validation_seconds": 0,
                                                      "finalizing_seconds": 0})
    monkeypatch.setenv("OPENAI_BASE_URL", emulator.base_url)
    workspace = Workspace(tmp_path / "ws").ensure()
    ledger = Ledger.open(workspace.ledger_path)
    runner = Runner(ledger, workspace, backend="openai")
    sdk = openai.OpenAI(base_url=emulator.base_url, api_key="test-key")
    try:
        spec = register_job(runner, TASK_API)
        ensure_compiled(runner, spec, spec.stage())
        yield runner, spec, emulator, sdk
    finally:
        sdk.close()
        runner.close()
        ledger.close()
        emulator.stop()


def uploaded_intent(runner, spec):
    """The state `submit_shard` leaves right before its create: an intent with an uploaded file."""
    shard = runner.ledger.one("SELECT * FROM shards")
    intent = open_intent(runner.ledger, spec.name, shard)
    file = runner.client("openai").upload(Path(shard["path"]), upload_name(intent["idempotency_key"], shard["path"]))
    with runner.ledger.transaction():
        runner.ledger.execute("UPDATE intents SET file_id = ?, updated_utc = ? WHERE id = ?",
                              [file.id, utcnow(), intent["id"]])
    return shard, intent["idempotency_key"], file.id


def test_a_create_without_an_answer_is_made_once_on_the_next_tick(setup):
    runner, spec, emulator, sdk = setup
    shard, key, file_id = uploaded_intent(runner, spec)
    emulator.control.configure(drop_rate=1.0)
    with pytest.raises(BackendError, match="Creating a batch failed"):
        submit_shard(runner, runner.client("openai"), spec, shard)
    assert runner.ledger.scalar("SELECT status FROM intents") == "pending"
    emulator.control.configure(drop_rate=0.0)

    tick(runner)
    batches = list(sdk.batches.list())
    assert [(b.metadata or {}).get("batchgen_key") for b in batches] == [key]
    assert batches[0].input_file_id == file_id  # created from the intent's file, not uploaded again
    assert [f.id for f in sdk.files.list(purpose="batch")] == [file_id]
    assert runner.ledger.rows("SELECT status, batch_id FROM intents") == [{"status": "done", "batch_id": batches[0].id}]


def test_a_batch_created_but_never_recorded_is_adopted(setup):
    runner, spec, emulator, sdk = setup
    shard, key, file_id = uploaded_intent(runner, spec)
    created = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                                 metadata={"batchgen_job": spec.name, "batchgen_shard": shard["id"],
                                           "batchgen_key": key})
    emulator.control.settle()

    tick(runner)
    assert [b.id for b in sdk.batches.list()] == [created.id]
    assert runner.ledger.scalar("SELECT id FROM batches") == created.id
    assert runner.ledger.scalar("SELECT count(*) FROM events WHERE kind = 'adopted'") == 1
    while runner.ledger.job(spec.name)["status"] != "done":
        emulator.control.settle()
        tick(runner)
    assert runner.ledger.scalar("SELECT count(*) FROM results") == shard["lines"]
