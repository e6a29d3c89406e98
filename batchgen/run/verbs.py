"""The verbs of the command line, composed from the scheduler's steps: run, submit, collect, status, cancel."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

from batchgen.errors import BackendError, NotFoundError
from batchgen.ledger import UNFINISHED
from batchgen.recipe.spec import JobSpec
from batchgen.run.client import is_transient
from batchgen.run.recovery import reconcile
from batchgen.run.tick import (
    JobProgress,
    Runner,
    advance,
    ensure_compiled,
    job_spec,
    poll_due,
    submit_pending,
    update_batch,
)

MAX_SLEEP = 60.0
MAX_OUTAGE = 1800.0


def run_job(runner: Runner, spec: JobSpec, on_progress: Callable[[JobProgress], None] | None = None,
            sleep: Callable[[float], None] = time.sleep, on_outage: Callable[[str], None] | None = None,
            max_outage: float = MAX_OUTAGE) -> JobProgress:
    """Tick one job until it is done, sleeping until the next batch is due for a poll.

    A transient fault (no connection, 429, 5xx) after the backend has answered once is waited out with growing
    pauses for up to `max_outage` seconds in a row; every step of a tick is recorded before it is taken, so the next
    tick resumes where this one broke. A backend that does not answer the first tick is an error at once.
    """
    outage_started: float | None = None
    pause = 1.0
    reached = False
    while True:
        try:
            state = advance(runner, spec)
            reached = True
        except BackendError as error:
            if not (reached and is_transient(error)):
                raise
            now = time.monotonic()
            outage_started = outage_started or now
            if now - outage_started > max_outage:
                raise BackendError(f"Gave up after {max_outage:.0f} s of failures: {error}") from error
            if on_outage is not None:
                on_outage(f"{error}; retrying in {pause:.0f} s")
            sleep(pause * random.uniform(0.8, 1.2))
            pause = min(pause * 2, 60.0)
            continue
        outage_started, pause = None, 1.0
        if on_progress is not None:
            on_progress(state)
        if state.done:
            return state
        sleep(seconds_to_next_poll(runner, spec.name))


def seconds_to_next_poll(runner: Runner, job: str) -> float:
    due = runner.ledger.scalar(f"SELECT min(CAST(next_poll_utc AS REAL)) FROM batches WHERE job = ? AND {UNFINISHED}",
                               [job])
    if due is None:
        return 0.05
    return min(max(float(due) - runner.clock(), 0.05), MAX_SLEEP)


def submit_job(runner: Runner, spec: JobSpec) -> tuple[int, str | None]:
    """Compile the current stage if needed and submit what the budget allows."""
    row = runner.ledger.job(spec.name)
    ensure_compiled(runner, spec, spec.stage(row["stage"]))
    reconcile(runner, runner.client(row["backend"]), spec)
    return submit_pending(runner, runner.client(row["backend"]), spec, row)


def _names(runner: Runner, names: Iterable[str] | None) -> list[str]:
    if names is not None:
        return [runner.ledger.job(name)["name"] for name in names]
    return [row["name"] for row in runner.ledger.jobs("active")]


def collect_jobs(runner: Runner, names: Iterable[str] | None = None) -> list[JobProgress]:
    """Poll, collect what ended, plan retries and (after the last stage) export; submit nothing."""
    reports = []
    for name in _names(runner, names):
        reports.append(advance(runner, job_spec(runner, name), submit=False))
    return reports


def refresh_status(runner: Runner, job: str | None = None) -> bool:
    """Poll the unfinished batches (of one job, or all); True while any is unfinished."""
    active = False
    for name in _names(runner, [job] if job else None):
        if runner.ledger.unfinished_batches(name):
            poll_due(runner, runner.client(runner.ledger.job(name)["backend"]), name)
            active = active or bool(runner.ledger.unfinished_batches(name))
    return active


def cancel(runner: Runner, target: str) -> list[tuple[str, str]]:
    """Cancel one batch by id, or every unfinished batch of a job; returns (batch id, new status) pairs."""
    ledger = runner.ledger
    batch = ledger.one("SELECT * FROM batches WHERE id = ?", [target])
    if batch is not None:
        batches = [batch]
    elif ledger.find_job(target) is not None:
        with ledger.transaction():
            if ledger.job(target)["status"] == "active":
                ledger.set_job(target, status="cancelled")
                ledger.event("job_cancelled", job=target)
        batches = ledger.rows(f"SELECT * FROM batches WHERE job = ? AND {UNFINISHED}", [target])
    else:
        raise NotFoundError(f"No job or batch {target!r} in ledger {ledger.path}; run 'batchgen status'")
    done = []
    for row in batches:
        job = ledger.job(row["job"])
        client = runner.client(job["backend"])
        remote = client.cancel(row["id"]).model_dump(mode="json")
        update_batch(runner, client, row["job"], remote, row["polls"])
        with ledger.transaction():
            ledger.event("cancel_requested", job=row["job"], batch_id=row["id"])
        done.append((row["id"], remote["status"]))
    return done
