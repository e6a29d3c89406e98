"""Crash recovery of submissions: finish or adopt what a crashed or interrupted submission left behind.

Submitting a shard is intent row → upload → create → record (`batchgen.run.submission`). Each intent has an
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

from dataclasses import dataclass, field

from batchgen.errors import BackendError
from batchgen.ledger import Ledger
from batchgen.recipe.spec import JobSpec
from batchgen.run.client import BatchClient
from batchgen.run.session import Session
from batchgen.run.submission import FILENAME_KEY, adopt, submit_shard


@dataclass
class Recovered:
    """What one recovery did."""

    adopted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    deleted_files: list[str] = field(default_factory=list)


def recover_submissions(session: Session, client: BatchClient, spec: JobSpec, *, resume: bool = True) -> Recovered:
    """Settle the job's pending submit intents (see the module docstring); a no-op when there are none.

    With resume=False (commands that submit nothing) remote batches are adopted, and the rest waits.
    """
    ledger, done = session.ledger, Recovered()
    pending = ledger.pending_intents(spec.name)
    if not pending:
        return done
    listing = session.provider_batches(client, spec.name)
    for intent in pending:
        shard = ledger.find_shard(intent["shard_id"])
        batch = listing.find(intent["idempotency_key"])
        if batch is not None and shard is not None:
            adopt(session, client, spec, shard, intent, batch)
            done.adopted.append(batch["id"])
        elif not resume:
            continue
        elif shard is not None and shard["status"] == "pending":
            submit_shard(session, client, spec, shard)
            done.resumed.append(shard["id"])
        else:
            with ledger.transaction():
                ledger.abandon_intent(intent["id"])
                ledger.event("intent_abandoned", job=spec.name, shard=intent["shard_id"],
                             key=intent["idempotency_key"])
            done.abandoned.append(intent["shard_id"])
    done.deleted_files = delete_orphans(client, ledger, spec.name)
    return done


def delete_orphans(client: BatchClient, ledger: Ledger, job: str) -> list[str]:
    """Delete uploaded input files that carry one of the job's keys but that nothing in the ledger refers to."""
    keys = ledger.intent_keys(job)
    referenced = ledger.referenced_files(job)
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
