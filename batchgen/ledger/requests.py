"""Shards and requests: what was compiled, what each request became, and what a stage still needs."""

from __future__ import annotations

from batchgen.ledger.base import Store


class RequestRecords(Store):
    pass
