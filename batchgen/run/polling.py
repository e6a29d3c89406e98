"""Polling: ask the provider about each unfinished batch when it is due, and record what it says."""

from __future__ import annotations

import random
from typing import Any

from batchgen.errors import BackendError
from batchgen.run.client import BatchClient, is_transient
from batchgen.run.session import Session


def poll_interval(client: BatchClient, status: str, polls: int, first: float | None = None) -> float:
    """Seconds until the next retrieve of a batch, backing off with jitter: quick on the embedded emulator; from
    about a second, growing gently to 15 s, on a server on this machine (`batchgen serve`, a local model answers in
    milliseconds); from 30 s to 5 min on a remote API. `first` (`--poll-interval`) sets the first wait anywhere."""
    if first is None and client.backend == "embedded":
        return 0.25
    if first is None and client.loopback:
        first, growth, longest = 1.0, 1.25, 15.0
    else:
        first = first if first is not None else 30.0
        growth, longest = 1.5, max(first, 300.0)
    base = min(first * (growth ** min(polls, 10)), longest)
    if status == "finalizing":
        base = min(base * 2, 600.0)
    return base * random.uniform(0.8, 1.2)


def poll_due(session: Session, client: BatchClient, job: str) -> None:
    """Retrieve each unfinished batch whose next poll is due (at most one retrieve per batch per interval)."""
    now = session.clock()
    for row in session.ledger.unfinished_batch_rows(job):
        if row["next_poll_utc"] and float(row["next_poll_utc"]) > now:
            continue
        try:
            batch = client.retrieve(row["id"]).model_dump(mode="json")
        except BackendError as error:
            if not is_transient(error):
                raise
            _poll_failed(session, client, job, row, error)
            continue
        record_batch_state(session, client, job, batch, row["polls"] + 1)


def _poll_failed(session: Session, client: BatchClient, job: str, row: dict[str, Any], error: BackendError) -> None:
    """A poll that met a transient fault (outage, 429, 5xx): note it and try again after a longer wait."""
    wait = poll_interval(client, "error", row["polls"] + 1, session.poll_base) * 2
    with session.ledger.transaction():
        session.ledger.record_poll_error(job, row["id"], next_poll=session.clock() + wait,
                                         status_code=error.status_code, message=str(error))


def record_batch_state(session: Session, client: BatchClient, job: str, batch: dict[str, Any], polls: int) -> None:
    """Record the provider's view of a batch and when to ask again."""
    wait = poll_interval(client, batch["status"], polls, session.poll_base)
    with session.ledger.transaction():
        session.ledger.record_poll(job, batch, polls=polls, next_poll=session.clock() + wait)


def seconds_to_next_poll(session: Session, job: str, *, longest: float) -> float:
    """How long to sleep before the job's next batch is due for a poll (0.05 s to `longest`)."""
    due = session.ledger.next_poll_due(job)
    if due is None:
        return 0.05
    return min(max(due - session.clock(), 0.05), longest)
