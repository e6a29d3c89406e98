"""Submitting a shard, crash-safely: intent row → upload → create → record, each step in the ledger before the next
remote call (`batchgen.run.recovery` settles whatever a crash leaves between two steps).

The idempotency key of each submission is in the uploaded file's name (`batchgen-<key>-<shard>.jsonl`) and in the
batch's `metadata.batchgen_key`, so a batch or file that a crash left unrecorded can be found again by its key.
Keys are deterministic (job, shard, content, submission number), so a ledger restored from a backup, lost or empty
compiles the same shards with the same keys: before uploading, `submit_shard` looks for the key among the provider's
batches (`Session.provider_batches`) and adopts what it finds instead of paying for it again.
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchgen.crashpoints import crash_point
from batchgen.errors import BudgetExceeded
from batchgen.ledger import Ledger
from batchgen.recipe.spec import JobSpec
from batchgen.run import shards
from batchgen.run.admission import admit, queue_cap, shard_limits
from batchgen.run.client import BatchClient
from batchgen.run.polling import record_batch_state
from batchgen.run.session import Session

FILENAME_KEY = re.compile(r"^batchgen-([0-9a-f]{32})-")


def intent_key(job: str, shard: dict[str, Any], number: int) -> str:
    """The idempotency key of a shard's `number`-th submission (0: the first, whose key predates numbering)."""
    text = f"{job}|{shard['id']}|{shard['sha256']}" + (f"|{number}" if number else "")
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def upload_name(key: str, path: str | Path) -> str:
    """The filename an input file is uploaded under: it carries the idempotency key."""
    return f"batchgen-{key}-{Path(path).name}"


def open_intent(ledger: Ledger, job: str, shard: dict[str, Any]) -> dict[str, Any]:
    """The shard's pending submit intent, created (committed) if it has none."""
    with ledger.transaction():
        intent = ledger.pending_intent(shard["id"])
        if intent is None:
            intent = ledger.insert_intent(intent_key(job, shard, ledger.intent_count(shard["id"])), job, shard["id"])
    return intent


def submit_shard(session: Session, client: BatchClient, spec: JobSpec, shard: dict[str, Any]) -> None:
    """Intent row, then upload, then create, then record: each step is in the ledger before the next call.

    A pending intent resumes here with its file, if it has one.
    """
    ledger = session.ledger
    intent = open_intent(ledger, spec.name, shard)
    key = intent["idempotency_key"]
    crash_point("intent")
    remote = session.provider_batches(client, spec.name).find(key)
    if remote is not None:
        adopt(session, client, spec, shard, intent, remote)
        return
    file_id = intent["file_id"]
    if not file_id:
        file_id = client.upload(session.workspace.locate(shard["path"]), upload_name(key, shard["path"]),
                                deployment=client.deployment(spec.deployment, spec.model)).id
        crash_point("upload")
        with ledger.transaction():
            ledger.set_intent_file(intent["id"], file_id)
    metadata = {"batchgen_job": spec.name, "batchgen_shard": shard["id"], "batchgen_key": key}
    batch = client.create_batch(file_id, spec.endpoint, metadata)
    crash_point("create")
    with ledger.transaction():
        record_created(session, client, spec.name, shard, batch.model_dump(mode="json"))
        ledger.finish_intent(intent["id"], batch.id)


def adopt(session: Session, client: BatchClient, spec: JobSpec, shard: dict[str, Any], intent: dict[str, Any],
          batch: dict[str, Any]) -> None:
    """Record a batch the provider already holds for this intent's key, as if the create had just returned it."""
    ledger = session.ledger
    with ledger.transaction():
        record_created(session, client, spec.name, shard, batch)
        record_batch_state(session, client, spec.name, batch, 0)  # it may have ended while nobody looked
        ledger.finish_intent(intent["id"], batch["id"], batch["input_file_id"])
        ledger.event("adopted", job=spec.name, batch_id=batch["id"], shard=shard["id"], key=intent["idempotency_key"])


def record_created(session: Session, client: BatchClient, job: str, shard: dict[str, Any],
                   batch: dict[str, Any]) -> None:
    """Record a batch the provider created for the shard (call inside a transaction)."""
    session.ledger.record_batch(job, shard, batch, backend=client.identity, next_poll=session.clock())


def submit_pending(session: Session, client: BatchClient, spec: JobSpec, job: dict[str, Any]) -> tuple[int, str | None]:
    """Submit the pending shards that the queue and the budget admit: how many, and why the rest waits.

    A shard that alone exceeds the queued-token cap is split first. BudgetExceeded when the budget stops the job
    with nothing in flight that could still free or use it.
    """
    ledger = session.ledger
    cap = queue_cap(session, spec, job["backend"])
    pending = ledger.pending_shards(spec.name)
    if cap is not None and any(s["input_tokens"] > cap for s in pending):
        for shard in pending:
            if shard["input_tokens"] > cap:
                shards.split_shard(ledger, session.workspace, spec, shard, shard_limits(session, spec),
                                   learn=session.learn)
        pending = ledger.pending_shards(spec.name)
    budget = Decimal(job["budget_usd"]) if job["budget_usd"] is not None else None
    models = {s["model"] for s in pending}
    admission = admit(pending, job=spec.name, budget=budget, mode=session.budget_mode, cap=cap,
                      committed=ledger.committed_usd(spec.name, session.budget_mode) if budget is not None
                      else Decimal(0), queued={m: ledger.queued_tokens(m) for m in models})
    for shard in admission.shards:
        submit_shard(session, client, spec, shard)
    if admission.over_budget and not ledger.uncollected_batches(spec.name):
        raise BudgetExceeded(str(admission.waiting))
    return len(admission.shards), admission.waiting
