"""A test hook: kill the process at a named point, to prove that a crash anywhere loses and duplicates nothing.

    BATCHGEN_CRASH_AT=create batchgen run jobs/task_api      # SIGKILL right after the batch is created
    BATCHGEN_CRASH_AT=ingest:2 batchgen run jobs/task_api    # ... the second time the point is reached

`crash_point(name)` sends SIGKILL to its own process when BATCHGEN_CRASH_AT names the point (optionally `name:N`
for the N-th time it is reached in this process); nothing is flushed, no `finally` runs, exactly as when the
machine loses power or the OOM killer strikes. Without the variable a crash point is one dictionary lookup.

The points, in the order a job meets them:

    lock      while writing the holder's pid into the workspace lock file
    intent    after the submit intent row is committed, before the upload
    upload    after the input file is uploaded, before its id is recorded
    create    after the batch is created, before it is recorded
    download  while downloading a result file (some bytes are in the .part file)
    ingest    inside the collect transaction, after some result rows are written
    export    while exporting the dataset (some lines are in the temporary file)
    stage     while moving to the next stage or finishing the job (inside its transaction)
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "BATCHGEN_CRASH_AT"
POINTS = ("lock", "intent", "upload", "create", "download", "ingest", "export", "stage")

_reached: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process if BATCHGEN_CRASH_AT asks for `name` (and this is the N-th time it is reached)."""
    wanted = os.environ.get(ENV_VAR)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
