"""Estimates that learn, on the engine's side: a stage's figures from the answers the ledger holds, the shards
priced with them, and the pending shards priced again once a collect taught something.

The figures and the rules of choosing them are `batchgen.recipe.estimates`'s; this module asks the ledger
(`EstimateRecords.observed_answers`, one aggregate query a stage) and hands them over. A compile prices its
shards' expected cost with the stage's estimate and records its basis (prior or learned) on each shard; a top-up
asks for as many requests as the estimate's yield needs. After a tick collected batches, the job's pending shards
priced with the prior are priced again if their stage has learned since, so that the budget guard's expected mode
admits them on the learned figure. Learning can be turned off (`Session(learn=False)`, `batchgen run
--no-learn`): everything then uses the prior, as before there were learned figures.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from batchgen.errors import LedgerError
from batchgen.ledger import Ledger
from batchgen.recipe.estimates import LEARNED, Observed, StageEstimate, choose, prior_estimate, template_digest
from batchgen.recipe.spec import CHAT, JobSpec, ResolvedStage


def observed(ledger: Ledger, model: str, digest: str) -> dict[str, Observed]:
    """Per job, what its answers of this model and template showed."""
    return {job: Observed((job,), row["answered"], row["completion_tokens"], row["completion_squares"], row["valid"])
            for job, row in ledger.observed_answers(model, digest).items()}


def stage_estimate(ledger: Ledger, spec: JobSpec, stage: ResolvedStage, *, learn: bool = True) -> StageEstimate:
    """The stage's estimate: learned from this job's answers, else from other jobs' of the same model and template,
    else the prior (always the prior with learn=False, and for an embeddings stage, whose answers have no output)."""
    prior = prior_estimate(spec, stage)
    if not learn or spec.endpoint != CHAT:
        return prior
    return choose(prior, spec.name, observed(ledger, spec.model, template_digest(spec, stage)))


def plan_estimates(ledger_path: Path, spec: JobSpec) -> dict[str, StageEstimate]:
    """Every chat stage's estimate for `batchgen plan`, from the ledger at `ledger_path` read-only: none (the priors)
    when there is no ledger there or it cannot be read as it is."""
    if spec.endpoint != CHAT or not ledger_path.is_file():
        return {}
    try:
        with Ledger.open(ledger_path, read_only=True) as ledger:
            return {stage.name: stage_estimate(ledger, spec, stage) for stage in spec.resolved_stages()}
    except LedgerError:
        return {}


def reprice_pending(ledger: Ledger, spec: JobSpec, *, learn: bool = True) -> int:
    """Price again, with the learned output tokens, the job's pending shards that were priced with the prior, where
    their stage has learned since (see the module docstring); how many were."""
    if not learn or spec.endpoint != CHAT:
        return 0
    pending = ledger.pending_prior_shards(spec.name)
    price = spec.model_price()
    learned: dict[tuple[str, str], StageEstimate] = {}
    repriced = 0
    for shard in pending:
        stage = spec.stage(shard["stage"])
        key = (shard["stage"], shard["template_digest"])
        if key not in learned:
            prior = StageEstimate(stage.name, shard["est_output_tokens"] or 0, None, stage.max_tokens)
            learned[key] = choose(prior, spec.name, observed(ledger, shard["model"], shard["template_digest"]))
        estimate = learned[key]
        if estimate.basis != LEARNED:
            continue
        output = estimate.output_tokens
        cost = sum((price.cost(tokens, 0, output) * n for tokens, n in ledger.shard_prompt_sizes(shard["id"]).items()),
                   Decimal(0))
        with ledger.transaction():
            ledger.reprice_shard(shard["id"], cost, LEARNED, output)
            ledger.event("repriced", job=spec.name, shard=shard["id"], basis=LEARNED, output_tokens=output,
                         est_cost_usd=str(cost), was_usd=shard["est_cost_usd"])
        repriced += 1
    return repriced
