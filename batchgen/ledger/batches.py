"""Batches: what was submitted, what the provider last said of each batch, when to ask again, and what the
batches in flight hold of the budget and of the provider's queue."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from batchgen.ledger.base import Store, dec_sum, utcnow
from batchgen.ledger.previews import PREVIEW_SPEND
from batchgen.ledger.states import IN_FLIGHT, UNFINISHED

# The shard column that prices a batch in flight, by budget mode: the worst case (every answer at max_tokens) or
# the expected output.
COST_COLUMN = {"worst": "max_cost_usd", "expected": "est_cost_usd"}


class BatchRecords(Store):
    def batch(self, batch_id: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM batches WHERE id = ?", [batch_id])

    def record_batch(self, job: str, shard: dict[str, Any], batch: dict[str, Any], *, backend: str,
                     next_poll: float) -> None:
        """A batch the provider created for a shard: its row, the shard and its requests marked submitted."""
        now = utcnow()
        self._execute(
            "INSERT INTO batches (id, job, shard_id, backend, status, input_file_id, created_at, est_cost_usd, "
            "batch_json, next_poll_utc, submitted_utc, updated_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [batch["id"], job, shard["id"], backend, batch["status"], batch["input_file_id"], batch["created_at"],
             shard["est_cost_usd"], json.dumps(batch), str(next_poll), now, now])
        self._execute("UPDATE shards SET status = 'submitted' WHERE id = ?", [shard["id"]])
        self._execute("UPDATE requests SET status = 'submitted', batch_id = ? WHERE shard_id = ?",
                      [batch["id"], shard["id"]])
        self.event("submitted", job=job, batch_id=batch["id"], shard=shard["id"], lines=shard["lines"])

    def record_poll(self, job: str, batch: dict[str, Any], *, polls: int, next_poll: float) -> None:
        """What the provider said of a batch (its JSON kept whole), and when to ask again; a changed status is an
        event."""
        counts = batch.get("request_counts") or {}
        old = self.scalar("SELECT status FROM batches WHERE id = ?", [batch["id"]])
        self._execute(
            "UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?, total = ?, completed = ?, "
            "failed = ?, completed_at = ?, usage_json = ?, batch_json = ?, polls = ?, next_poll_utc = ?, "
            "updated_utc = ? WHERE id = ?",
            [batch["status"], batch.get("output_file_id"), batch.get("error_file_id"), counts.get("total", 0),
             counts.get("completed", 0), counts.get("failed", 0), batch.get("completed_at"),
             json.dumps(batch.get("usage")), json.dumps(batch), polls, str(next_poll), utcnow(), batch["id"]])
        if old != batch["status"]:
            self.event("status", job=job, batch_id=batch["id"], old=old, new=batch["status"])

    def record_poll_error(self, job: str, batch_id: str, *, next_poll: float, status_code: int | None,
                          message: str) -> None:
        """A poll that met a transient fault: counted, and the next one put off."""
        self._execute("UPDATE batches SET polls = polls + 1, next_poll_utc = ? WHERE id = ?",
                      [str(next_poll), batch_id])
        self.event("poll_error", job=job, batch_id=batch_id, status_code=status_code, message=message)

    def unfinished_batch_rows(self, job: str) -> list[dict[str, Any]]:
        """The job's batches that have not ended, each with its poll count and next poll time."""
        return self.rows(f"SELECT * FROM batches WHERE job = ? AND {UNFINISHED}", [job])

    def ended_uncollected(self, job: str) -> list[dict[str, Any]]:
        """The job's batches that ended and whose results are not recorded yet, oldest submission first."""
        return self.rows(f"SELECT * FROM batches WHERE job = ? AND collected = 0 AND NOT {UNFINISHED} "
                         "ORDER BY submitted_utc", [job])

    def next_poll_due(self, job: str) -> float | None:
        """When the job's next unfinished batch is due for a poll (unix seconds), or None."""
        due = self.scalar(f"SELECT min(CAST(next_poll_utc AS REAL)) FROM batches WHERE job = ? AND {UNFINISHED}",
                          [job])
        return None if due is None else float(due)

    def first_batch_created_at(self, job: str) -> int | None:
        """When the provider created the job's first recorded batch (unix seconds), or None."""
        first = self.scalar("SELECT min(created_at) FROM batches WHERE job = ?", [job])
        return None if first is None else int(first)

    def batch_status_counts(self, job: str) -> dict[str, int]:
        return dict(self._execute("SELECT status, count(*) FROM batches WHERE job = ? GROUP BY status",
                                  [job]).fetchall())

    # -- money, and what batches in flight hold --------------------------------------------------------------
    def spent_usd(self, job: str) -> Decimal:
        """What the job has cost so far: the exact sum of the `cost_usd` of every result recorded for it (successes,
        errors and retried attempts alike), over all its batches and stages. Batches still running add nothing
        until they are collected."""
        return dec_sum(cost for (cost,) in self._execute("SELECT cost_usd FROM results WHERE job = ?", [job]))

    def committed_usd(self, job: str, mode: str = "worst") -> Decimal:
        """Actual cost of what was collected plus the estimate of batches not collected yet (worst case or
        expected), plus what the job's previews cost (at standard price): everything the budget counts."""
        column = COST_COLUMN[mode]
        flying = dec_sum(r[0] for r in self._execute(
            f"SELECT s.{column} FROM batches b JOIN shards s ON s.id = b.shard_id WHERE b.job = ? "
            "AND b.collected = 0", [job]))
        previewed = dec_sum(r[0] for r in self._execute(PREVIEW_SPEND, [job]))
        return self.spent_usd(job) + flying + previewed

    def queued_tokens(self, model: str) -> int:
        """Input tokens of this model's batches that the provider still holds in its queue (every job)."""
        placeholders = ",".join("?" * len(IN_FLIGHT))
        return int(self.scalar(
            f"SELECT coalesce(sum(s.input_tokens), 0) FROM batches b JOIN shards s ON s.id = b.shard_id "
            f"WHERE s.model = ? AND b.status IN ({placeholders})", [model, *IN_FLIGHT]))

    def learn_queue_limit(self, model: str, limit: int) -> None:
        """The queued-token limit the provider named for this model in a token_limit_exceeded failure."""
        self._execute("INSERT INTO queue_limits (model, limit_tokens, learned_utc) VALUES (?, ?, ?) "
                      "ON CONFLICT (model) DO UPDATE SET limit_tokens = excluded.limit_tokens, "
                      "learned_utc = excluded.learned_utc", [model, limit, utcnow()])

    def learned_queue_limit(self, model: str) -> int | None:
        """The queued-token limit the provider last named for this model, if it ever did."""
        learned = self.scalar("SELECT limit_tokens FROM queue_limits WHERE model = ?", [model])
        return int(learned) if learned else None
