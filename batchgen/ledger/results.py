"""Results and examples: what collect records for every line of a batch's output and error files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from operator import itemgetter
from typing import Any

from batchgen.ledger.base import Store, utcnow
from batchgen.ledger.states import IN_FLIGHT


class ResultRecords(Store):
    # -- the collect transaction's bookkeeping ---------------------------------------------------------------
    def batch_collected(self, batch_id: str) -> bool:
        """Whether the batch's results are already in the ledger."""
        return bool(self.scalar("SELECT collected FROM batches WHERE id = ?", [batch_id]))

    def mark_batch_collected(self, batch_id: str, cost_usd: Decimal) -> None:
        """The batch's results are recorded, and what they cost."""
        self._execute("UPDATE batches SET collected = 1, actual_cost_usd = ?, updated_utc = ? WHERE id = ?",
                      [str(cost_usd), utcnow(), batch_id])

    def queued_batches_of_model(self, model: str | None, other_than: str) -> int:
        """Batches of the model, other than this one, that the provider still holds in its queue."""
        marks = ",".join("?" * len(IN_FLIGHT))
        return int(self.scalar(
            "SELECT count(*) FROM batches b JOIN shards s ON s.id = b.shard_id WHERE s.model = ? AND b.id != ? AND "
            f"b.status IN ({marks})", [model, other_than, *IN_FLIGHT]))

    def batch_requests(self, batch_id: str) -> dict[str, tuple[str, int]]:
        """custom_id -> (stage, requests.rowid) of every request sent in the batch."""
        return {row[0]: (row[1], row[2]) for row in self._execute(
            "SELECT custom_id, stage, rowid FROM requests WHERE batch_id = ?", [batch_id])}

    def batch_parents(self, batch_id: str) -> dict[str, list[list[str | None]]]:
        """custom_id -> the candidate parents ([key, root], ...) of each request of the batch that has them."""
        return {row[0]: json.loads(row[1]) for row in self._execute(
            "SELECT custom_id, parents_json FROM requests WHERE batch_id = ? AND parents_json IS NOT NULL",
            [batch_id])}

    def batch_cells(self, batch_id: str) -> dict[str, dict[str, Any]]:
        """custom_id -> the cell (axis values) each request of the batch asked for."""
        return {row[0]: json.loads(row[1]) for row in self._execute(
            "SELECT custom_id, cell_json FROM requests WHERE batch_id = ?", [batch_id])}

    def has_result(self, custom_id: str) -> bool:
        """Whether a result is recorded for the custom_id (a line that repeats one already answered)."""
        return bool(self.scalar("SELECT 1 FROM results WHERE custom_id = ?", [custom_id]))

    # -- the collector's bulk writes -----------------------------------------------------------------------------
    # Rows come as tuples kept apart by shape: binding None costs sqlite3 far more than any other value, so the
    # common rows (a success, a valid example) leave their NULL columns out of the statement.
    def insert_results(self, succeeded: Iterable[tuple[Any, ...]], others: Iterable[tuple[Any, ...]]) -> None:
        """Result rows: `succeeded` are output lines (custom_id, batch_id, job, status_code, finish_reason,
        prompt, cached, completion, reasoning tokens, cost_usd, standard_cost_usd, priced_by, request_id,
        collected_utc); `others` carry every column (custom_id, batch_id, job, source, status_code, error_code,
        error_message, finish_reason, the four token counts, cost_usd, standard_cost_usd, priced_by, request_id,
        collected_utc)."""
        conn = self.db.conn
        conn.executemany(
            "INSERT INTO results (custom_id, batch_id, job, source, status_code, finish_reason, prompt_tokens, "
            "cached_tokens, completion_tokens, reasoning_tokens, cost_usd, standard_cost_usd, priced_by, request_id, "
            "collected_utc) VALUES (?, ?, ?, 'output', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", succeeded)
        conn.executemany(
            "INSERT INTO results (custom_id, batch_id, job, source, status_code, error_code, error_message, "
            "finish_reason, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_usd, "
            "standard_cost_usd, priced_by, request_id, collected_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            others)

    def insert_examples(self, accepted: Iterable[tuple[Any, ...]], others: Iterable[tuple[Any, ...]]) -> None:
        """Example rows: `accepted` are valid (job, stage, custom_id, position, content_json, content_hash, parent,
        root); `others` carry every column (job, stage, custom_id, position, content_json, content_hash, valid,
        category, reason, duplicate_of, parent, root)."""
        conn = self.db.conn
        conn.executemany(
            "INSERT INTO examples (job, stage, custom_id, position, content_json, content_hash, parent, root, valid) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)", accepted)
        conn.executemany(
            "INSERT INTO examples (job, stage, custom_id, position, content_json, content_hash, valid, category, "
            "reason, duplicate_of, parent, root) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", others)

    def set_request_statuses(self, statuses: list[tuple[str, int]]) -> None:
        """Each (status, requests.rowid), written in table order: lines arrive in any order, and updating the
        requests in rowid order touches each page of the table once. Sorts `statuses` in place."""
        statuses.sort(key=itemgetter(1))
        self.db.conn.executemany("UPDATE requests SET status = ? WHERE rowid = ?", statuses)

    def reject_batch_requests(self, batch_id: str, job: str, code: str, detail: str) -> int:
        """A `batch_failed` result for every request of a batch whose input file was rejected, and the requests
        marked rejected; how many requests."""
        rows = self._execute("SELECT custom_id FROM requests WHERE batch_id = ?", [batch_id]).fetchall()
        self.db.conn.executemany(
            "INSERT INTO results (custom_id, batch_id, job, source, error_code, error_message, cost_usd, "
            "standard_cost_usd, collected_utc) VALUES (?, ?, ?, 'batch_failed', ?, ?, '0', '0', ?)",
            ((r[0], batch_id, job, code, detail, utcnow()) for r in rows))
        self._execute("UPDATE requests SET status = 'rejected' WHERE batch_id = ?", [batch_id])
        return len(rows)

    # -- example hashes and dedupe --------------------------------------------------------------------------
    def earlier_stage_hashes(self, job: str, stage: str) -> dict[str, str]:
        """content_hash -> "custom_id#position" of the valid examples of the job's other stages."""
        return {row[0]: f"{row[1]}#{row[2]}" for row in self._execute(
            "SELECT content_hash, custom_id, position FROM examples WHERE job = ? AND stage != ? AND valid = 1 "
            "AND content_hash IS NOT NULL ORDER BY id", [job, stage])}

    def valid_example_count(self, job: str, stage: str | None = None) -> int:
        """Valid examples of the job (of one stage, if given)."""
        if stage is None:
            return int(self.scalar("SELECT count(*) FROM examples WHERE job = ? AND valid = 1", [job]))
        return int(self.scalar("SELECT count(*) FROM examples WHERE job = ? AND stage = ? AND valid = 1",
                               [job, stage]))

    def stage_hashes(self, job: str, stage: str) -> set[str]:
        """Hashes of the stage's examples that passed every check but dedupe (valid ones and duplicates)."""
        return {h for (h,) in self._execute(
            "SELECT content_hash FROM examples WHERE job = ? AND stage = ? AND content_hash IS NOT NULL AND "
            "(valid = 1 OR category = 'duplicate')", [job, stage])}

    def dedupe_stage(self, job: str, stage: str, candidates: Iterable[str]) -> None:
        """Mark repeats inside a stage, keeping the first in canonical order (variant, attempt, position).

        Run after every collection of the stage, with the hashes that can have changed: those the batch brought
        twice, or brought again after an earlier batch. A batch collected later may hold an earlier twin of an
        example that was valid so far, so each such hash is settled again from scratch; the result does not depend
        on the order in which lines or batches arrive.
        """
        candidates = list(candidates)
        if not candidates:
            return
        self._execute("CREATE TEMP TABLE IF NOT EXISTS dedupe_candidates (hash TEXT PRIMARY KEY)")
        self._execute("DELETE FROM dedupe_candidates")
        self.db.conn.executemany("INSERT OR IGNORE INTO dedupe_candidates VALUES (?)", ((h,) for h in candidates))
        self._execute("UPDATE examples SET valid = 1, category = NULL, reason = NULL, duplicate_of = NULL "
                      "WHERE job = ? AND stage = ? AND category = 'duplicate' AND content_hash IN "
                      "(SELECT hash FROM dedupe_candidates)", [job, stage])
        self._execute(
            """
            UPDATE examples SET valid = 0, category = 'duplicate', reason = 'Duplicate: ' || d.first_key,
                   duplicate_of = d.first_key
            FROM (
                SELECT e.id,
                       row_number() OVER w AS rank,
                       first_value(e.custom_id || '#' || e.position) OVER w AS first_key
                FROM examples e JOIN requests r ON r.custom_id = e.custom_id
                WHERE e.job = ? AND e.stage = ? AND e.valid = 1
                  AND e.content_hash IN (SELECT hash FROM dedupe_candidates)
                WINDOW w AS (PARTITION BY e.content_hash ORDER BY r.variant, r.attempt, e.position)
            ) AS d
            WHERE examples.id = d.id AND d.rank > 1
            """, [job, stage])

    # -- near-duplicates -------------------------------------------------------------------------------------
    def near_dedupe_candidates(self, job: str, stage: str, *, content: bool = True) -> list[tuple[Any, ...]]:
        """The stage's examples that passed every check but near-dedupe, in canonical order (variant, attempt,
        position): (id, key "custom_id#position", parent, valid, category), and content_json with `content`."""
        return [tuple(row) for row in self._execute(
            "SELECT e.id, e.custom_id || '#' || e.position, e.parent, e.valid, e.category"
            f"{', e.content_json' if content else ''} "
            "FROM examples e JOIN requests r ON r.custom_id = e.custom_id WHERE e.job = ? AND e.stage = ? AND "
            "e.content_json IS NOT NULL AND (e.valid = 1 OR e.category IN ('near_duplicate', 'unchanged_evolution')) "
            "ORDER BY r.variant, r.attempt, e.position", [job, stage])]

    def example_contents(self, ids: Sequence[int]) -> list[str]:
        """The content_json of these examples, in that order."""
        found: dict[int, str] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            found.update(self._execute(
                f"SELECT id, content_json FROM examples WHERE id IN ({', '.join('?' * len(part))})", part).fetchall())
        return [found[i] for i in ids]

    def kept_examples(self, job: str, stage: str) -> list[tuple[str, str]]:
        """The valid examples of one stage in canonical order, as (key, content_json)."""
        return [(row[0], row[1]) for row in self._execute(
            "SELECT e.custom_id || '#' || e.position, e.content_json FROM examples e JOIN requests r "
            "ON r.custom_id = e.custom_id WHERE e.job = ? AND e.stage = ? AND e.valid = 1 "
            "ORDER BY r.variant, r.attempt, e.position", [job, stage])]

    def set_near_verdicts(self, changes: Iterable[tuple[int, str | None, str | None, str | None, int]]) -> None:
        """Each (valid, category, reason, duplicate_of, id): an example's near-duplicate verdict, or its return to
        valid when the example it nearly repeated is no longer before it."""
        ordered = sorted(changes, key=itemgetter(4))  # in the order of the rows: SQLite writes them 3 times as fast
        self.db.conn.executemany(
            "UPDATE examples SET valid = ?, category = ?, reason = ?, duplicate_of = ? WHERE id = ?", ordered)
