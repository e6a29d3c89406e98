"""Jobs: what the ledger knows of each job, and the questions about its batches that decide what a job does next."""

from __future__ import annotations

from typing import Any

from batchgen.errors import NotFoundError
from batchgen.ledger.base import Store, utcnow
from batchgen.ledger.states import UNFINISHED


class JobRecords(Store):
    # -- jobs ----------------------------------------------------------------------------------------------
    def job(self, name: str) -> dict[str, Any]:
        row = self.one("SELECT * FROM jobs WHERE name = ?", [name])
        if row is None:
            raise NotFoundError(f"No job {name!r} in ledger {self.path}; run 'batchgen jobs list'")
        return row

    def find_job(self, name: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM jobs WHERE name = ?", [name])

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        if status:
            return self.rows("SELECT * FROM jobs WHERE status = ? ORDER BY created_utc", [status])
        return self.rows("SELECT * FROM jobs ORDER BY created_utc")

    def unfinished_batches(self, job: str) -> int:
        """Batches of the job that have not ended yet."""
        return int(self.scalar(f"SELECT count(*) FROM batches WHERE job = ? AND {UNFINISHED}", [job]))

    def uncollected_batches(self, job: str) -> int:
        """Batches of the job whose results are not in the ledger yet (running, or ended and not collected)."""
        return int(self.scalar("SELECT count(*) FROM batches WHERE job = ? AND collected = 0", [job]))

    def set_job(self, name: str, **fields: Any) -> None:
        fields["updated_utc"] = utcnow()
        assignments = ", ".join(f"{key} = ?" for key in fields)
        self._execute(f"UPDATE jobs SET {assignments} WHERE name = ?", [*fields.values(), name])

