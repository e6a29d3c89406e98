"""Batches: what was submitted, what the provider last said of each batch, and when to ask again."""

from __future__ import annotations

from batchgen.ledger.base import Store


class BatchRecords(Store):
    pass
