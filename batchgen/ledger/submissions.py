"""Submissions: the intent rows written before each remote call, with their idempotency keys."""

from __future__ import annotations

from batchgen.ledger.base import Store


class SubmissionRecords(Store):
    pass
