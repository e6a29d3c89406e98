"""Jobs: what the ledger knows of each job, and the questions about its shards and batches that decide what a job
does next."""

from __future__ import annotations

from typing import Any

from batchgen.errors import NotFoundError
from batchgen.ledger.base import Store, utcnow
from batchgen.ledger.states import UNFINISHED

JOB_COLUMNS = frozenset({"spec_hash", "spec_json", "job_dir", "status", "stage", "backend", "budget_usd",
                         "blocked_reason"})


class JobRecords(Store):
    def job(self, name: str) -> dict[str, Any]:
        """The job's row; NotFoundError for a job the ledger does not know."""
        row = self.find_job(name)
        if row is None:
            raise NotFoundError(f"No job {name!r} in ledger {self.path}; run 'batchgen jobs list'")
        return row

    def find_job(self, name: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM jobs WHERE name = ?", [name])

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        if status:
            return self.rows("SELECT * FROM jobs WHERE status = ? ORDER BY created_utc", [status])
        return self.rows("SELECT * FROM jobs ORDER BY created_utc")

    def insert_job(self, name: str, *, spec_hash: str, spec_json: str, job_dir: str, status: str, stage: str,
                   backend: str, budget_usd: str | None) -> None:
        now = utcnow()
        self._execute(
            "INSERT INTO jobs (name, spec_hash, spec_json, job_dir, status, stage, backend, budget_usd, "
            "created_utc, updated_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [name, spec_hash, spec_json, job_dir, status, stage, backend, budget_usd, now, now])

    def set_job(self, name: str, **fields: Any) -> None:
        """Update columns of the job's row (NotFoundError for an unknown job, LookupError for an unknown column)."""
        unknown = set(fields) - JOB_COLUMNS
        if unknown:
            raise LookupError(f"jobs has no column {', '.join(sorted(unknown))}")
        fields["updated_utc"] = utcnow()
        assignments = ", ".join(f'"{key}" = ?' for key in fields)
        cursor = self._execute(f"UPDATE jobs SET {assignments} WHERE name = ?", [*fields.values(), name])
        if cursor.rowcount == 0:
            self.job(name)

    # -- unblocking ------------------------------------------------------------------------------------------
    def record_unblock(self, job: str, stage: str, attempt: int, cause: str) -> None:
        """The user has seen the stage's rounds up to `attempt` through (call inside a transaction)."""
        self._execute("INSERT INTO unblocks (job, stage, attempt, cause, at_utc) VALUES (?, ?, ?, ?, ?)",
                      [job, stage, attempt, cause, utcnow()])

    def unblocked_attempt(self, job: str, stage: str) -> int:
        """The stage's latest round when the job was last unblocked (0 if it never was)."""
        return int(self.scalar("SELECT coalesce(max(attempt), 0) FROM unblocks WHERE job = ? AND stage = ?",
                               [job, stage]))

    def latest_attempt(self, job: str, stage: str) -> int:
        return int(self.scalar("SELECT coalesce(max(attempt), 0) FROM requests WHERE job = ? AND stage = ?",
                               [job, stage]))

    # -- what a job ended with --------------------------------------------------------------------------------
    def record_dataset(self, job: str, path: str, examples: int, sha256: str) -> None:
        """The dataset exported when the job finished (the `done` event records it too, as history)."""
        self._execute("UPDATE jobs SET dataset_path = ?, dataset_examples = ?, dataset_sha256 = ?, updated_utc = ? "
                      "WHERE name = ?", [path, examples, sha256, utcnow(), job])

    def dataset(self, job: str) -> dict[str, Any] | None:
        """The dataset exported when the job finished: {"path", "examples", "sha256"}, or None."""
        row = self.one("SELECT dataset_path AS path, dataset_examples AS examples, dataset_sha256 AS sha256 "
                       "FROM jobs WHERE name = ? AND dataset_path IS NOT NULL", [job])
        return row

    def record_shortfall(self, job: str, stage: str, *, target: int, missing: int, top_ups: int,
                         reason: str) -> None:
        """The stage ends below its target, and why ("max_top_ups", "budget", or for embeddings
        "answered": no input is left without an answer); the latest word on the stage."""
        self._execute("INSERT INTO stage_shortfalls (job, stage, target, missing, top_ups, reason, at_utc) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job, stage) DO UPDATE SET target = excluded.target, "
                      "missing = excluded.missing, top_ups = excluded.top_ups, reason = excluded.reason, "
                      "at_utc = excluded.at_utc", [job, stage, target, missing, top_ups, reason, utcnow()])

    def shortfalls(self, job: str) -> list[dict[str, Any]]:
        """Stages that ended below their target: {"stage", "target", "missing", "top_ups", "reason"}."""
        return self.rows("SELECT stage, target, missing, top_ups, reason FROM stage_shortfalls WHERE job = ? "
                         "ORDER BY at_utc, stage", [job])

    # -- the batches a job still has open -------------------------------------------------------
    def unfinished_batches(self, job: str) -> int:
        """Batches of the job that have not ended yet."""
        return int(self.scalar(f"SELECT count(*) FROM batches WHERE job = ? AND {UNFINISHED}", [job]))

    def uncollected_batches(self, job: str) -> int:
        """Batches of the job whose results are not in the ledger yet (running, or ended and not collected)."""
        return int(self.scalar("SELECT count(*) FROM batches WHERE job = ? AND collected = 0", [job]))

    # -- where a job stands ----------------------------------------------------------------------------------
    def request_count(self, job: str) -> int:
        return int(self.scalar("SELECT count(*) FROM requests WHERE job = ?", [job]))

    def result_count(self, job: str) -> int:
        return int(self.scalar("SELECT count(*) FROM results WHERE job = ?", [job]))

    def stage_standings(self, job: str) -> dict[str, dict[str, Any]]:
        """Where each stage of the job stands, in the order its requests were compiled: {"requests" (every
        attempt), "answered" (those with a result, plus what the provider last counted completed or failed in
        batches not collected yet), "batches" (status -> count), "valid_examples"}. A request has a result once
        its status has moved past compiled and submitted, which the requests index answers without a join."""
        standings: dict[str, dict[str, Any]] = {}
        for stage, status, count in self._execute(
                "SELECT stage, status, count(*) FROM requests WHERE job = ? GROUP BY stage, status "
                "ORDER BY min(rowid)", [job]):
            entry = standings.setdefault(stage, {"requests": 0, "answered": 0, "batches": {}, "valid_examples": 0})
            entry["requests"] += count
            entry["answered"] += 0 if status in ("compiled", "submitted") else count
        for stage, status, count, counted in self._execute(
                "SELECT s.stage, b.status, count(*), sum(CASE WHEN b.collected = 0 THEN b.completed + b.failed "
                "ELSE 0 END) FROM batches b JOIN shards s ON s.id = b.shard_id WHERE b.job = ? "
                "GROUP BY s.stage, b.status", [job]):
            if stage in standings:
                standings[stage]["batches"][status] = count
                standings[stage]["answered"] += counted
        for stage, count in self._execute(
                "SELECT stage, count(*) FROM examples WHERE job = ? AND valid = 1 GROUP BY stage", [job]):
            if stage in standings:
                standings[stage]["valid_examples"] = count
        return standings
