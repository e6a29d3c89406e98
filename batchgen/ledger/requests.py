"""Shards and requests: what was compiled, what each request became, and what a stage still needs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from batchgen.errors import NotFoundError
from batchgen.ledger.base import NOT_REJECTED_BY_REVIEW, Store, utcnow

if TYPE_CHECKING:  # a type only: opening the ledger need not load the compiler
    from batchgen.recipe.compile import ShardInfo


class RequestRecords(Store):
    # -- shards --------------------------------------------------------------------------------------------
    def shard(self, shard_id: str) -> dict[str, Any]:
        row = self.find_shard(shard_id)
        if row is None:
            raise NotFoundError(f"No shard {shard_id!r} in ledger {self.path}")
        return row

    def find_shard(self, shard_id: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM shards WHERE id = ?", [shard_id])

    def pending_shards(self, job: str) -> list[dict[str, Any]]:
        """The job's shards waiting to be submitted, in the order they were compiled."""
        return self.rows("SELECT * FROM shards WHERE job = ? AND status = 'pending' ORDER BY id", [job])

    def pending_shard_count(self, job: str) -> int:
        return int(self.scalar("SELECT count(*) FROM shards WHERE job = ? AND status = 'pending'", [job]))

    def stage_has_shards(self, job: str, stage: str) -> bool:
        """Whether the stage's first attempt has been compiled and recorded."""
        return bool(self.scalar("SELECT count(*) FROM shards WHERE job = ? AND stage = ?", [job, stage]))

    def open_shards(self, job: str, stage: str) -> int:
        """Shards of the stage still pending or submitted."""
        return int(self.scalar("SELECT count(*) FROM shards WHERE job = ? AND stage = ? AND status IN "
                               "('pending', 'submitted')", [job, stage]))

    def add_shard(self, shard_id: str, job: str, stage: str, shard: ShardInfo, est_cost_usd: Decimal,
                  max_cost_usd: Decimal, path: str, *, basis: str = "prior", output_tokens: int | None = None,
                  template_digest: str | None = None) -> None:
        """A pending shard row for a compiled shard, priced expected and worst case; `path` is its file as the
        ledger records it (relative to the workspace, see `Workspace.stored`); `basis` (prior or learned) and
        `output_tokens` the estimate its expected cost assumed, `template_digest` what it was rendered from."""
        self._execute(
            "INSERT INTO shards (id, job, stage, attempt, model, path, sha256, lines, bytes, input_tokens, "
            "est_cost_usd, max_cost_usd, status, created_utc, estimate_basis, est_output_tokens, template_digest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [shard_id, job, stage, shard.attempt, shard.model, path, shard.sha256, shard.lines, shard.bytes,
             shard.input_tokens, str(est_cost_usd), str(max_cost_usd), "pending", utcnow(), basis, output_tokens,
             template_digest])

    def set_shard_status(self, shard_id: str, status: str) -> None:
        self._execute("UPDATE shards SET status = ? WHERE id = ?", [status, shard_id])

    def requeue_shard(self, shard_id: str) -> str:
        """A new pending shard record for the same file, taking over the shard's requests (inside a transaction);
        the new shard's id (`<id>~<n>`)."""
        base = shard_id.split("~", 1)[0]
        tries = int(self.scalar("SELECT count(*) FROM shards WHERE id = ? OR id LIKE ?", [base, base + "~%"]))
        new_id = f"{base}~{tries}"
        self._execute(
            "INSERT INTO shards (id, job, stage, attempt, model, path, sha256, lines, bytes, input_tokens, "
            "est_cost_usd, max_cost_usd, status, created_utc, estimate_basis, est_output_tokens, template_digest) "
            "SELECT ?, job, stage, attempt, model, path, sha256, lines, bytes, input_tokens, est_cost_usd, "
            "max_cost_usd, 'pending', ?, estimate_basis, est_output_tokens, template_digest FROM shards WHERE id = ?",
            [new_id, utcnow(), shard_id])
        self._execute("UPDATE shards SET status = 'requeued' WHERE id = ?", [shard_id])
        self._execute("UPDATE requests SET shard_id = ?, status = 'compiled', batch_id = NULL WHERE shard_id = ?",
                      [new_id, shard_id])
        return new_id

    # -- requests ------------------------------------------------------------------------------------------
    def add_requests(self, job: str, stage: str, shard_id: str, manifest: Iterable[dict[str, Any]]) -> None:
        """One compiled request row per manifest line of the shard; its cell as `recipe.variants.cell_key` writes
        it (JSON, keys sorted), which coverage by cell matches against; its candidate parents (`parents`:
        [[key, root], ...]) when the line has them."""
        self.db.conn.executemany(
            "INSERT INTO requests (custom_id, job, stage, variant, cell_json, shard_id, attempt, input_tokens, "
            "status, parents_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'compiled', ?)",
            ((r["custom_id"], job, stage, r["index"], json.dumps(r["cell"], sort_keys=True), shard_id,
              r["attempt"], r["input_tokens"], json.dumps(r["parents"]) if r.get("parents") else None)
             for r in manifest))

    def move_requests(self, shard_id: str, custom_ids: Iterable[str]) -> None:
        """Hand the requests over to another shard (a part of the shard they were split from)."""
        self.db.conn.executemany("UPDATE requests SET shard_id = ? WHERE custom_id = ?",
                                 ((shard_id, cid) for cid in custom_ids))

    def shard_custom_ids(self, shard_id: str) -> list[str]:
        """The custom_id of each request of the shard."""
        return [r[0] for r in self._execute("SELECT custom_id FROM requests WHERE shard_id = ?", [shard_id])]

    def request_variants(self, custom_ids: Iterable[str]) -> dict[str, int]:
        """custom_id -> its variant index, of these requests."""
        return {custom_id: int(variant) for custom_id, variant in self._execute(
            "SELECT custom_id, variant FROM requests WHERE custom_id IN (SELECT value FROM json_each(?))",
            [json.dumps(list(custom_ids))])}

    def shard_variants(self, shard_id: str) -> list[int]:
        """The variant index of each request of the shard."""
        return [r[0] for r in self._execute("SELECT variant FROM requests WHERE shard_id = ?", [shard_id])]

    def next_attempt(self, job: str, stage: str) -> int:
        """The attempt number after the stage's latest (the stage has requests)."""
        return int(self.scalar("SELECT max(attempt) FROM requests WHERE job = ? AND stage = ?", [job, stage])) + 1

    def highest_variant(self, job: str, stage: str) -> int | None:
        """The largest variant index the stage has requested (None: no requests)."""
        last = self.scalar("SELECT max(variant) FROM requests WHERE job = ? AND stage = ?", [job, stage])
        return None if last is None else int(last)

    def largest_prompt(self, job: str, stage: str) -> int:
        """The most input tokens of any request of the stage (0: none)."""
        return int(self.scalar("SELECT max(input_tokens) FROM requests WHERE job = ? AND stage = ?",
                               [job, stage]) or 0)

    def top_up_rounds(self, job: str, stage: str, first_top_up_variant: int) -> int:
        """How many top-up rounds the stage had: distinct first attempts of the variants past its planned ones."""
        return int(self.scalar(
            "SELECT count(DISTINCT first) FROM (SELECT min(attempt) AS first FROM requests WHERE job = ? AND "
            "stage = ? AND variant >= ? GROUP BY variant)", [job, stage, first_top_up_variant]))

    def cell_standings(self, job: str, stage: str, *, exported: bool = False) -> dict[str, dict[str, int]]:
        """Each axis cell of the stage (by `requests.cell_json`) with the requests sent for it, every attempt, and
        its valid examples: {"requests", "valid"}. The question coverage by cell, and a top-up, ask. `exported`:
        count only the valid examples an export may write (not those a reviewer rejected)."""
        standings = {cell: {"requests": int(n), "valid": 0} for cell, n in self._execute(
            "SELECT cell_json, count(*) FROM requests WHERE job = ? AND stage = ? GROUP BY cell_json", [job, stage])}
        reviewed = f" AND {NOT_REJECTED_BY_REVIEW}" if exported else ""
        for cell, n in self._execute(
                "SELECT r.cell_json, count(*) FROM examples e JOIN requests r ON r.custom_id = e.custom_id "
                f"WHERE e.job = ? AND e.stage = ? AND e.valid = 1{reviewed} GROUP BY r.cell_json", [job, stage]):
            standings.setdefault(cell, {"requests": 0, "valid": 0})["valid"] = int(n)
        return standings

    def source_examples(self, job: str, stage: str) -> list[dict[str, Any]]:
        """The stage's valid examples in canonical order (variant, attempt, position): what a `from` stage
        compiles from."""
        rows = self._execute(
            "SELECT e.content_json FROM examples e JOIN requests r ON r.custom_id = e.custom_id "
            "WHERE e.job = ? AND e.stage = ? AND e.valid = 1 ORDER BY r.variant, r.attempt, e.position",
            [job, stage])
        return [json.loads(r[0]) for r in rows]

    def source_lineage(self, job: str, stage: str) -> list[tuple[dict[str, Any], str, str | None, dict[str, Any]]]:
        """The stage's valid examples in the order of `source_examples`, each as (content, key "custom_id#position",
        root, cell of its request): what a `from` stage needs to give its children their parents and cells."""
        rows = self._execute(
            "SELECT e.content_json, e.custom_id, e.position, e.root, r.cell_json FROM examples e JOIN requests r "
            "ON r.custom_id = e.custom_id WHERE e.job = ? AND e.stage = ? AND e.valid = 1 "
            "ORDER BY r.variant, r.attempt, e.position", [job, stage])
        return [(json.loads(content), f"{custom_id}#{position}", root, json.loads(cell))
                for content, custom_id, position, root, cell in rows]

    def source_cells(self, job: str, stage: str) -> list[dict[str, Any]]:
        """The cell of each of the stage's valid examples, in the order of `source_examples`: the cells an evolved
        stage's requests keep, which coverage by cell counts against."""
        rows = self._execute(
            "SELECT r.cell_json FROM examples e JOIN requests r ON r.custom_id = e.custom_id "
            "WHERE e.job = ? AND e.stage = ? AND e.valid = 1 ORDER BY r.variant, r.attempt, e.position",
            [job, stage])
        return [json.loads(r[0]) for r in rows]

    # -- what retries need -----------------------------------------------------------------------------------
    def latest_requests(self, job: str, stage: str) -> list[dict[str, Any]]:
        """Each request of the stage not yet retried (the latest of its variant), with its result's status_code
        and error_code: custom_id, variant, status, batch_id, status_code, error_code."""
        return self.rows(
            "SELECT r.custom_id, r.variant, r.status, r.batch_id, s.status_code, s.error_code FROM requests r "
            "LEFT JOIN results s ON s.custom_id = r.custom_id WHERE r.job = ? AND r.stage = ? AND "
            "r.status != 'retried'", [job, stage])

    def batches_that_ran(self, job: str) -> set[str]:
        """Batches of the job that ran at least one line (a result neither missing nor expired/cancelled)."""
        return {row[0] for row in self._execute(
            "SELECT DISTINCT batch_id FROM results WHERE job = ? AND source != 'missing' AND (error_code IS NULL OR "
            "error_code NOT IN ('batch_expired', 'batch_cancelled'))", [job])}

    def ended_attempts(self, job: str, stage: str) -> list[tuple[int, str | None, str | None]]:
        """(variant, batch_id, result error_code) of each request of the stage that was retried or ended without
        a valid example."""
        return [(row[0], row[1], row[2]) for row in self._execute(
            "SELECT r.variant, r.batch_id, s.error_code FROM requests r LEFT JOIN results s ON s.custom_id = "
            "r.custom_id WHERE r.job = ? AND r.stage = ? AND r.status IN ('retried', 'failed', 'invalid', 'missing', "
            "'expired', 'cancelled')", [job, stage])]

    def mark_retried(self, custom_ids: Iterable[str]) -> None:
        """The requests have been replaced by a retry."""
        self.db.conn.executemany("UPDATE requests SET status = 'retried' WHERE custom_id = ?",
                                 ((cid,) for cid in custom_ids))

    # -- how the rounds of a stage went ------------------------------------------------------------------------
    def rounds(self, job: str, stage: str, last: int = 2, after: int = 0) -> list[dict[str, Any]]:
        """The stage's latest rounds after attempt `after` (an attempt number each: the first compile, a retry, a
        top-up), newest first: {"attempt", "requests", "answered" (lines in the output file), "succeeded" (requests
        whose answer was used), "valid" (valid examples)}."""
        return self.rows(
            "SELECT r.attempt, count(*) AS requests, coalesce(sum(s.source = 'output'), 0) AS answered, "
            "coalesce(sum(r.status = 'succeeded'), 0) AS succeeded, "
            "(SELECT count(*) FROM examples e JOIN requests q ON q.custom_id = e.custom_id WHERE q.job = r.job "
            "AND q.stage = r.stage AND q.attempt = r.attempt AND e.valid = 1) AS valid "
            "FROM requests r LEFT JOIN results s ON s.custom_id = r.custom_id WHERE r.job = ? AND r.stage = ? "
            "AND r.attempt > ? GROUP BY r.attempt ORDER BY r.attempt DESC LIMIT ?", [job, stage, after, last])

    def failure_causes(self, job: str, stage: str, attempt: int) -> list[dict[str, Any]]:
        """The distinct causes of the round's failed lines (status code, error code, message) with how many lines
        each, leaving out lines that expired or were cancelled with their batch."""
        return self.rows(
            "SELECT s.status_code, s.error_code, s.error_message, count(*) AS lines FROM requests r "
            "JOIN results s ON s.custom_id = r.custom_id WHERE r.job = ? AND r.stage = ? AND r.attempt = ? "
            "AND s.source != 'output' AND coalesce(s.error_code, '') NOT IN ('batch_expired', 'batch_cancelled') "
            "GROUP BY s.status_code, s.error_code, s.error_message ORDER BY lines DESC", [job, stage, attempt])

