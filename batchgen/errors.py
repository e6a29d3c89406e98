"""Errors that batchgen raises, each with a one-line message for the user.

    BatchgenError
    ├── SpecError          a job directory, job.toml, template or seed file is wrong
    │   └── JobDirMissing  work that needs the job directory (compile, retry, top-up) finds it gone
    ├── LedgerError        the ledger cannot be opened, migrated or trusted
    ├── NotFoundError      an unknown job, batch, shard or file
    ├── BackendError       the Batch API (OpenAI, a compatible server or the emulator) said no
    ├── ValidationFailed   generated data failed a check that was required to pass
    ├── BudgetExceeded     the budget guard refused to spend more
    ├── WorkspaceBusy      another batchgen process holds the workspace lock
    ├── PricingError       no price is known for a model
    └── DiskError          a file or folder cannot be written: no space left, a quota or the file size limit met,
                           or a folder that cannot be made (worded by batchgen.disk)

The CLI turns each into `Error: <message>` and exit status 1. The library never prints and never exits.
"""

from __future__ import annotations


class BatchgenError(Exception):
    """Base class: str(error) is the one-line message shown to the user."""


class SpecError(BatchgenError):
    pass


class JobDirMissing(SpecError):
    """New work for a job needs its directory (its templates), which is gone; what was submitted still counts."""

    def __init__(self, job: str, job_dir: object, work: str):
        super().__init__(f"Job {job!r}: {work} needs its job directory {job_dir}, which is missing; restore it, or "
                         f"name its new place with 'batchgen run DIR' (batches already submitted are still "
                         f"collected, and 'batchgen export {job}' works without it)")
        self.job, self.job_dir, self.work = job, job_dir, work


class LedgerError(BatchgenError):
    pass


class NotFoundError(BatchgenError):
    pass


class BackendError(BatchgenError):
    """`transient` marks a fault worth waiting out: no answer, 408, 409, 429 or 5xx."""

    def __init__(self, message: str, *, status_code: int | None = None, request_id: str | None = None,
                 transient: bool = False):
        super().__init__(message)
        self.status_code = status_code
        self.request_id = request_id
        self.transient = transient


class ValidationFailed(BatchgenError):
    pass


class BudgetExceeded(BatchgenError):
    pass


class PricingError(BatchgenError):
    pass


class WorkspaceBusy(BatchgenError):
    pass


class DiskError(BatchgenError):
    pass


def is_retryable_status(code: int) -> bool:
    """The one rule for an HTTP status worth asking again (as the OpenAI SDK retries): 408, 409, 429 and 5xx."""
    return code in (408, 409, 429) or code >= 500
