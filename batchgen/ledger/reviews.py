"""Reviews: a domain expert's verdict (accept or reject, with a note) on examples sampled for `batchgen review`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from batchgen.ledger.base import Store, utcnow

ExampleKey = tuple[str, int]
"""(custom_id, position): one example of a job, as `examples.duplicate_of` and the review file name it."""


class ReviewCandidate(NamedTuple):
    """A valid example a review sample can draw: its key and its stratum (stage, variant cell as JSON text)."""

    custom_id: str
    position: int
    stage: str
    cell_json: str


class ReviewedExample(NamedTuple):
    """An example as a review file shows it, with the verdict and note the ledger holds for it (None: none yet)."""

    custom_id: str
    position: int
    stage: str
    cell: dict[str, Any]
    content: dict[str, Any] | None  # decoded content_json; None for a response that yielded no example
    verdict: str | None
    note: str | None


class ReviewRecords(Store):
    def review_candidates(self, job: str) -> Iterator[ReviewCandidate]:
        """Every valid example of the job with its stage and cell, read lazily (a large job is never held whole)."""
        cursor = self._execute(
            "SELECT e.custom_id, e.position, e.stage, r.cell_json FROM examples e "
            "JOIN requests r ON r.custom_id = e.custom_id WHERE e.job = ? AND e.valid = 1", [job])
        for custom_id, position, stage, cell_json in cursor:
            yield ReviewCandidate(custom_id, position, stage, cell_json)

    def reviewed_examples(self, job: str, keys: Iterable[ExampleKey]) -> dict[ExampleKey, ReviewedExample]:
        """The examples of the job among `keys`, with their verdicts so far; a key of no example of the job (or of
        another job) is absent. One pass over the job's examples, whatever the number of keys."""
        wanted = json.dumps([f"{custom_id}#{position}" for custom_id, position in keys])
        cursor = self._execute(
            "SELECT e.custom_id, e.position, e.stage, r.cell_json, e.content_json, v.verdict, v.note "
            "FROM examples e JOIN requests r ON r.custom_id = e.custom_id "
            "LEFT JOIN reviews v ON v.custom_id = e.custom_id AND v.position = e.position "
            "WHERE e.job = ? AND e.custom_id || '#' || e.position IN (SELECT value FROM json_each(?))",
            [job, wanted])
        return {(row[0], row[1]): ReviewedExample(row[0], row[1], row[2], json.loads(row[3]),
                                                  json.loads(row[4]) if row[4] is not None else None,
                                                  row[5], row[6])
                for row in cursor}

    def record_reviews(self, job: str, source: str, verdicts: Iterable[tuple[str, int, str, str, str]]) -> None:
        """Each (custom_id, position, stage, verdict, note) as the example's verdict, replacing an earlier one; a
        verdict and note the ledger already holds is left as it is, with the time it was first imported."""
        now = utcnow()
        self.db.conn.executemany(
            "INSERT INTO reviews (custom_id, position, job, stage, verdict, note, source, reviewed_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (custom_id, position) DO UPDATE SET "
            "verdict = excluded.verdict, note = excluded.note, source = excluded.source, "
            "reviewed_utc = excluded.reviewed_utc WHERE verdict != excluded.verdict OR note != excluded.note",
            ((custom_id, position, job, stage, verdict, note, source, now)
             for custom_id, position, stage, verdict, note in verdicts))

    def review_counts(self, job: str) -> dict[str, dict[str, int]]:
        """The job's verdicts by stage: {stage: {"accept": n, "reject": m}} (a verdict no example has is absent)."""
        counts: dict[str, dict[str, int]] = {}
        for stage, verdict, count in self._execute(
                "SELECT stage, verdict, count(*) FROM reviews WHERE job = ? GROUP BY stage, verdict ORDER BY stage",
                [job]):
            counts.setdefault(stage, {})[verdict] = int(count)
        return counts
