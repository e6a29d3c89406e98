"""Results and examples: what collect records for every line of a batch's output and error files."""

from __future__ import annotations

from batchgen.ledger.base import Store


class ResultRecords(Store):
    pass
