"""Reports: the questions `show`, `status`, `report` and `ledger reconcile` ask of a job's records.

Every answer is a plain value (ints, dicts, tuples, exact Decimal money); the report objects are built by
`batchgen.dataset.report` and `batchgen.run.reconcile`.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from decimal import Decimal
from typing import Any, NamedTuple

from batchgen.ledger.base import NOT_REJECTED_BY_REVIEW, Store, dec_sum

# The events that count as faults in a job's status: transient errors while polling or ticking, and batches the
# API refused.
FAULT_EVENTS = ("poll_error", "tick_error", "batch_failed")


class ValidExample(NamedTuple):
    """A valid example with what its provenance needs: the request it came from and the model that wrote it."""

    content: dict[str, Any]  # the example as stored (in the job's format), decoded from its JSON
    custom_id: str
    position: int  # index of the example inside its response
    cell: dict[str, Any]  # the variant cell of the request, decoded
    content_hash: str | None
    batch_id: str | None
    attempt: int
    model: str
    parent: str | None = None  # "custom_id#position" or "seed:<i>" (see batchgen.dataset.lineage)
    root: str | None = None


class CellCount(NamedTuple):
    """One variant cell of a stage: its requests (each variant once, whatever its attempts), the examples their
    answers held, and how many of those were valid."""

    stage: str
    cell: dict[str, Any]
    requests: int
    generated: int
    valid: int


class ReportQueries(Store):
    # -- a job's dataset and quality -----------------------------------------------------------------------
    def valid_examples_for_export(self, job: str, stage: str,
                                  limit: int | None = None) -> Generator[ValidExample, None, None]:
        """The first `limit` (None: all) valid examples of a stage, in variant order (then attempt, then position
        in the response), leaving out those a reviewer rejected: what an export chooses from. Read lazily, so a
        large stage is never held in memory."""
        cursor = self._execute(
            "SELECT e.content_json, e.custom_id, e.position, r.cell_json, e.content_hash, r.batch_id, r.attempt, "
            "s.model, e.parent, e.root FROM examples e JOIN requests r ON r.custom_id = e.custom_id "
            "JOIN shards s ON s.id = r.shard_id "
            f"WHERE e.job = ? AND e.stage = ? AND e.valid = 1 AND {NOT_REJECTED_BY_REVIEW} "
            "ORDER BY r.variant, r.attempt, e.position LIMIT ?",
            [job, stage, -1 if limit is None else limit])
        for content, custom_id, position, cell, digest, batch_id, attempt, model, parent, root in cursor:
            yield ValidExample(json.loads(content), custom_id, position, json.loads(cell), digest, batch_id,
                               attempt, model, parent, root)

    def lineage_by_stage(self, job: str) -> dict[str, dict[str, int]]:
        """Per stage, its valid examples: how many (`valid`), how many know their parent (`with_parent`) and how
        many their root seed (`with_root`, a root that is a seed)."""
        return {stage: {"valid": int(valid), "with_parent": int(parents), "with_root": int(roots)}
                for stage, valid, parents, roots in self._execute(
                    "SELECT stage, count(*), count(parent), sum(root LIKE 'seed:%') FROM examples "
                    "WHERE job = ? AND valid = 1 GROUP BY stage ORDER BY min(id)", [job])}

    def cell_counts(self, job: str) -> list[CellCount]:
        """Per stage and variant cell, in the order they were first compiled: requests, examples, valid ones.

        The examples are summed per request first (through their job index; examples has no index on custom_id),
        then joined to the requests: one pass over each table, not one over the examples per request."""
        return [CellCount(stage, json.loads(cell), int(requests), int(generated), int(valid))
                for stage, cell, requests, generated, valid in self._execute(
                    "SELECT r.stage, r.cell_json, count(DISTINCT r.variant), coalesce(sum(e.n), 0), "
                    "coalesce(sum(e.valid), 0) FROM requests r LEFT JOIN (SELECT custom_id, count(*) AS n, "
                    "sum(valid) AS valid FROM examples WHERE job = ? GROUP BY custom_id) e "
                    "ON e.custom_id = r.custom_id WHERE r.job = ? GROUP BY r.stage, r.cell_json "
                    "ORDER BY min(r.rowid)", [job, job])]

    def valid_example_contents(self, job: str) -> Generator[tuple[str, dict[str, Any]], None, None]:
        """Every valid example of the job as (stage, content decoded from its JSON), in no particular order: what
        `report` measures the texts of. Read lazily, so a large job is never held in memory."""
        for stage, content in self._execute(
                "SELECT stage, content_json FROM examples WHERE job = ? AND valid = 1", [job]):
            yield stage, json.loads(content)

    def rejections_by_cell(self, job: str) -> dict[str, dict[str, dict[str, int]]]:
        """The job's rejections by stage, variant cell (`requests.cell_json`) and category: {stage: {cell: {category:
        n}}}, the most frequent category first. A response that held no example counts once, under its
        response-level category (as `example_counts_by_reason` counts it)."""
        found: dict[str, dict[str, dict[str, int]]] = {}
        for stage, cell, category, count in self._execute(
                "SELECT e.stage, r.cell_json, e.category, count(*) FROM examples e JOIN requests r "
                "ON r.custom_id = e.custom_id WHERE e.job = ? AND e.valid = 0 GROUP BY 1, 2, 3 "
                "ORDER BY 4 DESC, 3", [job]):
            found.setdefault(stage, {}).setdefault(cell, {})[category] = int(count)
        return found

    def example_counts_by_reason(self, job: str) -> list[tuple[bool, str | None, str | None, int]]:
        """How many examples the job generated, as (valid, category, reason, count): one row for the valid ones
        (category and reason None), one per rejection category and reason."""
        return [(bool(valid), category, reason, int(count)) for valid, category, reason, count in self._execute(
            "SELECT valid, category, reason, count(*) FROM examples WHERE job = ? GROUP BY valid, category, reason",
            [job])]

    # -- a job's requests and what went wrong --------------------------------------------------------------
    def request_outcomes(self, job: str) -> dict[str, int]:
        """The job's requests by status (succeeded, invalid, retried, ...), in status order."""
        return {status: int(count) for status, count in self._execute(
            "SELECT status, count(*) FROM requests WHERE job = ? GROUP BY status ORDER BY status", [job])}

    def failure_codes(self, job: str) -> dict[str, int]:
        """Results that are not successes, by error code (e.g. rate_limit_exceeded, batch_expired, missing; an
        error without a code counts as http_<status>), the most frequent first."""
        return {code: int(count) for code, count in self._execute(
            "SELECT coalesce(error_code, 'http_' || status_code, source), count(*) FROM results "
            "WHERE job = ? AND source != 'output' GROUP BY 1 ORDER BY 2 DESC, 1", [job])}

    def fault_counts(self, job: str) -> dict[str, int]:
        """Transient faults met while polling or ticking, and batches the API refused, by event kind."""
        marks = ", ".join("?" for _ in FAULT_EVENTS)
        return {kind: int(count) for kind, count in self._execute(
            f"SELECT kind, count(*) FROM events WHERE job = ? AND kind IN ({marks}) GROUP BY kind ORDER BY kind",
            [job, *FAULT_EVENTS])}

    # -- money and tokens ----------------------------------------------------------------------------------
    def token_totals(self, job: str) -> dict[str, int]:
        """The tokens of every result of the job: {"prompt", "cached", "completion", "reasoning"}."""
        row = self.one("SELECT coalesce(sum(prompt_tokens), 0) AS prompt, coalesce(sum(cached_tokens), 0) AS cached, "
                       "coalesce(sum(completion_tokens), 0) AS completion, "
                       "coalesce(sum(reasoning_tokens), 0) AS reasoning FROM results WHERE job = ?", [job])
        assert row is not None  # an aggregate always has a row
        return {name: int(value) for name, value in row.items()}

    def estimated_usd(self, job: str) -> Decimal:
        """What the job's shards were expected to cost at batch price: the exact sum of their `est_cost_usd`."""
        return dec_sum(cost for (cost,) in self._execute("SELECT est_cost_usd FROM shards WHERE job = ?", [job]))

    # -- batches -------------------------------------------------------------------------------------------
    def batch_list(self, job: str | None = None) -> list[dict[str, Any]]:
        """Every batch row (of `job`, or of all jobs), in the order they were submitted."""
        if job:
            return self.rows("SELECT * FROM batches WHERE job = ? ORDER BY submitted_utc", [job])
        return self.rows("SELECT * FROM batches ORDER BY submitted_utc")

    def batches_with_model(self, job: str | None = None) -> list[dict[str, Any]]:
        """Every batch row (of `job`, or of all jobs) in submission order, with the `model` of its shard."""
        where, params = ("WHERE b.job = ?", [job]) if job else ("", [])
        return self.rows(f"SELECT b.*, s.model FROM batches b JOIN shards s ON s.id = b.shard_id {where} "
                         "ORDER BY b.submitted_utc", params)

    def recorded_batch_ids(self) -> set[str]:
        """The ids of every batch the ledger has recorded, of any job."""
        return {batch_id for (batch_id,) in self._execute("SELECT id FROM batches")}

    def job_backends(self, job: str | None = None) -> set[str]:
        """The backend names ("embedded", "openai", "azure") the job (or every job) was registered with (a batch
        records the identity of the endpoint it went to instead: see `batches_with_model`)."""
        if job:
            return {backend for (backend,) in self._execute("SELECT DISTINCT backend FROM jobs WHERE name = ?",
                                                            [job])}
        return {backend for (backend,) in self._execute("SELECT DISTINCT backend FROM jobs")}

    def requests_sent(self, batch_id: str) -> int:
        """How many requests the ledger sent in the batch."""
        return int(self.scalar("SELECT count(*) FROM requests WHERE batch_id = ?", [batch_id]))

    def output_results(self, batch_id: str) -> int:
        """How many of the batch's results came from its output file (not from the error file, not missing)."""
        return int(self.scalar("SELECT count(*) FROM results WHERE batch_id = ? AND source = 'output'", [batch_id]))

    def batch_token_sums(self, batch_id: str) -> tuple[int, int, int]:
        """The tokens of the batch's results: (input, cached input, output)."""
        row = self._execute("SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(cached_tokens), 0), "
                            "coalesce(sum(completion_tokens), 0) FROM results WHERE batch_id = ?",
                            [batch_id]).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def batch_result_usage(self, batch_id: str) -> list[tuple[int, int, int, str, str | None]]:
        """Each answered result of the batch: (prompt, cached, completion tokens, cost_usd, priced_by)."""
        return [tuple(row) for row in self._execute(
            "SELECT prompt_tokens, cached_tokens, completion_tokens, cost_usd, priced_by FROM results "
            "WHERE batch_id = ? AND source = 'output'", [batch_id])]

    def batch_spent_usd(self, batch_id: str) -> Decimal:
        """The exact sum of the `cost_usd` of the batch's results (what a collected batch's `actual_cost_usd`
        should be)."""
        return dec_sum(cost for (cost,) in self._execute("SELECT cost_usd FROM results WHERE batch_id = ?",
                                                         [batch_id]))

    # -- submissions ---------------------------------------------------------------------------------------
    def submission_keys(self, job: str | None = None) -> dict[str, str]:
        """The idempotency key of every submission intent (of `job`, or of all jobs), with the job it belongs to."""
        if job:
            return {key: name for key, name in self._execute(
                "SELECT idempotency_key, job FROM intents WHERE job = ?", [job])}
        return {key: name for key, name in self._execute("SELECT idempotency_key, job FROM intents")}
