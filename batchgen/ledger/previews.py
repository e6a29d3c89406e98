"""Previews: the requests `batchgen preview` sent synchronously before a run, and what they cost.

Preview spend is kept apart from batch spend (the `results` table), at the standard price the synchronous endpoint
charges; the budget guard counts both (`BatchRecords.committed_usd` adds PREVIEW_SPEND).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from batchgen.ledger.base import Store, dec_sum, utcnow

# The cost of every preview request of a job (one parameter: the job), for the sums of both record classes.
PREVIEW_SPEND = "SELECT cost_usd FROM previews WHERE job = ?"


class PreviewRecords(Store):
    def record_preview(self, job: str, rows: Iterable[dict[str, Any]]) -> int:
        """Record one preview of the job (call inside a transaction): a row per answered request, with the keys
        stage, variant, cell_json, backend, model, finish_reason, the four token counts, cost_usd, priced_by,
        examples and valid. Returns the preview's number (1 for the job's first)."""
        number = int(self.scalar("SELECT coalesce(max(run), 0) + 1 FROM previews WHERE job = ?", [job]))
        now = utcnow()
        self.db.conn.executemany(
            "INSERT INTO previews (job, run, stage, variant, cell_json, backend, model, finish_reason, prompt_tokens, "
            "cached_tokens, completion_tokens, reasoning_tokens, cost_usd, priced_by, examples, valid, at_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(job, number, r["stage"], r["variant"], r["cell_json"], r["backend"], r["model"], r["finish_reason"],
              r["prompt_tokens"], r["cached_tokens"], r["completion_tokens"], r["reasoning_tokens"], r["cost_usd"],
              r["priced_by"], r["examples"], r["valid"], now) for r in rows])
        return number

    def preview_spent_usd(self, job: str) -> Decimal:
        """What the job's previews cost, at standard price: the exact sum of their `cost_usd`."""
        return dec_sum(cost for (cost,) in self._execute(PREVIEW_SPEND, [job]))

    def preview_totals(self, job: str) -> dict[str, Any]:
        """The job's previews together: {"previews", "requests", "examples", "valid", "tokens" {"prompt",
        "cached", "completion", "reasoning"}, "cost_usd", "backends" (where they were sent)}."""
        row = self.one(
            "SELECT count(DISTINCT run) AS previews, count(*) AS requests, coalesce(sum(examples), 0) AS examples, "
            "coalesce(sum(valid), 0) AS valid, coalesce(sum(prompt_tokens), 0) AS prompt, "
            "coalesce(sum(cached_tokens), 0) AS cached, coalesce(sum(completion_tokens), 0) AS completion, "
            "coalesce(sum(reasoning_tokens), 0) AS reasoning FROM previews WHERE job = ?", [job])
        assert row is not None  # an aggregate always has a row
        backends = [b for (b,) in self._execute("SELECT DISTINCT backend FROM previews WHERE job = ? ORDER BY 1",
                                                [job])]
        return {"previews": int(row["previews"]), "requests": int(row["requests"]),
                "examples": int(row["examples"]), "valid": int(row["valid"]),
                "tokens": {name: int(row[name]) for name in ("prompt", "cached", "completion", "reasoning")},
                "cost_usd": self.preview_spent_usd(job), "backends": backends}

    def preview_costs(self) -> list[dict[str, Any]]:
        """Every preview request with its usage and cost (for `ledger check`): id, job, model, prompt_tokens,
        cached_tokens, completion_tokens, cost_usd, priced_by."""
        return self.rows("SELECT id, job, model, prompt_tokens, cached_tokens, completion_tokens, cost_usd, priced_by "
                         "FROM previews ORDER BY id")
