"""Judgments: the scores a judge stage gave the examples of its source stage (see `batchgen.dataset.judge`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from batchgen.ledger.base import Store


class JudgmentRecords(Store):
    def record_judgments(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Each (job, stage, example, custom_id, shown, score, passed, reason, at_utc); an example the stage has
        scored already keeps its first score."""
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO judgments (job, stage, example, custom_id, shown, score, passed, reason, at_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def reject_judged(self, job: str, stage: str, rejections: Iterable[tuple[str, str]]) -> int:
        """Reject each (example key, reason) of the stage that is valid now (category judge); how many were. One
        pass over the stage's valid examples, whatever the number of rejections."""
        self._execute("CREATE TEMP TABLE IF NOT EXISTS judged_out (custom_id TEXT NOT NULL, position INTEGER NOT NULL, "
                      "reason TEXT NOT NULL, PRIMARY KEY (custom_id, position))")
        self._execute("DELETE FROM judged_out")
        self.db.conn.executemany("INSERT OR IGNORE INTO judged_out VALUES (?, ?, ?)",
                                 ((*_split(key), reason) for key, reason in rejections))
        cursor = self._execute(
            "UPDATE examples SET valid = 0, category = 'judge', reason = (SELECT j.reason FROM judged_out j WHERE "
            "j.custom_id = examples.custom_id AND j.position = examples.position) WHERE job = ? AND stage = ? AND "
            "valid = 1 AND (custom_id, position) IN (SELECT custom_id, position FROM judged_out)", [job, stage])
        self._execute("DELETE FROM judged_out")
        return int(cursor.rowcount)

    def unscored(self, job: str, judge: str) -> list[tuple[str, str, str]]:
        """The examples a judge's requests showed that ended without a usable answer and were not retried, and
        have no score: (example key, the request, its status)."""
        ended = ("succeeded", "retried", "compiled", "submitted")
        found = [(key, custom_id, status) for custom_id, status, keys in self._shown_by(job, judge)
                 if status not in ended for key in keys]
        scored = {row[0] for row in self._execute("SELECT example FROM judgments WHERE job = ? AND stage = ?",
                                                  [job, judge])}
        return [row for row in found if row[0] not in scored]

    def judged_count(self, job: str, stage: str) -> int:
        """How many examples the judge stage has scored."""
        return int(self.scalar("SELECT count(*) FROM judgments WHERE job = ? AND stage = ?", [job, stage]))

    def judge_shown(self, job: str, stage: str) -> set[str]:
        """The keys of the examples the judge stage's requests have shown (every attempt): each is scored, or
        will be by a retry of its request, and is never shown again by another."""
        return {key for _, _, keys in self._shown_by(job, stage) for key in keys}

    def _shown_by(self, job: str, stage: str) -> Iterator[tuple[str, str, list[str]]]:
        """(custom_id, status, keys of the examples it showed) of each request of the stage that showed any."""
        for custom_id, status, parents in self._execute(
                "SELECT custom_id, status, parents_json FROM requests WHERE job = ? AND stage = ? AND "
                "parents_json IS NOT NULL", [job, stage]):
            yield custom_id, status, [key for key, _ in json.loads(parents)]

    def shown_examples(self, custom_ids: Iterable[str]) -> dict[str, list[tuple[str, str | None, dict[str, Any]]]]:
        """custom_id -> what each of these requests showed: (key, root, content) of each example, in order."""
        wanted = json.dumps(list(custom_ids))
        shown = {custom_id: json.loads(parents) for custom_id, parents in self._execute(
            "SELECT custom_id, parents_json FROM requests WHERE custom_id IN (SELECT value FROM json_each(?))",
            [wanted])}
        keys = json.dumps(sorted({key for parents in shown.values() for key, _ in parents}))
        contents = {key: json.loads(content) for key, content in self._execute(
            "SELECT e.custom_id || '#' || e.position, e.content_json FROM examples e JOIN (SELECT DISTINCT "
            "substr(value, 1, instr(value, '#') - 1) AS custom_id FROM json_each(?)) k ON k.custom_id = e.custom_id",
            [keys])}
        return {custom_id: [(key, root, contents[key]) for key, root in parents]
                for custom_id, parents in shown.items()}

    def judgment_counts(self, job: str) -> dict[str, dict[str, Any]]:
        """Per judge stage: {"judged", "passed", "rejected", "mean_score"} (mean as text, two decimals)."""
        out: dict[str, dict[str, Any]] = {}
        for stage, judged, passed, mean in self._execute(
                "SELECT stage, count(*), sum(passed), avg(score) FROM judgments WHERE job = ? GROUP BY stage "
                "ORDER BY stage", [job]):
            out[stage] = {"judged": int(judged), "passed": int(passed), "rejected": int(judged) - int(passed),
                          "mean_score": f"{mean:.2f}"}
        return out


def _split(key: str) -> tuple[str, int]:
    custom_id, _, position = key.rpartition("#")
    return custom_id, int(position)
