"""`tick()`: one idempotent, non-blocking pass that moves every active job as far forward as it can.

For each job, in order: compile the current stage if it has no shards yet; submit pending shards (within the
budget); poll batches that are due; collect batches that ended; open the next stage or, after the last one, export
the dataset. Each step writes what it is about to do to the ledger before it calls the API, so a process that dies
anywhere can be started again without spending twice or losing a result.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchgen.crashpoints import crash_point
from batchgen.dataset.report import dataset, export_job
from batchgen.errors import BackendError, BatchgenError, BudgetExceeded, SpecError
from batchgen.ledger import UNFINISHED, Ledger, dec_sum, utcnow
from batchgen.ledger.workspace import Workspace
from batchgen.recipe.loader import load_spec
from batchgen.recipe.plan import plan_stage
from batchgen.recipe.pricing import get_price
from batchgen.recipe.spec import JobSpec, LimitsSpec, ResolvedStage
from batchgen.run import shards
from batchgen.run.client import BatchClient, choose_backend, is_transient
from batchgen.run.collect import collect_batch
from batchgen.run.recovery import open_intent, reconcile, upload_name

ACTIVE = "active"
CANCELLED = "cancelled"
BUDGET_MODES = ("worst", "expected")
LEARNED_MARGIN = 0.95  # a limit learned from the provider's message is used with a margin for counting differences
IN_FLIGHT = ("validating", "in_progress", "finalizing", "cancelling")
# Queued-token limits of usage tier 1 (spec/batch-api.md §6), used for the openai and azure backends when neither
# --queue-limit nor the job's limits.max_queued_tokens says otherwise. Higher tiers allow far more.
KNOWN_QUEUE_LIMITS = {
    "gpt-4o-mini": 2_000_000,
    "gpt-4o": 90_000,
    "text-embedding-3-small": 3_000_000,
    "text-embedding-3-large": 3_000_000,
}


@dataclass
class JobProgress:
    """Where a job stands after a tick."""

    job: str
    stage: str | None
    status: str
    requests: int = 0
    finished: int = 0
    batches: dict[str, int] = field(default_factory=dict)
    submitted_now: int = 0
    collected_now: int = 0
    valid_examples: int = 0
    spent_usd: Decimal = Decimal(0)
    dataset: str | None = None
    waiting_for_budget: str | None = None
    error: str | None = None
    pending_shards: int = 0  # compiled and waiting to be submitted (a stage's first shards, retries, top-ups)

    @property
    def done(self) -> bool:
        return self.status != ACTIVE


class Runner:
    """What a tick needs: the ledger, the workspace and (lazily) one Batch API client per backend."""

    def __init__(self, ledger: Ledger, workspace: Workspace, *, backend: str | None = None,
                 clock: Callable[[], float] = time.time, budget_mode: str = "worst",
                 queue_limit: int | None = None, poll_interval: float | None = None):
        if budget_mode not in BUDGET_MODES:
            raise BatchgenError(f"Unknown budget mode {budget_mode!r}; use one of {', '.join(BUDGET_MODES)}")
        self.ledger = ledger
        self.workspace = workspace
        self.backend_flag = backend
        self.clock = clock
        self.budget_mode = budget_mode
        self.queue_limit = queue_limit
        self.poll_base = poll_interval
        self._clients: dict[str, BatchClient] = {}

    def queue_cap(self, spec: JobSpec, backend: str) -> int | None:
        """Tokens the model may have queued at once: --queue-limit > the job's limits > known tier-1 limits."""
        if self.queue_limit is not None:
            return self.queue_limit
        if spec.limits.max_queued_tokens is not None:
            return spec.limits.max_queued_tokens
        learned = self.ledger.scalar(
            "SELECT json_extract(detail_json, '$.limit') FROM events WHERE kind = 'queue_limit' AND "
            "json_extract(detail_json, '$.model') = ? ORDER BY id DESC LIMIT 1", [spec.model])
        if learned:
            return int(int(learned) * LEARNED_MARGIN)
        return None if backend == "embedded" else KNOWN_QUEUE_LIMITS.get(spec.model)

    def limits(self, spec: JobSpec) -> LimitsSpec:
        """The job's shard limits, with shards cut to the queued-token cap so each one alone fits the queue."""
        row = self.ledger.find_job(spec.name)
        cap = self.queue_cap(spec, row["backend"] if row else "embedded")
        current = spec.limits.max_queued_tokens
        if cap is None or (current is not None and current <= cap):
            return spec.limits
        return spec.limits.model_copy(update={"max_queued_tokens": cap})

    def client(self, backend: str) -> BatchClient:
        if backend not in self._clients:
            self._clients[backend] = BatchClient(backend, emulator_dir=self.workspace.emulator_dir)
        return self._clients[backend]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def poll_interval(self, backend: str, status: str, polls: int) -> float:
        """Seconds until the next retrieve of a batch: quick on the emulator, backing off with jitter on a real API."""
        if backend == "embedded" and self.poll_base is None:
            return 0.25
        first = self.poll_base if self.poll_base is not None else 30.0
        base = min(first * (1.5 ** min(polls, 10)), max(first, 300.0))
        if status == "finalizing":
            base = min(base * 2, 600.0)
        return base * random.uniform(0.8, 1.2)


# -- jobs ----------------------------------------------------------------------------------------------------


def register_job(runner: Runner, job_ref: str | Path) -> JobSpec:
    """Load a job directory and make sure the ledger knows it (a changed job.toml is refused)."""
    spec = load_spec(job_ref)
    ledger = runner.ledger
    with ledger.transaction():
        row = ledger.find_job(spec.name)
        if row is None:
            backend = choose_backend(runner.backend_flag, spec.backend)
            ledger.execute(
                "INSERT INTO jobs (name, spec_hash, spec_json, job_dir, status, stage, backend, budget_usd, "
                "created_utc, updated_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [spec.name, spec.spec_hash, spec.model_dump_json(by_alias=True), str(spec.job_dir.resolve()),
                 ACTIVE, spec.stage().name, backend,
                 str(spec.budget_usd) if spec.budget_usd is not None else None, utcnow(), utcnow()])
            ledger.event("job_registered", job=spec.name, backend=backend, spec_hash=spec.spec_hash)
        else:
            _check_same_spec(spec, row)
            if runner.backend_flag and runner.backend_flag != row["backend"]:
                raise BatchgenError(f"Job {spec.name!r} runs on backend {row['backend']!r}; it cannot switch to "
                                    f"{runner.backend_flag!r} halfway")
            ledger.set_job(spec.name, budget_usd=str(spec.budget_usd) if spec.budget_usd is not None else None)
    return spec


def _check_same_spec(spec: JobSpec, row: dict[str, Any]) -> None:
    if row["spec_hash"] != spec.spec_hash:
        raise SpecError(f"Job {spec.name!r} was started from a different job.toml, templates or seeds "
                        f"(spec {row['spec_hash'][:12]}, now {spec.spec_hash[:12]}); restore them, or give the "
                        "changed job a new name")


def job_spec(runner: Runner, name: str) -> JobSpec:
    row = runner.ledger.job(name)
    spec = load_spec(row["job_dir"])
    _check_same_spec(spec, row)
    return spec


def tick(runner: Runner, names: Iterable[str] | None = None) -> list[JobProgress]:
    """One pass over the named jobs (default: every active or cancelling job); a job that fails is reported in
    its progress (`error`) and the others go on."""
    if names is not None:
        rows = [runner.ledger.job(n) for n in names]
    else:
        ledger = runner.ledger
        rows = ledger.jobs(ACTIVE) + [r for r in ledger.jobs(CANCELLED) if ledger.uncollected_batches(r["name"])]
    reports = []
    for row in rows:
        try:
            reports.append(advance(runner, job_spec(runner, row["name"])))
        except BatchgenError as error:
            with runner.ledger.transaction():
                runner.ledger.event("tick_error", job=row["name"], message=str(error))
            report = progress(runner, row["name"])
            report.error = str(error)
            reports.append(report)
    return reports


def advance(runner: Runner, spec: JobSpec, *, submit: bool = True) -> JobProgress:
    """Move one job forward as far as it can go now (with submit=False: poll, collect and plan retries only)."""
    row = runner.ledger.job(spec.name)
    settled = row["status"] == CANCELLED and not runner.ledger.uncollected_batches(spec.name)
    if row["status"] not in (ACTIVE, CANCELLED) or settled:
        return progress(runner, spec.name)
    stage = spec.stage(row["stage"])
    client = runner.client(row["backend"])
    reconcile(runner, client, spec, resume=submit and row["status"] == ACTIVE)
    submitted, blocked = 0, None
    if row["status"] == ACTIVE:
        ensure_compiled(runner, spec, stage)
        if submit:
            submitted, blocked = submit_pending(runner, client, spec, row)
    poll_due(runner, client, spec.name)
    collected = collect_ended(runner, client, spec)
    if row["status"] == ACTIVE and not _open_shards(runner, spec, stage):
        if not shards.schedule_retries(runner.ledger, runner.workspace, spec, stage, runner.limits(spec)) \
                and not runner.ledger.uncollected_batches(spec.name):
            shards.schedule_top_up(runner.ledger, runner.workspace, spec, stage, runner.limits(spec),
                                   lambda: _budget_left(runner.ledger, spec, stage, row))
    next_stage_or_finish(runner, spec, stage)
    result = progress(runner, spec.name)
    result.submitted_now, result.collected_now, result.waiting_for_budget = submitted, collected, blocked
    return result


def _open_shards(runner: Runner, spec: JobSpec, stage: ResolvedStage) -> int:
    """Shards of the stage that are still to submit or still running."""
    return int(runner.ledger.scalar("SELECT count(*) FROM shards WHERE job = ? AND stage = ? AND status IN "
                                    "('pending', 'submitted')", [spec.name, stage.name]))


# -- compile -------------------------------------------------------------------------------------------------


def ensure_compiled(runner: Runner, spec: JobSpec, stage: ResolvedStage) -> None:
    """Compile the stage once, with shards no larger than the queued-token cap."""
    shards.ensure_compiled(runner.ledger, runner.workspace, spec, stage, runner.limits(spec))


# -- submit --------------------------------------------------------------------------------------------------


def committed_spend(ledger: Ledger, job: str, mode: str = "worst") -> Decimal:
    """Actual cost of what was collected plus the estimate of batches in flight (worst case or expected)."""
    column = "max_cost_usd" if mode == "worst" else "est_cost_usd"
    done = dec_sum(r[0] for r in ledger.execute("SELECT cost_usd FROM results WHERE job = ?", [job]))
    flying = dec_sum(r[0] for r in ledger.execute(
        f"SELECT s.{column} FROM batches b JOIN shards s ON s.id = b.shard_id WHERE b.job = ? AND b.collected = 0",
        [job]))
    return done + flying


def _budget_left(ledger: Ledger, spec: JobSpec, stage: ResolvedStage, row: dict[str, Any]) -> Decimal | None:
    """What a top-up of this stage may spend: the budget less what is committed (batches in flight at their worst
    case) and less the worst case the plan gives the stages after this one, whatever the budget mode, so that a
    top-up never takes money the rest of the plan may need. None: no budget."""
    if row["budget_usd"] is None:
        return None
    stages = spec.resolved_stages()
    later = stages[[s.name for s in stages].index(stage.name) + 1:]
    price = get_price(spec.model, job_dir=spec.job_dir)
    reserved = sum((plan_stage(spec, other, price).cost.batch_worst for other in later), Decimal(0))
    return Decimal(row["budget_usd"]) - committed_spend(ledger, spec.name, "worst") - reserved


def queued_tokens(ledger: Ledger, model: str) -> int:
    """Input tokens of this model's batches that the provider still holds in its queue (every job)."""
    placeholders = ",".join("?" * len(IN_FLIGHT))
    return int(ledger.scalar(
        f"SELECT coalesce(sum(s.input_tokens), 0) FROM batches b JOIN shards s ON s.id = b.shard_id "
        f"WHERE s.model = ? AND b.status IN ({placeholders})", [model, *IN_FLIGHT]))


def submit_pending(runner: Runner, client: BatchClient, spec: JobSpec, job: dict[str, Any]) -> tuple[int, str | None]:
    """Submit the pending shards that the queue and the budget admit: how many, and why the rest waits."""
    ledger, submitted = runner.ledger, 0
    budget = Decimal(job["budget_usd"]) if job["budget_usd"] is not None else None
    cap = runner.queue_cap(spec, job["backend"])
    column = "max_cost_usd" if runner.budget_mode == "worst" else "est_cost_usd"
    pending = ledger.rows("SELECT * FROM shards WHERE job = ? AND status = 'pending' ORDER BY id", [spec.name])
    if cap is not None and any(s["input_tokens"] > cap for s in pending):
        for shard in pending:
            if shard["input_tokens"] > cap:
                shards.split_shard(ledger, runner.workspace, spec, shard, runner.limits(spec))
        pending = ledger.rows("SELECT * FROM shards WHERE job = ? AND status = 'pending' ORDER BY id", [spec.name])
    for position, shard in enumerate(pending):
        if cap is not None and queued_tokens(ledger, shard["model"]) + shard["input_tokens"] > cap \
                and queued_tokens(ledger, shard["model"]) > 0:
            return submitted, f"queue: {shard['model']} has its {cap:,} queued-token limit in use"
        if budget is not None:
            committed = committed_spend(ledger, spec.name, runner.budget_mode)
            if committed + Decimal(shard[column]) > budget:
                rest = dec_sum(s[column] for s in pending[position:])
                message = (f"Budget ${budget} of job {spec.name!r} reached: ${committed:.6f} committed, "
                           f"${max(budget - committed, Decimal(0)):.6f} left, the remaining {len(pending) - position} "
                           f"shard(s) need up to ${rest:.6f} ({runner.budget_mode} case); raise budget_usd in "
                           "job.toml to go on")
                if not runner.ledger.uncollected_batches(spec.name):
                    raise BudgetExceeded(message)
                return submitted, message
        submit_shard(runner, client, spec, shard)
        submitted += 1
    return submitted, None


def submit_shard(runner: Runner, client: BatchClient, spec: JobSpec, shard: dict[str, Any]) -> None:
    """Intent row, then upload, then create, then record: each step is in the ledger before the next call.

    The idempotency key is in the uploaded file's name and the batch's metadata, so `reconcile` can find what a
    crash or an unanswered create left behind (a pending intent resumes here with its file, if it has one).
    """
    ledger = runner.ledger
    intent = open_intent(ledger, spec.name, shard)
    key = intent["idempotency_key"]
    crash_point("intent")
    file_id = intent["file_id"]
    if not file_id:
        file_id = client.upload(Path(shard["path"]), upload_name(key, shard["path"])).id
        crash_point("upload")
        with ledger.transaction():
            ledger.execute("UPDATE intents SET file_id = ?, updated_utc = ? WHERE id = ?",
                           [file_id, utcnow(), intent["id"]])
    metadata = {"batchgen_job": spec.name, "batchgen_shard": shard["id"], "batchgen_key": key}
    batch = client.create_batch(file_id, spec.endpoint, metadata)
    crash_point("create")
    with ledger.transaction():
        record_batch(ledger, client, spec.name, shard, batch.model_dump(mode="json"), runner.clock())
        ledger.execute("UPDATE intents SET status = 'done', batch_id = ?, updated_utc = ? WHERE id = ?",
                       [batch.id, utcnow(), intent["id"]])


def record_batch(ledger: Ledger, client: BatchClient, job: str, shard: dict[str, Any], batch: dict[str, Any],
                 now: float) -> None:
    ledger.execute(
        "INSERT INTO batches (id, job, shard_id, backend, status, input_file_id, created_at, est_cost_usd, "
        "batch_json, next_poll_utc, submitted_utc, updated_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [batch["id"], job, shard["id"], client.identity, batch["status"], batch["input_file_id"],
         batch["created_at"], shard["est_cost_usd"], json.dumps(batch), str(now), utcnow(), utcnow()])
    ledger.execute("UPDATE shards SET status = 'submitted' WHERE id = ?", [shard["id"]])
    ledger.execute("UPDATE requests SET status = 'submitted', batch_id = ? WHERE shard_id = ?",
                   [batch["id"], shard["id"]])
    ledger.event("submitted", job=job, batch_id=batch["id"], shard=shard["id"], lines=shard["lines"])


# -- poll and collect ----------------------------------------------------------------------------------------


def poll_due(runner: Runner, client: BatchClient, job: str) -> None:
    """Retrieve each unfinished batch whose next poll is due (at most one retrieve per batch per interval)."""
    ledger, now = runner.ledger, runner.clock()
    for row in ledger.rows(f"SELECT id, polls, next_poll_utc FROM batches WHERE job = ? AND {UNFINISHED}", [job]):
        if row["next_poll_utc"] and float(row["next_poll_utc"]) > now:
            continue
        try:
            batch = client.retrieve(row["id"]).model_dump(mode="json")
        except BackendError as error:
            if not is_transient(error):
                raise
            _poll_failed(runner, client, job, row, error)
            continue
        update_batch(runner, client, job, batch, row["polls"] + 1)


def _poll_failed(runner: Runner, client: BatchClient, job: str, row: dict[str, Any], error: BackendError) -> None:
    """A poll that met a transient fault (outage, 429, 5xx): note it and try again after a longer wait."""
    wait = runner.poll_interval(client.backend, "error", row["polls"] + 1) * 2
    with runner.ledger.transaction():
        runner.ledger.execute("UPDATE batches SET polls = polls + 1, next_poll_utc = ? WHERE id = ?",
                              [str(runner.clock() + wait), row["id"]])
        runner.ledger.event("poll_error", job=job, batch_id=row["id"], status_code=error.status_code,
                            message=str(error))


def update_batch(runner: Runner, client: BatchClient, job: str, batch: dict[str, Any], polls: int) -> None:
    counts = batch.get("request_counts") or {}
    wait = runner.poll_interval(client.backend, batch["status"], polls)
    with runner.ledger.transaction():
        old = runner.ledger.scalar("SELECT status FROM batches WHERE id = ?", [batch["id"]])
        runner.ledger.execute(
            "UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?, total = ?, completed = ?, "
            "failed = ?, completed_at = ?, usage_json = ?, batch_json = ?, polls = ?, next_poll_utc = ?, "
            "updated_utc = ? WHERE id = ?",
            [batch["status"], batch.get("output_file_id"), batch.get("error_file_id"), counts.get("total", 0),
             counts.get("completed", 0), counts.get("failed", 0), batch.get("completed_at"),
             json.dumps(batch.get("usage")), json.dumps(batch), polls, str(runner.clock() + wait), utcnow(),
             batch["id"]])
        if old != batch["status"]:
            runner.ledger.event("status", job=job, batch_id=batch["id"], old=old, new=batch["status"])


def collect_ended(runner: Runner, client: BatchClient, spec: JobSpec) -> int:
    ended = runner.ledger.rows(f"SELECT * FROM batches WHERE job = ? AND collected = 0 AND NOT {UNFINISHED} "
                               "ORDER BY submitted_utc", [spec.name])
    for batch in ended:
        collect_batch(runner.ledger, client, runner.workspace, spec, batch)
    return len(ended)


# -- stages and the end --------------------------------------------------------------------------------------


def next_stage_or_finish(runner: Runner, spec: JobSpec, stage: ResolvedStage) -> None:
    ledger = runner.ledger
    if _open_shards(runner, spec, stage) or runner.ledger.uncollected_batches(spec.name):
        return
    row = ledger.job(spec.name)
    names = [s.name for s in spec.resolved_stages()]
    position = names.index(stage.name)
    with ledger.transaction():
        if position + 1 < len(names) and row["status"] == ACTIVE:
            ledger.set_job(spec.name, stage=names[position + 1])
            ledger.event("stage_opened", job=spec.name, stage=names[position + 1])
            crash_point("stage")
            return
    exported = export_job(ledger, spec, runner.workspace.datasets_dir / f"{spec.name}.{spec.format}.jsonl")
    with ledger.transaction():
        if row["status"] == ACTIVE:
            ledger.set_job(spec.name, status="done")
        ledger.event("done", job=spec.name, dataset=str(exported.path), written=exported.written,
                     sha256=exported.sha256)
        crash_point("stage")


def progress(runner: Runner, name: str) -> JobProgress:
    ledger = runner.ledger
    job = ledger.job(name)
    counts = dict(ledger.execute("SELECT status, count(*) FROM batches WHERE job = ? GROUP BY status",
                                 [name]).fetchall())
    requests = ledger.scalar("SELECT count(*) FROM requests WHERE job = ?", [name])
    finished = ledger.scalar("SELECT count(*) FROM results WHERE job = ?", [name])
    valid = ledger.scalar("SELECT count(*) FROM examples WHERE job = ? AND valid = 1", [name])
    spent = dec_sum(r[0] for r in ledger.execute("SELECT cost_usd FROM results WHERE job = ?", [name]))
    exported = dataset(ledger, name)
    pending = ledger.scalar("SELECT count(*) FROM shards WHERE job = ? AND status = 'pending'", [name])
    return JobProgress(name, job["stage"], job["status"], requests, finished, counts, valid_examples=valid,
                       spent_usd=spent, dataset=exported["path"] if exported else None,
                       pending_shards=int(pending) if job["status"] == ACTIVE else 0)
