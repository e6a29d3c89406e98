"""Which pending shards may be submitted now: the budget guard and the provider's queued-token limit.

`admit` is the decision alone (no ledger, no API): given the pending shards, what is committed and what is queued,
it says which shards go now and why the rest waits. The figures it needs come from the ledger through
`queue_cap`, `shard_limits` and `top_up_budget`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batchgen.ledger.batches import COST_COLUMN
from batchgen.money import format_usd
from batchgen.recipe.plan import plan_stage
from batchgen.recipe.spec import JobSpec, LimitsSpec, ResolvedStage
from batchgen.run.session import Session

LEARNED_MARGIN = 0.95  # a limit learned from the provider's message is used with a margin for counting differences
# Queued-token limits of usage tier 1 (spec/batch-api.md §6), used for the openai and azure backends when neither
# --queue-limit nor the job's limits.max_queued_tokens says otherwise. Higher tiers allow far more.
KNOWN_QUEUE_LIMITS = {
    "gpt-4o-mini": 2_000_000,
    "gpt-4o": 90_000,
    "text-embedding-3-small": 3_000_000,
    "text-embedding-3-large": 3_000_000,
}


@dataclass
class Admission:
    """The shards to submit now, in order, and why the rest waits (None: nothing waits)."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    waiting: str | None = None
    over_budget: bool = False  # the rest waits for money, not for room in the queue


def admit(pending: Sequence[dict[str, Any]], *, job: str, budget: Decimal | None, committed: Decimal, mode: str,
          cap: int | None, queued: Mapping[str, int]) -> Admission:
    """Admit pending shards in order while each fits the queue (a model with nothing queued always takes one) and
    the budget (what is committed plus the shard's cost in `mode`: its worst or its expected case)."""
    column = COST_COLUMN[mode]
    queued = dict(queued)
    admitted = Admission()
    for position, shard in enumerate(pending):
        model, tokens = shard["model"], shard["input_tokens"]
        held = queued.get(model, 0)
        if cap is not None and held + tokens > cap and held > 0:
            admitted.waiting = f"queue: {model} has its {cap:,} queued-token limit in use"
            return admitted
        cost = Decimal(shard[column])
        if budget is not None and committed + cost > budget:
            rest = sum((Decimal(s[column]) for s in pending[position:]), Decimal(0))
            admitted.waiting = (f"Budget {format_usd(budget)} of job {job!r} reached: {format_usd(committed)} "
                                f"committed, {format_usd(max(budget - committed, Decimal(0)))} left, the remaining "
                                f"{len(pending) - position} shard(s) need up to {format_usd(rest)} ({mode} case); "
                                "raise budget_usd in job.toml to go on")
            admitted.over_budget = True
            return admitted
        admitted.shards.append(shard)
        committed += cost
        queued[model] = held + tokens
    return admitted


def queue_cap(session: Session, spec: JobSpec, backend: str) -> int | None:
    """Tokens the model may have queued at once: --queue-limit > the job's limits > a learned limit > known tier-1
    limits (none on the embedded emulator)."""
    if session.queue_limit is not None:
        return session.queue_limit
    if spec.limits.max_queued_tokens is not None:
        return spec.limits.max_queued_tokens
    learned = session.ledger.learned_queue_limit(spec.model)
    if learned:
        return int(learned * LEARNED_MARGIN)
    return None if backend == "embedded" else KNOWN_QUEUE_LIMITS.get(spec.model)


def shard_limits(session: Session, spec: JobSpec) -> LimitsSpec:
    """The job's shard limits, with shards cut to the queued-token cap so each one alone fits the queue."""
    row = session.ledger.find_job(spec.name)
    cap = queue_cap(session, spec, row["backend"] if row else "embedded")
    current = spec.limits.max_queued_tokens
    if cap is None or (current is not None and current <= cap):
        return spec.limits
    return spec.limits.model_copy(update={"max_queued_tokens": cap})


def top_up_budget(session: Session, spec: JobSpec, stage: ResolvedStage) -> Decimal | None:
    """What a top-up of this stage may spend: the budget less what is committed (batches in flight at their worst
    case) and less the worst case the plan gives the stages after this one, whatever the budget mode, so that a
    top-up never takes money the rest of the plan may need. None: no budget."""
    row = session.ledger.job(spec.name)
    if row["budget_usd"] is None:
        return None
    stages = spec.resolved_stages()
    later = stages[[s.name for s in stages].index(stage.name) + 1:]
    price = spec.model_price()
    reserved = sum((plan_stage(spec, other, price).cost.batch_worst for other in later), Decimal(0))
    return Decimal(row["budget_usd"]) - session.ledger.committed_usd(spec.name, "worst") - reserved
