"""Reports: the questions `show`, `status` and `ledger reconcile` ask of a job's records."""

from __future__ import annotations

from batchgen.ledger.base import Store


class ReportQueries(Store):
    pass
