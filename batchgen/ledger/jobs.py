"""Jobs: what the ledger knows of each job, and the questions about its shards and batches that decide what a job
does next."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from batchgen.errors import NotFoundError
from batchgen.ledger.base import Store, utcnow
from batchgen.ledger.states import UNFINISHED
from batchgen.recipe.pricing import ModelPrice, PriceFile, get_price, is_loopback_url

JOB_COLUMNS = frozenset({"spec_hash", "spec_json", "job_dir", "status", "stage", "backend", "budget_usd",
                         "blocked_reason"})


@dataclass(frozen=True)
class JobFiles:
    """What collect needs of a job directory besides the spec (kept in `jobs.spec_json`): the seed examples (to
    reject copies of them) and the job's price file. The ledger keeps them for when the directory is gone."""

    seeds: tuple[dict[str, Any], ...]
    price_file: PriceFile | None
    checks: dict[str, str] = field(default_factory=dict)  # the rule hooks' files (as the job names them) -> text

    def to_json(self) -> str:
        price = None if self.price_file is None else {"origin": self.price_file.origin, "text": self.price_file.text}
        data: dict[str, Any] = {"seeds": list(self.seeds), "price_file": price}
        if self.checks:
            data["checks"] = self.checks
        return json.dumps(data, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> JobFiles:
        data = json.loads(text)
        price = data["price_file"]
        return cls(tuple(data["seeds"]), None if price is None else PriceFile(price["origin"], price["text"]),
                   dict(data.get("checks") or {}))


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
    def job_with_dir(self, job_dir: str) -> dict[str, Any] | None:
        """The job last registered from this job directory (its absolute path), if any."""
        return self.one("SELECT * FROM jobs WHERE job_dir = ? ORDER BY created_utc DESC LIMIT 1", [job_dir])

    # -- where the job directory is, and what the ledger keeps of it -------------------------------------------
    def keep_job_dir(self, name: str, *, job_dir: str, relative: str | None, files: JobFiles) -> bool:
        """Record where the job directory was found and what collect needs of it; whether anything changed."""
        cursor = self._execute(
            "UPDATE jobs SET job_dir = ?, job_dir_relative = ?, job_files_json = ?, updated_utc = ? WHERE name = ? "
            "AND (job_dir IS NOT ? OR job_dir_relative IS NOT ? OR job_files_json IS NOT ?)",
            [job_dir, relative, files.to_json(), utcnow(), name, job_dir, relative, files.to_json()])
        return cursor.rowcount > 0

    def job_files(self, name: str) -> JobFiles | None:
        """What the ledger kept of the job directory; None if nothing (a job last read by an older batchgen)."""
        kept = self.scalar("SELECT job_files_json FROM jobs WHERE name = ?", [name])
        return None if kept is None else JobFiles.from_json(kept)

    def job_price(self, name: str, model: str) -> ModelPrice:
        """The price the job's results of `model` are charged at: with the job's price file as the ledger kept it,
        else as its directory holds it; nothing on a backend the job marks free (PricingError when none is known)."""
        row = self.job(name)
        free = bool(json.loads(row["spec_json"]).get("free"))
        local = self.job_served_locally(name)
        kept = self.job_files(name)
        if kept is not None:
            return get_price(model, price_file=kept.price_file, free=free, local=local)
        return get_price(model, job_dir=row["job_dir"], free=free, local=local)

    def job_price_sources(self, name: str) -> list[str]:
        """Where the prices of the job's collected results came from (`batchgen show`)."""
        return [source for (source,) in self._execute(
            "SELECT DISTINCT priced_by FROM results WHERE job = ? AND priced_by IS NOT NULL ORDER BY 1", [name])]

    def job_served_locally(self, name: str) -> bool:
        """Whether everything the job sent (batches, previews) went to a server on this machine other than the
        embedded emulator (`openai:<loopback base URL>`), so its tokens were priced free where they were collected."""
        sent = [backend for (backend,) in self._execute(
            "SELECT backend FROM batches WHERE job = ? UNION SELECT backend FROM previews WHERE job = ?", [name, name])]
        return bool(sent) and all(backend != "embedded" and is_loopback_url(backend.partition(":")[2])
                                  for backend in sent)

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

    def record_cell_shortfalls(self, job: str, stage: str, cells: list[dict[str, Any]], *, top_ups: int,
                               reason: str) -> None:
        """The stage's cells that end below their share ({"cell_json", "share", "valid", "requests"} each), and
        why; they replace what the stage recorded before (none: it has no cell short any more). Call inside a
        transaction."""
        self._execute("DELETE FROM cell_shortfalls WHERE job = ? AND stage = ?", [job, stage])
        now = utcnow()
        self.db.conn.executemany(
            "INSERT INTO cell_shortfalls (job, stage, cell_json, share, valid, requests, top_ups, reason, at_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((job, stage, c["cell_json"], c["share"], c["valid"], c["requests"], top_ups, reason, now)
             for c in cells))

    def cell_shortfalls(self, job: str, stage: str | None = None) -> list[dict[str, Any]]:
        """Cells that ended below their share: {"stage", "cell" (decoded), "share", "valid", "requests",
        "top_ups", "reason"}, stage by stage in the order they ended."""
        where, params = ("AND stage = ?", [job, stage]) if stage is not None else ("", [job])
        rows = self.rows(f"SELECT stage, cell_json, share, valid, requests, top_ups, reason FROM cell_shortfalls "
                         f"WHERE job = ? {where} ORDER BY at_utc, stage, rowid", params)
        return [{"stage": r["stage"], "cell": json.loads(r["cell_json"]),
                 **{k: r[k] for k in ("share", "valid", "requests", "top_ups", "reason")}} for r in rows]

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
