"""Idempotent submission: finish or adopt what a crashed or interrupted submission left behind.

Submitting a shard is intent row → upload → create → record (`scheduler.submit_shard`). Each intent has an
idempotency key; the uploaded file's name carries it (`batchgen-<key>-<shard>.jsonl`) and so does the batch's
`metadata.batchgen_key`. A process can die, or a create can time out, between any two of those steps, so at the
start of each tick every intent still `pending` is settled before anything new is submitted:

1. a remote batch whose metadata carries the key exists → adopt it (record it as if the create had just returned);
2. none exists and the shard still waits → resume: create the batch from the intent's file, or upload again first
   if the intent never got a file id;
3. none exists and the shard no longer waits → the intent is abandoned.

Then input files that carry a key of the job's intents but that neither an intent nor a recorded batch refers to
(uploads whose id was lost in a crash) are deleted. Only files named with one of this ledger's keys are touched.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchgen.errors import BackendError
from batchgen.ledger import Ledger, utcnow
from batchgen.run.client import BatchClient

if TYPE_CHECKING:
    from batchgen.recipe.spec import JobSpec
    from batchgen.run.tick import Runner

FILENAME_KEY = re.compile(r"^batchgen-([0-9a-f]{32})-")


@dataclass
class Reconciled:
    """What one reconciliation did."""

    adopted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    deleted_files: list[str] = field(default_factory=list)


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
        intent = ledger.one("SELECT * FROM intents WHERE shard_id = ? AND kind = 'submit' AND status = 'pending' "
                            "ORDER BY id DESC LIMIT 1", [shard["id"]])
        if intent is None:
            number = ledger.scalar("SELECT count(*) FROM intents WHERE shard_id = ?", [shard["id"]])
            key = intent_key(job, shard, number)
            ledger.execute("INSERT INTO intents (idempotency_key, job, shard_id, kind, status, created_utc, "
                           "updated_utc) VALUES (?, ?, ?, 'submit', 'pending', ?, ?)",
                           [key, job, shard["id"], utcnow(), utcnow()])
            intent = ledger.one("SELECT * FROM intents WHERE idempotency_key = ?", [key])
    assert intent is not None
    return intent


def reconcile(runner: Runner, client: BatchClient, spec: JobSpec, *, resume: bool = True) -> Reconciled:
    """Settle the job's pending submit intents (see the module docstring); a no-op when there are none.

    With resume=False (commands that submit nothing) remote batches are adopted, and the rest waits.
    """
    from batchgen.run.tick import record_batch, submit_shard, update_batch  # scheduler calls this module

    ledger, done = runner.ledger, Reconciled()
    pending = ledger.rows("SELECT * FROM intents WHERE job = ? AND kind = 'submit' AND status = 'pending' "
                          "ORDER BY id", [spec.name])
    if not pending:
        return done
    remote = find_batches(client, ledger, spec.name, pending)
    for intent in pending:
        shard = ledger.one("SELECT * FROM shards WHERE id = ?", [intent["shard_id"]])
        batch = remote.get(intent["idempotency_key"])
        if batch is not None and shard is not None:
            with ledger.transaction():
                record_batch(ledger, client, spec.name, shard, batch, runner.clock())
                update_batch(runner, client, spec.name, batch, 0)  # it may have ended while nobody looked
                ledger.execute("UPDATE intents SET status = 'done', batch_id = ?, file_id = ?, updated_utc = ? "
                               "WHERE id = ?", [batch["id"], batch["input_file_id"], utcnow(), intent["id"]])
                ledger.event("adopted", job=spec.name, batch_id=batch["id"], shard=shard["id"],
                             key=intent["idempotency_key"])
            done.adopted.append(batch["id"])
        elif not resume:
            continue
        elif shard is not None and shard["status"] == "pending":
            submit_shard(runner, client, spec, shard)
            done.resumed.append(shard["id"])
        else:
            with ledger.transaction():
                ledger.execute("UPDATE intents SET status = 'abandoned', updated_utc = ? WHERE id = ?",
                               [utcnow(), intent["id"]])
                ledger.event("intent_abandoned", job=spec.name, shard=intent["shard_id"],
                             key=intent["idempotency_key"])
            done.abandoned.append(intent["shard_id"])
    done.deleted_files = delete_orphans(client, ledger, spec.name)
    return done


def find_batches(client: BatchClient, ledger: Ledger, job: str,
                 intents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Remote batches whose `metadata.batchgen_key` is one of the intents' keys, by key.

    Pages through the list newest first and stops early once it is past a batch of this job that was recorded
    before the oldest intent was written: every batch made for an intent was created after that one (strictly
    older `created_at`, as batches of the same second may come in any order). The early stop is only trusted while
    the list really comes newest first.
    """
    wanted = {i["idempotency_key"] for i in intents}
    oldest = min(i["created_utc"] for i in intents)
    before = {row[0] for row in ledger.execute("SELECT id FROM batches WHERE job = ? AND submitted_utc < ?",
                                               [job, oldest])}
    found: dict[str, dict[str, Any]] = {}
    newest_first, last_created, stop_below = True, None, None
    for batch in client.list_batches():
        if last_created is not None and batch.created_at > last_created:
            newest_first = False
        last_created = batch.created_at
        if newest_first and stop_below is not None and batch.created_at < stop_below:
            break
        key = (batch.metadata or {}).get("batchgen_key")
        if key is not None and key in wanted and key not in found:
            found[key] = batch.model_dump(mode="json")
            if len(found) == len(wanted):
                break
        if batch.id in before and stop_below is None:
            stop_below = batch.created_at
    return found


def delete_orphans(client: BatchClient, ledger: Ledger, job: str) -> list[str]:
    """Delete uploaded input files that carry one of the job's keys but that nothing in the ledger refers to."""
    keys = {row[0] for row in ledger.execute("SELECT idempotency_key FROM intents WHERE job = ?", [job])}
    referenced = {row[0] for row in ledger.execute(
        "SELECT file_id FROM intents WHERE job = ? AND file_id IS NOT NULL "
        "UNION SELECT input_file_id FROM batches WHERE job = ?", [job, job])}
    deleted = []
    for item in client.list_files():
        match = FILENAME_KEY.match(item.filename or "")
        if match is None or match.group(1) not in keys or item.id in referenced:
            continue
        try:
            client.delete_file(item.id)
        except BackendError as error:
            if error.status_code != 404:
                raise
        deleted.append(item.id)
    if deleted:
        with ledger.transaction():
            ledger.event("orphans_deleted", job=job, files=deleted)
    return deleted
