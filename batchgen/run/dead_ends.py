"""Dead ends: when retrying or topping up a stage cannot help, stop paying for it.

Two signs, read from the stage's latest rounds before a retry or a top-up is compiled:

- every line of the round failed, and all for one cause (the same HTTP status, error code and message): an
  upstream that refuses a parameter, an unknown model, a 4xx, a server that answers every call with the same 500.
  Transient trouble (429, varied 5xx, timeouts, some lines through) is retried as before;
- a retry or top-up round that yields no valid example at all: of three requests or more, or twice in a row.

The job then ends `blocked`, with the cause in one line (`batchgen show`, `status`, `run`'s summary). Once the
cause is fixed, `batchgen jobs unblock JOB` gives it one more round: only the rounds after the unblock are judged.
"""

from __future__ import annotations

from batchgen.ledger import Ledger
from batchgen.recipe.spec import JobSpec, ResolvedStage

MIN_ROUND = 3  # a round this large that yields nothing is a dead end; a smaller one must fail twice in a row


class DeadEnd(Exception):
    """Raised instead of compiling a retry or top-up that cannot help; str() is the cause."""


def check(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> None:
    """DeadEnd if the stage has met a dead end (see the module docstring)."""
    cause = dead_end(ledger, spec, stage)
    if cause is not None:
        raise DeadEnd(cause)


def dead_end(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> str | None:
    """Why the stage cannot get further by retrying or topping up, or None."""
    rounds = ledger.rounds(spec.name, stage.name, after=ledger.unblocked_attempt(spec.name, stage.name))
    if not rounds:
        return None
    latest = rounds[0]
    if latest["answered"] == 0:
        causes = ledger.failure_causes(spec.name, stage.name, latest["attempt"])
        if len(causes) == 1 and causes[0]["lines"] == latest["requests"]:
            cause = causes[0]
            status = f"HTTP {cause['status_code']}" if cause["status_code"] else (cause["error_code"] or "failed")
            message = (cause["error_message"] or cause["error_code"] or "").strip().splitlines()
            return (f"stage {stage.name}: all {latest['requests']} request(s) of round {latest['attempt']} failed the "
                    f"same way ({status}: {message[0] if message else 'no message'}); retrying cannot change that")
    # A judge stage's answers are scores: what it yields is the requests whose scores were used.
    yielded = "succeeded" if stage.judges else "valid"
    if latest["attempt"] > 1 and latest[yielded] == 0:
        twice = len(rounds) > 1 and rounds[1][yielded] == 0
        if latest["requests"] >= MIN_ROUND or twice:
            return (f"stage {stage.name}: round {latest['attempt']} ({latest['requests']} request(s)) yielded no "
                    + ("usable answer" if stage.judges else "valid example")
                    + (", nor did the round before" if twice else "")
                    + "; see 'batchgen show' for the reasons")
    return None
