"""Submissions: the intent rows written before each remote call, with the idempotency key that the uploaded file's
name and the batch's metadata carry (see `batchgen.run.recovery`)."""

from __future__ import annotations

from typing import Any

from batchgen.ledger.base import Store, utcnow


class SubmissionRecords(Store):
    def pending_intent(self, shard_id: str) -> dict[str, Any] | None:
        """The shard's latest submit intent that is still pending."""
        return self.one("SELECT * FROM intents WHERE shard_id = ? AND kind = 'submit' AND status = 'pending' "
                        "ORDER BY id DESC LIMIT 1", [shard_id])

    def intent_count(self, shard_id: str) -> int:
        """How many intents the shard has had (its submissions so far, ended or not)."""
        return int(self.scalar("SELECT count(*) FROM intents WHERE shard_id = ?", [shard_id]))

    def insert_intent(self, key: str, job: str, shard_id: str) -> dict[str, Any]:
        now = utcnow()
        self._execute("INSERT INTO intents (idempotency_key, job, shard_id, kind, status, created_utc, updated_utc) "
                      "VALUES (?, ?, ?, 'submit', 'pending', ?, ?)", [key, job, shard_id, now, now])
        intent = self.one("SELECT * FROM intents WHERE idempotency_key = ?", [key])
        assert intent is not None
        return intent

    def pending_intents(self, job: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM intents WHERE job = ? AND kind = 'submit' AND status = 'pending' ORDER BY id",
                         [job])

    def set_intent_file(self, intent_id: int, file_id: str) -> None:
        """The input file was uploaded: its id, so a resumed submission does not upload it again."""
        self._execute("UPDATE intents SET file_id = ?, updated_utc = ? WHERE id = ?", [file_id, utcnow(), intent_id])

    def finish_intent(self, intent_id: int, batch_id: str, file_id: str | None = None) -> None:
        """The intent's batch exists and is recorded."""
        self._execute("UPDATE intents SET status = 'done', batch_id = ?, file_id = coalesce(?, file_id), "
                      "updated_utc = ? WHERE id = ?", [batch_id, file_id, utcnow(), intent_id])

    def abandon_intent(self, intent_id: int) -> None:
        self._execute("UPDATE intents SET status = 'abandoned', updated_utc = ? WHERE id = ?", [utcnow(), intent_id])

    def intent_keys(self, job: str) -> set[str]:
        return {row[0] for row in self._execute("SELECT idempotency_key FROM intents WHERE job = ?", [job])}

    def referenced_files(self, job: str) -> set[str]:
        """Input file ids that an intent or a recorded batch of the job refers to."""
        return {row[0] for row in self._execute(
            "SELECT file_id FROM intents WHERE job = ? AND file_id IS NOT NULL "
            "UNION SELECT input_file_id FROM batches WHERE job = ?", [job, job])}
