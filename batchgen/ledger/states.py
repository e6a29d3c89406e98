"""The states of a batch and of a job: one home for each list, so that no module writes its own."""

from __future__ import annotations

# A batch's status at the provider (spec/batch-api.md §3): these have ended, for good.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# These have not ended: the provider still holds the batch's tokens in its queue.
IN_FLIGHT = ("validating", "in_progress", "finalizing", "cancelling")
# SQL condition on batches.status: the batch has not ended yet (the values are constants, not user input).
UNFINISHED = "status NOT IN ({})".format(", ".join(f"'{s}'" for s in sorted(TERMINAL)))

# A job's status in the ledger.
ACTIVE = "active"  # moving forward: compiling, submitting, polling, collecting
CANCELLED = "cancelled"  # `batchgen cancel JOB`: its batches are cancelled and what they did is collected
DONE = "done"  # every stage ran and the dataset is exported
BLOCKED = "blocked"  # a stage met a dead end (jobs.blocked_reason says which); nothing more is spent on it
PREVIEWED = "previewed"  # only `batchgen preview` has seen it: nothing compiled or submitted; run or submit starts it
