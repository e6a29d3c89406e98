"""Comparisons: what `batchgen compare` asks of each job, stage by stage (requests answered, examples by verdict,
cost) and of its batches (how long they took)."""

from __future__ import annotations

from decimal import Decimal

from batchgen.ledger.base import Store


class ComparisonQueries(Store):
    def answered_requests_by_stage(self, job: str) -> dict[str, int]:
        """Requests of the job that have their outcome (every attempt, answered or failed), by stage: what was
        asked of the model."""
        return {stage: int(count) for stage, count in self._execute(
            "SELECT r.stage, count(*) FROM results s JOIN requests r ON r.custom_id = s.custom_id "
            "WHERE s.job = ? GROUP BY r.stage", [job])}

    def example_verdicts_by_stage(self, job: str) -> dict[str, dict[str | None, int]]:
        """The examples found in the job's answers (not the answers that held none), by stage and verdict:
        {stage: {None: valid, "duplicate": n, ...}} with each rejection under its category."""
        counts: dict[str, dict[str | None, int]] = {}
        for stage, valid, category, count in self._execute(
                "SELECT stage, valid, category, count(*) FROM examples WHERE job = ? AND position >= 0 "
                "GROUP BY stage, valid, category", [job]):
            counts.setdefault(stage, {})[None if valid else category] = int(count)
        return counts

    def cost_by_stage(self, job: str) -> dict[str, Decimal]:
        """The exact cost of the job's results, by stage: each result's decimal text added as Decimal."""
        costs: dict[str, Decimal] = {}
        for stage, cost in self._execute(
                "SELECT r.stage, s.cost_usd FROM results s JOIN requests r ON r.custom_id = s.custom_id "
                "WHERE s.job = ?", [job]):
            costs[stage] = costs.get(stage, Decimal(0)) + Decimal(cost)
        return costs

    def batch_span(self, job: str) -> tuple[int | None, int | None]:
        """When the job's first batch was created and its last one completed, as the provider says (unix time);
        None for what has not happened."""
        row = self._execute("SELECT min(created_at), max(completed_at) FROM batches WHERE job = ?", [job]).fetchone()
        return row[0], row[1]
