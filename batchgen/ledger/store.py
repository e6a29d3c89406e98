"""`Ledger`: every read and write of batchgen's state, as named methods, one record class per part of the schema."""

from __future__ import annotations

from batchgen.ledger.jobs import JobRecords


class Ledger(JobRecords):
    """All reads and writes of batchgen's state. Open with `Ledger.open(path)`; close with `close()`."""
