"""Reconciliation of an unanswered create, in process, against an emulator over real HTTP."""

from __future__ import annotations

import openai
import pytest
from workspaces import TASK_API

from batchgen.emulator import start_embedded
from batchgen.errors import BackendError
from batchgen.ledger import Ledger
from batchgen.ledger.workspace import Workspace
from batchgen.run.session import Session
from batchgen.run.submission import open_intent, submit_shard, upload_name
from batchgen.run.tick import ensure_compiled, register_job, tick


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A session on the openai backend pointed at an emulator the test controls, the job compiled."""
    emulator = start_embedded(tmp_path / "emulator", {"line_seconds": 0, "validation_seconds": 0,
                                                      "finalizing_seconds": 0})
    monkeypatch.setenv("OPENAI_BASE_URL", emulator.base_url)
    workspace = Workspace(tmp_path / "ws").ensure()
    ledger = Ledger.open(workspace.ledger_path)
    session = Session(ledger, workspace, backend="openai")
    sdk = openai.OpenAI(base_url=emulator.base_url, api_key="test-key")
    try:
        spec = register_job(session, TASK_API)
        ensure_compiled(session, spec, spec.stage())
        yield session, spec, emulator, sdk
    finally:
        sdk.close()
        session.close()
        ledger.close()
        emulator.stop()


def uploaded_intent(session, spec):
    """The state `submit_shard` leaves right before its create: an intent with an uploaded file."""
    shard = session.ledger.one("SELECT * FROM shards")
    intent = open_intent(session.ledger, spec.name, shard)
    path = session.workspace.locate(shard["path"])
    file = session.client("openai").upload(path, upload_name(intent["idempotency_key"], shard["path"]))
    with session.ledger.transaction():
        session.ledger.set_intent_file(intent["id"], file.id)
    return shard, intent["idempotency_key"], file.id


def test_a_create_without_an_answer_is_made_once_on_the_next_tick(setup):
    session, spec, emulator, sdk = setup
    shard, key, file_id = uploaded_intent(session, spec)
    # The provider's list is read first (no batch carries the key yet); then the create gets no answer.
    assert session.provider_batches(session.client("openai"), spec.name).find(key) is None
    emulator.control.configure(drop_rate=1.0)
    with pytest.raises(BackendError, match="Creating a batch failed"):
        submit_shard(session, session.client("openai"), spec, shard)
    assert session.ledger.scalar("SELECT status FROM intents") == "pending"
    emulator.control.configure(drop_rate=0.0)

    tick(session)
    batches = list(sdk.batches.list())
    assert [(b.metadata or {}).get("batchgen_key") for b in batches] == [key]
    assert batches[0].input_file_id == file_id  # created from the intent's file, not uploaded again
    assert [f.id for f in sdk.files.list(purpose="batch")] == [file_id]
    intents = session.ledger.rows("SELECT status, batch_id FROM intents")
    assert intents == [{"status": "done", "batch_id": batches[0].id}]


def test_a_batch_created_but_never_recorded_is_adopted(setup):
    session, spec, emulator, sdk = setup
    shard, key, file_id = uploaded_intent(session, spec)
    created = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                                 metadata={"batchgen_job": spec.name, "batchgen_shard": shard["id"],
                                           "batchgen_key": key})
    emulator.control.settle()

    tick(session)
    assert [b.id for b in sdk.batches.list()] == [created.id]
    assert session.ledger.scalar("SELECT id FROM batches") == created.id
    assert session.ledger.scalar("SELECT count(*) FROM events WHERE kind = 'adopted'") == 1
    while session.ledger.job(spec.name)["status"] != "done":
        emulator.control.settle()
        tick(session)
    # the adopted batch answered its shard, and the top-up (of the cells near-duplicates and the date check left
    # short) is the one other batch: nothing was created twice
    ledger = session.ledger
    assert ledger.scalar("SELECT count(*) FROM results WHERE batch_id = ?", [created.id]) == shard["lines"] == 55
    batches = list(sdk.batches.list())
    assert created.id in [b.id for b in batches]
    assert ledger.scalar("SELECT count(*) FROM events WHERE kind = 'adopted'") == 1
    assert len(batches) == len({(b.metadata or {}).get("batchgen_key") for b in batches}) == 2
    assert ledger.scalar("SELECT count(*) FROM results") == ledger.scalar("SELECT sum(lines) FROM shards") == 67
