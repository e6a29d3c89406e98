"""The verbs of the command line, composed from the steps of a tick: run, submit, collect, status, cancel,
unblock; and the import of a review, which rewrites the dataset."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from batchgen.dataset.report import export_job
from batchgen.dataset.review import ReviewImport, record_verdicts
from batchgen.errors import BackendError, BatchgenError, JobDirMissing, NotFoundError
from batchgen.ledger.states import ACTIVE, BLOCKED, CANCELLED
from batchgen.recipe.spec import JobSpec
from batchgen.run.client import is_transient
from batchgen.run.polling import poll_due, record_batch_state, seconds_to_next_poll
from batchgen.run.recovery import recover_submissions
from batchgen.run.session import Session
from batchgen.run.submission import submit_pending
from batchgen.run.tick import JobProgress, advance, ensure_compiled, job_spec, progress

MAX_SLEEP = 60.0
MAX_OUTAGE = 1800.0


def run_job(session: Session, spec: JobSpec, on_progress: Callable[[JobProgress], None] | None = None,
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
            state = advance(session, spec)
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
        sleep(seconds_to_next_poll(session, spec.name, longest=MAX_SLEEP))


def submit_job(session: Session, spec: JobSpec) -> tuple[int, str | None]:
    """Compile the current stage if needed and submit what the budget allows."""
    row = session.ledger.job(spec.name)
    ensure_compiled(session, spec, spec.stage(row["stage"]))
    recover_submissions(session, session.client(row["backend"]), spec)
    return submit_pending(session, session.client(row["backend"]), spec, row)


def _names(session: Session, names: Iterable[str] | None) -> list[str]:
    if names is not None:
        return [session.ledger.job(name)["name"] for name in names]
    return [row["name"] for row in session.ledger.jobs(ACTIVE)]


def collect_jobs(session: Session, names: Iterable[str] | None = None) -> list[JobProgress]:
    """Poll, collect what ended, plan retries and (after the last stage) export; submit nothing. A job whose next
    step needs its missing job directory says so in its progress (`error`), and the other jobs go on."""
    reports = []
    for name in _names(session, names):
        try:
            reports.append(advance(session, job_spec(session, name), submit=False))
        except JobDirMissing as error:
            report = progress(session, name)
            report.error = str(error)
            reports.append(report)
    return reports


def refresh_status(session: Session, job: str | None = None) -> bool:
    """Poll the unfinished batches (of one job, or all); True while any is unfinished."""
    active = False
    for name in _names(session, [job] if job else None):
        if session.ledger.unfinished_batches(name):
            poll_due(session, session.client(session.ledger.job(name)["backend"]), name)
            active = active or bool(session.ledger.unfinished_batches(name))
    return active


def cancel(session: Session, target: str) -> list[tuple[str, str]]:
    """Cancel one batch by id, or every unfinished batch of a job; returns (batch id, new status) pairs."""
    ledger = session.ledger
    batch = ledger.batch(target)
    if batch is not None:
        batches = [batch]
    elif ledger.find_job(target) is not None:
        with ledger.transaction():
            if ledger.job(target)["status"] == ACTIVE:
                ledger.set_job(target, status=CANCELLED)
                ledger.event("job_cancelled", job=target)
        batches = ledger.unfinished_batch_rows(target)
    else:
        raise NotFoundError(f"No job or batch {target!r} in ledger {ledger.path}; run 'batchgen status'")
    done = []
    for row in batches:
        job = ledger.job(row["job"])
        client = session.client(job["backend"])
        remote = client.cancel(row["id"]).model_dump(mode="json")
        record_batch_state(session, client, row["job"], remote, row["polls"])
        with ledger.transaction():
            ledger.event("cancel_requested", job=row["job"], batch_id=row["id"])
        done.append((row["id"], remote["status"]))
    return done


def unblock(session: Session, name: str) -> str:
    """Make a blocked job active again, for one more round of its stage once the user has fixed the cause (an
    upstream, a model, a parameter); returns the cause it was blocked by. Rounds before this one no longer count as
    a dead end, so a cause that is still there blocks the job again after one round."""
    ledger = session.ledger
    with ledger.transaction():
        job = ledger.job(name)
        if job["status"] != BLOCKED:
            raise BatchgenError(f"Job {name!r} is not blocked (it is {job['status']})")
        cause = job["blocked_reason"] or ""
        ledger.record_unblock(name, job["stage"], ledger.latest_attempt(name, job["stage"]), cause)
        ledger.set_job(name, status=ACTIVE, blocked_reason=None)
        ledger.event("unblocked", job=name, stage=job["stage"], cause=cause)
    return cause


def import_review(session: Session, name: str, path: Path) -> tuple[ReviewImport, dict[str, Any] | None]:
    """Read a filled-in review file into the ledger and, when the job has written its dataset, write it again
    without the examples now rejected, all in one transaction: a file that is refused, or a dataset that cannot be
    written, leaves the ledger as it was. Returns what was imported and the dataset ({"path", "examples"}) or
    None."""
    ledger = session.ledger
    spec = job_spec(session, name)
    with ledger.transaction():
        imported = record_verdicts(ledger, spec, path, session.workspace.stored(path))
        kept = ledger.dataset(spec.name)
        if kept is None:
            return imported, None
        exported = export_job(ledger, spec, session.workspace.locate(kept["path"]))
        ledger.record_dataset(spec.name, kept["path"], exported.written, exported.sha256)
    return imported, {"path": str(exported.path), "examples": exported.written}
