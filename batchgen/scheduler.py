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

from batchgen.client import BatchClient, choose_backend
from batchgen.collect import collect_batch
from batchgen.crashpoints import crash_point
from batchgen.compile import compile_stage, read_manifest
from batchgen.errors import BatchgenError, BudgetExceeded, SpecError
from batchgen.ledger import TERMINAL, Ledger, dec_sum, utcnow
from batchgen.reconcile import open_intent, reconcile, upload_name
from batchgen.plan import expected_output_tokens
from batchgen.pricing import get_price
from batchgen.report import export_job
from batchgen.spec import JobSpec, ResolvedStage, load_spec
from batchgen.workspace import Workspace

ACTIVE = "active"


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

    @property
    def done(self) -> bool:
        return self.status != ACTIVE


class Runner:
    """What a tick needs: the ledger, the workspace and (lazily) one Batch API client per backend."""

    def __init__(self, ledger: Ledger, workspace: Workspace, *, backend: str | None = None,
                 clock: Callable[[], float] = time.time):
        self.ledger = ledger
        self.workspace = workspace
        self.backend_flag = backend
        self.clock = clock
        self._clients: dict[str, BatchClient] = {}

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
        if backend == "embedded":
            return 0.25
        base = min(30.0 * (1.5 ** min(polls, 10)), 300.0)
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
    """One pass over the named jobs (default: every active job)."""
    rows = [runner.ledger.job(n) for n in names] if names is not None else runner.ledger.jobs(ACTIVE)
    return [advance(runner, job_spec(runner, row["name"])) for row in rows]


def advance(runner: Runner, spec: JobSpec) -> JobProgress:
    row = runner.ledger.job(spec.name)
    if row["status"] != ACTIVE:
        return progress(runner, spec.name)
    stage = spec.stage(row["stage"])
    ensure_compiled(runner, spec, stage)
    client = runner.client(row["backend"])
    reconcile(runner, client, spec)
    submitted, blocked = submit_pending(runner, client, spec, row)
    poll_due(runner, client, spec.name)
    collected = collect_ended(runner, client, spec)
    next_stage_or_finish(runner, spec, stage)
    result = progress(runner, spec.name)
    result.submitted_now, result.collected_now, result.waiting_for_budget = submitted, collected, blocked
    return result


# -- compile -------------------------------------------------------------------------------------------------


def ensure_compiled(runner: Runner, spec: JobSpec, stage: ResolvedStage) -> None:
    """Compile the stage and record its shards and requests, once."""
    ledger = runner.ledger
    if ledger.scalar("SELECT count(*) FROM shards WHERE job = ? AND stage = ?", [spec.name, stage.name]):
        return
    sources = stage_sources(ledger, spec, stage)
    result = compile_stage(spec, stage, workspace=runner.workspace, sources=sources)
    price = get_price(spec.model, job_dir=spec.job_dir)
    expected = expected_output_tokens(spec, stage)
    with ledger.transaction():
        if ledger.scalar("SELECT count(*) FROM shards WHERE job = ? AND stage = ?", [spec.name, stage.name]):
            return
        for shard in result.shards:
            shard_id = f"{spec.name}/{stage.name}/a{shard.attempt}/{shard.number:05d}"
            est = sum((price.cost(r["input_tokens"], 0, expected) for r in read_manifest(shard.manifest_path)),
                      Decimal(0))
            worst = sum((price.cost(r["input_tokens"], 0, r["max_tokens"]) for r in read_manifest(shard.manifest_path)),
                        Decimal(0))
            ledger.execute(
                "INSERT INTO shards (id, job, stage, attempt, model, path, sha256, lines, bytes, input_tokens, "
                "est_cost_usd, max_cost_usd, status, created_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [shard_id, spec.name, stage.name, shard.attempt, shard.model, shard.path, shard.sha256, shard.lines,
                 shard.bytes, shard.input_tokens, str(est), str(worst), "pending", utcnow()])
            ledger.db.conn.executemany(
                "INSERT INTO requests (custom_id, job, stage, variant, cell_json, shard_id, attempt, input_tokens, "
                "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'compiled')",
                ((r["custom_id"], spec.name, stage.name, r["index"], json.dumps(r["cell"], sort_keys=True),
                  shard_id, r["attempt"], r["input_tokens"]) for r in read_manifest(shard.manifest_path)))
        ledger.event("compiled", job=spec.name, stage=stage.name, shards=len(result.shards),
                     requests=result.requests, input_tokens=result.input_tokens)


def stage_sources(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> list[dict[str, Any]] | None:
    """The valid examples of the stage a `from` stage is compiled from, in a stable order."""
    if stage.source is None:
        return None
    rows = ledger.execute("SELECT content_json FROM examples WHERE job = ? AND stage = ? AND valid = 1 "
                          "ORDER BY custom_id, position", [spec.name, stage.source])
    sources = [json.loads(r[0]) for r in rows]
    if not sources:
        raise BatchgenError(f"Stage {stage.name!r} of job {spec.name!r} has no valid examples of stage "
                            f"{stage.source!r} to start from")
    return sources


# -- submit --------------------------------------------------------------------------------------------------


def committed_spend(ledger: Ledger, job: str) -> Decimal:
    """Actual cost of what was collected plus the worst case of batches still in flight."""
    done = dec_sum(r[0] for r in ledger.execute("SELECT cost_usd FROM results WHERE job = ?", [job]))
    flying = dec_sum(r[0] for r in ledger.execute(
        "SELECT s.max_cost_usd FROM batches b JOIN shards s ON s.id = b.shard_id "
        "WHERE b.job = ? AND b.collected = 0", [job]))
    return done + flying


def submit_pending(runner: Runner, client: BatchClient, spec: JobSpec, job: dict[str, Any]) -> tuple[int, str | None]:
    """Submit every pending shard the budget allows: how many, and the budget message when one had to wait."""
    submitted = 0
    ledger = runner.ledger
    budget = Decimal(job["budget_usd"]) if job["budget_usd"] is not None else None
    for shard in ledger.rows("SELECT * FROM shards WHERE job = ? AND status = 'pending' ORDER BY id", [spec.name]):
        if budget is not None:
            committed = committed_spend(ledger, spec.name)
            need = Decimal(shard["max_cost_usd"])
            if committed + need > budget:
                message = (f"Budget ${budget} of job {spec.name!r}: ${committed:.6f} committed, shard {shard['id']} "
                           f"needs up to ${need:.6f}; raise budget_usd in job.toml to go on")
                in_flight = ledger.scalar("SELECT count(*) FROM batches WHERE job = ? AND collected = 0", [spec.name])
                if not in_flight:
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
            ledger.execute("UPDATE intents SET file_id = ?, updated_utc = ? WHERE id = ?", [file_id, utcnow(), intent["id"]])
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
    placeholders = ",".join("?" * len(TERMINAL))
    for row in ledger.rows(f"SELECT id, polls, next_poll_utc FROM batches WHERE job = ? AND status NOT IN "
                           f"({placeholders})", [job, *TERMINAL]):
        if row["next_poll_utc"] and float(row["next_poll_utc"]) > now:
            continue
        batch = client.retrieve(row["id"]).model_dump(mode="json")
        update_batch(runner, client, job, batch, row["polls"] + 1)


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
    placeholders = ",".join("?" * len(TERMINAL))
    ended = runner.ledger.rows(f"SELECT * FROM batches WHERE job = ? AND collected = 0 AND status IN "
                               f"({placeholders}) ORDER BY submitted_utc", [spec.name, *TERMINAL])
    for batch in ended:
        collect_batch(runner.ledger, client, runner.workspace, spec, batch)
    return len(ended)


# -- stages and the end --------------------------------------------------------------------------------------


def next_stage_or_finish(runner: Runner, spec: JobSpec, stage: ResolvedStage) -> None:
    ledger = runner.ledger
    open_shards = ledger.scalar("SELECT count(*) FROM shards WHERE job = ? AND stage = ? AND status != 'done'",
                                [spec.name, stage.name])
    if open_shards:
        return
    names = [s.name for s in spec.resolved_stages()]
    position = names.index(stage.name)
    with ledger.transaction():
        if position + 1 < len(names):
            ledger.set_job(spec.name, stage=names[position + 1])
            ledger.event("stage_opened", job=spec.name, stage=names[position + 1])
            crash_point("stage")
            return
    exported = export_job(ledger, spec, runner.workspace.datasets_dir / f"{spec.name}.{spec.format}.jsonl")
    with ledger.transaction():
        ledger.set_job(spec.name, status="done")
        ledger.event("done", job=spec.name, dataset=str(exported.path), written=exported.written,
                     sha256=exported.sha256)
        crash_point("stage")


def progress(runner: Runner, name: str) -> JobProgress:
    ledger = runner.ledger
    job = ledger.job(name)
    counts = dict(ledger.execute("SELECT status, count(*) FROM batches WHERE job = ? GROUP BY status", [name]).fetchall())
    requests = ledger.scalar("SELECT count(*) FROM requests WHERE job = ?", [name])
    finished = ledger.scalar("SELECT count(*) FROM results WHERE job = ?", [name])
    valid = ledger.scalar("SELECT count(*) FROM examples WHERE job = ? AND valid = 1", [name])
    spent = dec_sum(r[0] for r in ledger.execute("SELECT cost_usd FROM results WHERE job = ?", [name]))
    dataset = None
    if job["status"] == "done":
        dataset = ledger.scalar("SELECT json_extract(detail_json, '$.dataset') FROM events WHERE job = ? AND "
                                "kind = 'done' ORDER BY id DESC LIMIT 1", [name])
    return JobProgress(name, job["stage"], job["status"], requests, finished, counts, valid_examples=valid,
                       spent_usd=spent, dataset=dataset)
