"""The provider's batch list, read once per tick: newest first, a page at a time, only as far as a lookup needs."""

from __future__ import annotations

from typing import Any

from batchgen.run.client import BatchClient

# How far back the list is read when the ledger knows no batch of the job yet (a new job, or a lost ledger);
# OpenAI lists batches for at least this long.
SCAN_DAYS = 30


class ProviderBatches:
    """The provider's batches by `metadata.batchgen_key`, read from its list (newest first) only as far as a lookup
    needs and no further back than `since` (unix seconds), and kept for the rest of the tick."""

    def __init__(self, client: BatchClient, since: float):
        self._batches = iter(client.list_batches())
        self._since = since
        self._found: dict[str, dict[str, Any]] = {}
        self._last: int | None = None
        self._done = False

    def find(self, key: str) -> dict[str, Any] | None:
        while key not in self._found and not self._done:
            batch = next(self._batches, None)
            if batch is None:
                self._done = True
                break
            newest_first = self._last is None or batch.created_at <= self._last
            self._last = batch.created_at
            found = (batch.metadata or {}).get("batchgen_key")
            if found and found not in self._found:
                self._found[found] = batch.model_dump(mode="json")
            if newest_first and batch.created_at < self._since:
                self._done = True  # older than anything this job can have submitted
        return self._found.get(key)
