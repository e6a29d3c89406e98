"""`Ledger`: every read and write of batchgen's state, as named methods, one record class per part of the schema."""

from __future__ import annotations

from batchgen.ledger.batches import BatchRecords
from batchgen.ledger.comparisons import ComparisonQueries
from batchgen.ledger.costs import CostQueries
from batchgen.ledger.estimates import EstimateRecords
from batchgen.ledger.jobs import JobRecords
from batchgen.ledger.judgments import JudgmentRecords
from batchgen.ledger.previews import PreviewRecords
from batchgen.ledger.reports import ReportQueries
from batchgen.ledger.requests import RequestRecords
from batchgen.ledger.results import ResultRecords
from batchgen.ledger.reviews import ReviewRecords
from batchgen.ledger.submissions import SubmissionRecords


class Ledger(JobRecords, BatchRecords, SubmissionRecords, RequestRecords, ResultRecords, ReportQueries,
             PreviewRecords, ReviewRecords, ComparisonQueries, JudgmentRecords, CostQueries,
             EstimateRecords):
    """All reads and writes of batchgen's state. Open with `Ledger.open(path)`; close with `close()`.

    Each base class answers for one part of the schema (see docs/architecture.md, "The ledger").
    """
