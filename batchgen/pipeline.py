"""The verbs of the command line, composed from the scheduler's steps: run, submit, collect, status, cancel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from batchgen.errors import NotFoundError
from batchgen.ledger import TERMINAL
from batchgen.reconcile import reconcile
from batchgen.scheduler import (
    JobProgress,
    Runner,
    advance,
    collect_ended,
    ensure_compiled,
    job_spec,
    next_stage_or_finish,
    poll_due,
    progress,
    submit_pending,
    update_batch,
)
from batchgen.spec import JobSpec

MAX_SLEEP = 60.0


def run_job(runner: Runner, spec: JobSpec, on_progress: Callable[[JobProgress], None] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> JobProgress:
    """Tick one job until it is done, sleeping until the next batch is due for a poll."""
    while True:
        state = advance(runner, spec)
        if on_progress is not None:
            on_progress(state)
        if state.done:
            return state
        sleep(seconds_to_next_poll(runner, spec.name))


def seconds_to_next_poll(runner: Runner, job: str) -> float:
    placeholders = ",".join("?" * len(TERMINAL))
    due = runner.ledger.scalar(f"SELECT min(CAST(next_poll_utc AS REAL)) FROM batches WHERE job = ? AND "
                               f"status NOT IN ({placeholders})", [job, *TERMINAL])
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
    """Poll, collect what ended and (after the last stage) export; submit nothing."""
    reports = []
    for name in _names(runner, names):
        spec = job_spec(runner, name)
        row = runner.ledger.job(name)
        collected = 0
        if row["status"] == "active":
            client = runner.client(row["backend"])
            poll_due(runner, client, name)
            collected = collect_ended(runner, client, spec)
            next_stage_or_finish(runner, spec, spec.stage(row["stage"]))
        report = progress(runner, name)
        report.collected_now = collected
        reports.append(report)
    return reports


def refresh_status(runner: Runner, job: str | None = None) -> bool:
    """Poll the unfinished batches (of one job, or all); True while any is unfinished."""
    active = False
    for name in _names(runner, [job] if job else None):
        row = runner.ledger.job(name)
        placeholders = ",".join("?" * len(TERMINAL))
        if runner.ledger.scalar(f"SELECT count(*) FROM batches WHERE job = ? AND status NOT IN ({placeholders})",
                                [name, *TERMINAL]):
            poll_due(runner, runner.client(row["backend"]), name)
            active = active or bool(runner.ledger.scalar(
                f"SELECT count(*) FROM batches WHERE job = ? AND status NOT IN ({placeholders})", [name, *TERMINAL]))
    return active


def cancel(runner: Runner, target: str) -> list[tuple[str, str]]:
    """Cancel one batch by id, or every unfinished batch of a job; returns (batch id, new status) pairs."""
    ledger = runner.ledger
    batch = ledger.one("SELECT * FROM batches WHERE id = ?", [target])
    if batch is not None:
        batches = [batch]
    elif ledger.find_job(target) is not None:
        placeholders = ",".join("?" * len(TERMINAL))
        batches = ledger.rows(f"SELECT * FROM batches WHERE job = ? AND status NOT IN ({placeholders})",
                              [target, *TERMINAL])
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
