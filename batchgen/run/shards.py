"""Which shards a job needs: a stage's first compile, the retries of what failed, top-ups of a stage that ended
below its target, and shards sent back to the queue after `token_limit_exceeded`.

Retry rules (per variant, looking at its latest request):
  expired, cancelled (batch_expired / batch_cancelled rows)   resubmitted; does not use up an attempt if the
                                                              batch ran any line (else it does: no endless loop)
  failed with HTTP 408/409/429/5xx, request_timeout, missing  resubmitted while attempts remain
  invalid (no valid example), when the job's retry_invalid    resubmitted while attempts remain
  failed with any other 4xx (invalid request, context length) permanent: reported, never retried
A retry is a new request with a new custom_id (the attempt number is part of it) in a new shard; the old request
keeps its outcome and is marked `retried`.

A top-up of a chat stage asks for new variants; a top-up of an embeddings stage asks again for the inputs that
still have no vector, one attempt more than max_attempts per round (see `schedule_top_up`).
Every compile renders the job's templates, so it needs the job directory: when it is gone, the work says so
(JobDirMissing, one line) and nothing is recorded; the job waits, and goes on once the directory is back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from batchgen.dataset.coverage import CellCoverage, below_share, stage_coverage
from batchgen.dataset.lineage import seed_candidates
from batchgen.errors import BatchgenError, is_retryable_status
from batchgen.ledger import Ledger
from batchgen.ledger.workspace import Workspace
from batchgen.recipe.compile import CompileResult, compile_stage, read_manifest
from batchgen.recipe.estimates import StageEstimate, template_digest
from batchgen.recipe.pricing import ModelPrice
from batchgen.recipe.spec import EMBEDDINGS, JobSpec, LimitsSpec, ResolvedStage
from batchgen.recipe.variants import cell_assigner, request_count
from batchgen.run import dead_ends
from batchgen.run.learning import stage_estimate

RETRY_FREE = ("expired", "cancelled")
RETRY_CODES = ("rate_limit_exceeded", "server_error", "request_timeout", "missing", "timeout")


def ensure_compiled(ledger: Ledger, workspace: Workspace, spec: JobSpec, stage: ResolvedStage,
                    limits: LimitsSpec | None = None, *, learn: bool = True) -> None:
    """Compile the stage's first attempt and record its shards and requests, once (priced with what earlier jobs
    of the model and template taught, unless `learn` is False)."""
    if ledger.stage_has_shards(spec.name, stage.name):
        return
    spec.require_job_dir(f"compiling stage {stage.name!r}")
    sources = stage_sources(ledger, spec, stage)
    result = compile_stage(spec, stage, shards_dir=workspace.shards_dir, limits=limits, **sources.compile_args())
    with ledger.transaction():
        if not ledger.stage_has_shards(spec.name, stage.name):
            record_compile(ledger, workspace, spec, stage, result, sources, learn=learn)


def record_compile(ledger: Ledger, workspace: Workspace, spec: JobSpec, stage: ResolvedStage,
                   result: CompileResult, sources: Sources | None = None, *, estimate: StageEstimate | None = None,
                   learn: bool = True) -> None:
    """Shard rows (priced with `estimate`, default the stage's as `run/learning` finds it) and one request row per
    manifest line, with the parents it shows (call inside a transaction)."""
    estimate = estimate or stage_estimate(ledger, spec, stage, learn=learn)
    for shard_id, manifest in _insert_shards(ledger, workspace, spec, stage, result, estimate):
        ledger.add_requests(spec.name, stage.name, shard_id, (sources or Sources()).with_parents(manifest))
    ledger.event("compiled", job=spec.name, stage=stage.name, attempt=result.attempt, shards=len(result.shards),
                 requests=result.requests, input_tokens=result.input_tokens)


def _insert_shards(ledger: Ledger, workspace: Workspace, spec: JobSpec, stage: ResolvedStage,
                   result: CompileResult, estimate: StageEstimate) -> Iterator[tuple[str, Iterator[dict[str, Any]]]]:
    """Insert a pending shard row per compiled shard (priced expected, with the estimate's output tokens, and worst
    case; its basis and template recorded; its file relative to the workspace); yield (id, manifest)."""
    price = spec.model_price()
    expected = estimate.output_tokens
    digest = template_digest(spec, stage)
    folder = Path(result.directory).name
    for shard in result.shards:
        shard_id = f"{spec.name}/{stage.name}/{folder}/{shard.number:05d}"
        est = worst = Decimal(0)
        for r in read_manifest(shard.manifest_path):
            est += price.cost(r["input_tokens"], 0, expected)
            worst += price.cost(r["input_tokens"], 0, r["max_tokens"])
        ledger.add_shard(shard_id, spec.name, stage.name, shard, est, worst, workspace.stored(shard.path),
                         basis=estimate.basis, output_tokens=expected, template_digest=digest)
        yield shard_id, read_manifest(shard.manifest_path)


class Sources(NamedTuple):
    """What a stage's requests are made from: for a `from` stage, the valid examples of its source stage in a stable
    order, with the cell each keeps in its children and its lineage ([key, root]); for a first stage, nothing. A
    judge stage's name what each of its requests shows (`shown`, variant -> indices into the examples)."""

    examples: list[dict[str, Any]] | None = None
    cells: list[dict[str, Any]] | None = None
    lineage: list[list[str | None]] | None = None
    shown: dict[int, tuple[int, ...]] | None = None

    def compile_args(self) -> dict[str, Any]:
        return {"sources": self.examples, "source_cells": self.cells, "shown": self.shown}

    def with_parents(self, manifest: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Each manifest line with `parents`, the candidates its request shows: its sources, else its seeds."""
        for line in manifest:
            if self.lineage is not None:
                yield {**line, "parents": [self.lineage[i] for i in line["sources"]]}
            else:
                yield {**line, "parents": seed_candidates(line["seeds"])}


def stage_sources(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> Sources:
    """What the stage is compiled from (see `Sources`)."""
    if stage.source is None:
        return Sources()
    if stage.judges:
        return unjudged_sources(ledger, spec, stage, first=0)
    found = ledger.source_lineage(spec.name, stage.source)
    if not found:
        raise BatchgenError(f"Stage {stage.name!r} of job {spec.name!r} has no valid examples of stage "
                            f"{stage.source!r} to start from")
    return Sources([f[0] for f in found], [f[3] for f in found], [[f[1], f[2]] for f in found])


def unjudged_sources(ledger: Ledger, spec: JobSpec, stage: ResolvedStage, first: int) -> Sources:
    """A judge round: the valid examples of the judge's source that none of its requests has shown yet, in the
    canonical order, examples_per_request a request from variant `first` on (BatchgenError when the first round
    finds none)."""
    assert stage.source is not None
    shown = ledger.judge_shown(spec.name, stage.name)
    found = [f for f in ledger.source_lineage(spec.name, stage.source) if f[1] not in shown]
    if not found and not shown:
        raise BatchgenError(f"Judge stage {stage.name!r} of job {spec.name!r} has no valid examples of stage "
                            f"{stage.source!r} to score")
    e = stage.examples_per_request
    layout = {first + k: tuple(range(k * e, min(k * e + e, len(found)))) for k in range(-(-len(found) // e))}
    return Sources([f[0] for f in found], None, [[f[1], f[2]] for f in found], layout)


def shown_again(ledger: Ledger, spec: JobSpec, stage: ResolvedStage, custom_ids: Iterable[str]) -> Sources:
    """What a judge's retry (or a split shard) of these requests shows: for each, the examples it showed, under its
    variant."""
    rows = ledger.shown_examples(custom_ids)
    variants = ledger.request_variants(list(rows))
    examples: list[dict[str, Any]] = []
    lineage: list[list[str | None]] = []
    layout: dict[int, tuple[int, ...]] = {}
    for custom_id, shown in rows.items():
        layout[variants[custom_id]] = tuple(range(len(examples), len(examples) + len(shown)))
        examples.extend(content for _, _, content in shown)
        lineage.extend([key, root] for key, root, _ in shown)
    return Sources(examples, None, lineage, layout)


def sources_for(ledger: Ledger, spec: JobSpec, stage: ResolvedStage, custom_ids: Iterable[str]) -> Sources:
    """What requests that replace these show: a judge's, the same examples as they did; another stage's, its
    sources (`stage_sources`), which variant indices pick from."""
    return shown_again(ledger, spec, stage, custom_ids) if stage.judges else stage_sources(ledger, spec, stage)


# -- retries -------------------------------------------------------------------------------------------------


def retry_candidates(ledger: Ledger, spec: JobSpec, stage: str,
                     attempts: int | None = None) -> tuple[list[int], list[str]]:
    """(variant indices to resubmit, custom_ids they replace) for a stage whose shards have all ended, each
    variant within `attempts` (default: the job's max_attempts)."""
    latest = ledger.latest_requests(spec.name, stage)
    progressed = ledger.batches_that_ran(spec.name)
    used = attempts_used(ledger, spec, stage, progressed)
    limit = spec.max_attempts if attempts is None else attempts
    variants, replaced = [], []
    for row in latest:
        if not _retryable(row, spec):
            continue
        free = row["status"] in RETRY_FREE and row["batch_id"] in progressed
        if free or used.get(row["variant"], 0) < limit:
            variants.append(row["variant"])
            replaced.append(row["custom_id"])
    return variants, replaced


def attempts_used(ledger: Ledger, spec: JobSpec, stage: str, progressed: set[str]) -> dict[int, int]:
    """Variant -> the attempts it has used up: its requests that ended without a valid example or were retried.

    An expired or cancelled line does not use one up if its batch ran something (`progressed`): a batch that ends
    again and again with nothing done must not be resubmitted for ever.
    """
    used: dict[int, int] = {}
    for variant, batch_id, code in ledger.ended_attempts(spec.name, stage):
        if code in ("batch_expired", "batch_cancelled") and batch_id in progressed:
            continue
        used[variant] = used.get(variant, 0) + 1
    return used


def _retryable(row: dict[str, Any], spec: JobSpec) -> bool:
    status = row["status"]
    if status in RETRY_FREE or status == "missing":
        return True
    if status == "invalid":
        return spec.retry_invalid
    if status == "failed":
        code = row["status_code"]
        return code is None or is_retryable_status(code) or (row["error_code"] or "") in RETRY_CODES
    return False


def schedule_retries(ledger: Ledger, workspace: Workspace, spec: JobSpec, stage: ResolvedStage,
                     limits: LimitsSpec | None = None, attempts: int | None = None, *, learn: bool = True) -> int:
    """Compile and record a retry shard set for what failed in the stage, each variant within `attempts` (default:
    max_attempts); how many requests were resubmitted."""
    variants, replaced = retry_candidates(ledger, spec, stage.name, attempts)
    if not variants:
        return 0
    dead_ends.check(ledger, spec, stage)
    spec.require_job_dir(f"retrying {len(variants)} request(s) of stage {stage.name!r}")
    attempt = ledger.next_attempt(spec.name, stage.name)
    sources = sources_for(ledger, spec, stage, replaced)
    result = compile_stage(spec, stage, shards_dir=workspace.shards_dir, attempt=attempt, indices=variants,
                           limits=limits, **sources.compile_args())
    with ledger.transaction():
        still = retry_candidates(ledger, spec, stage.name, attempts)[1]
        if sorted(still) != sorted(replaced):
            return 0  # another process scheduled these meanwhile
        record_compile(ledger, workspace, spec, stage, result, sources, learn=learn)
        ledger.mark_retried(replaced)
        ledger.event("retry", job=spec.name, stage=stage.name, attempt=attempt, requests=len(variants))
    return len(variants)


# -- top-ups ---------------------------------------------------------------------------------------------------

# How many variant indices a top-up looks through for the cells it asks for: a cell of a cross or weighted strategy
# recurs within one cycle, a cell of a rotate strategy (axes far larger than the job) can take longer.
TOP_UP_SCAN = 1_000_000


@dataclass(frozen=True)
class TopUpNeed:
    """What a stage lacks: valid examples under its target, the cells below their share (the lowest yield first),
    the top-up rounds it had and the next free variant index."""

    short: int
    cells: tuple[CellCoverage, ...]
    rounds: int
    first: int

    @property
    def any(self) -> bool:
        return bool(self.short or self.cells)


def top_up_need(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> TopUpNeed:
    """What the stage still lacks, and where its next top-up starts."""
    base = request_count(spec, stage)
    valid = ledger.valid_example_count(spec.name, stage.name)
    rounds = ledger.top_up_rounds(spec.name, stage.name, base)
    last = ledger.highest_variant(spec.name, stage.name)
    cells = tuple(below_share(stage_coverage(ledger, spec, stage)))
    return TopUpNeed(max(stage.target - valid, 0), cells, rounds, max(base, (last if last is not None else -1) + 1))


def schedule_top_up(ledger: Ledger, workspace: Workspace, spec: JobSpec, stage: ResolvedStage,
                    limits: LimitsSpec | None = None,
                    budget: Callable[[], Decimal | None] = lambda: None, *, learn: bool = True) -> int:
    """A stage that ended below its target, or with cells below their share, retries spent, asks for what it
    lacks with new variants.

    At most `max_top_ups` rounds. Each round asks ceil(missing * overgeneration / yield) requests for every cell
    below its share, the lowest yield first (variants after the last one requested whose cell is theirs), and as
    many for what the target still lacks beyond that (the next variants, whatever their cell); the yield is the
    stage's estimate's (examples_per_request by the prior, the valid examples per answered request once learned,
    see `run/learning`; `learn=False`: the prior). Cut,
    in that order, to what `budget()` (asked only when a top-up is due; None: no budget) covers in the worst case
    (every answer at max_tokens). The caller leaves the later stages' planned cost out of it, so a top-up never
    takes money the rest of the plan may need. How many requests were added (0: none needed, allowed or
    affordable; a stage or cell still short then records why).

    An embeddings stage is topped up by `_top_up_inputs` instead; a judge stage by `_top_up_judged` (it scores
    what its source gained, or tops up the source for what it rejected).
    """
    if stage.judges:
        return _top_up_judged(ledger, workspace, spec, stage, limits, budget, learn)
    if spec.endpoint == EMBEDDINGS:
        return _top_up_inputs(ledger, workspace, spec, stage, limits)
    need = top_up_need(ledger, spec, stage)
    if not need.any:
        if ledger.cell_shortfalls(spec.name, stage.name):  # cells short at a dead end, filled since an unblock
            with ledger.transaction():
                ledger.record_cell_shortfalls(spec.name, stage.name, [], top_ups=need.rounds, reason="")
        return 0
    if need.rounds >= spec.max_top_ups:
        _ends_short(ledger, spec, stage, need, "max_top_ups")
        return 0
    try:
        dead_ends.check(ledger, spec, stage)
    except dead_ends.DeadEnd:
        _ends_short(ledger, spec, stage, need, "dead_end", stage_too=False)
        raise
    spec.require_job_dir(f"topping up stage {stage.name!r} ({_lacks(need)})")
    sources = stage_sources(ledger, spec, stage)
    estimate = stage_estimate(ledger, spec, stage, learn=learn)
    wanted, unplaced = _wanted_indices(spec, stage, need, sources, estimate)
    result, count = _compile_within(ledger, workspace, spec, stage, sources, wanted, limits, budget)
    if result is None:
        _ends_short(ledger, spec, stage, need, "budget" if wanted else "no_variant")
        return 0
    with ledger.transaction():
        if top_up_need(ledger, spec, stage) != need or ledger.open_shards(spec.name, stage.name):
            return 0  # another process moved the stage on meanwhile
        record_compile(ledger, workspace, spec, stage, result, sources, estimate=estimate)
        ledger.event("top_up", job=spec.name, stage=stage.name, attempt=result.attempt, round=need.rounds + 1,
                     missing=need.short, requests=count, first_variant=need.first,
                     cells={c.key: c.missing for c in need.cells}, unplaced=unplaced, basis=estimate.basis,
                     yield_per_request=float(estimate.yield_ or 0))
    return count


def _top_up_judged(ledger: Ledger, workspace: Workspace, spec: JobSpec, stage: ResolvedStage,
                   limits: LimitsSpec | None, budget: Callable[[], Decimal | None], learn: bool) -> int:
    """A judge stage's next round: the examples its source has that no judge request has shown yet (a top-up of the
    source added them) are scored. When none are left to score and the judge's rejections left the source below its
    target, or cells of it below their share, the source is topped up by its own rules (`schedule_top_up`: at most
    max_top_ups rounds, the cells lowest yield first), within the budget less what scoring its new examples may
    cost. How many requests were added."""
    assert stage.source is not None
    source = spec.stage(stage.source)
    reject_unscored(ledger, spec, stage)
    last = ledger.highest_variant(spec.name, stage.name)
    sources = unjudged_sources(ledger, spec, stage, first=0 if last is None else last + 1)
    if not sources.shown:
        retried = schedule_retries(ledger, workspace, spec, source, limits, learn=learn)  # what its top-ups lost
        if retried:
            return retried
        return schedule_top_up(ledger, workspace, spec, source, limits,
                               lambda: _less_judging(ledger, spec, stage, source, budget()), learn=learn)
    spec.require_job_dir(f"scoring the new examples of stage {stage.source!r} in stage {stage.name!r}")
    attempt = ledger.next_attempt(spec.name, stage.name)
    result = compile_stage(spec, stage, shards_dir=workspace.shards_dir, attempt=attempt, indices=list(sources.shown),
                           limits=limits, **sources.compile_args())
    keys = {str(key) for key, _ in sources.lineage or []}
    with ledger.transaction():
        if ledger.open_shards(spec.name, stage.name) or keys & ledger.judge_shown(spec.name, stage.name):
            return 0  # another process scheduled this round meanwhile
        record_compile(ledger, workspace, spec, stage, result, sources, learn=learn)
        ledger.event("judge_round", job=spec.name, stage=stage.name, attempt=attempt, requests=len(sources.shown),
                     examples=len(keys))
    return len(sources.shown)


def reject_unscored(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> None:
    """The examples shown by a judge's requests that ended for good without scores (attempts spent, refused, or
    left so by a job that ended blocked) are rejected: an example leaves the dataset unscored never, and a top-up
    of the source makes it up."""
    assert stage.source is not None
    found = ledger.unscored(spec.name, stage.name)
    if found:
        with ledger.transaction():
            rejected = ledger.reject_judged(spec.name, stage.source, [
                (key, f"Not scored: judge request {custom_id} ended {status}") for key, custom_id, status in found])
            if rejected:
                ledger.event("unscored", job=spec.name, stage=stage.name, examples=rejected)


def _less_judging(ledger: Ledger, spec: JobSpec, judge: ResolvedStage, source: ResolvedStage,
                  left: Decimal | None) -> Decimal | None:
    """The part of `left` a top-up of a judged source may spend: each of its requests at its worst case leaves room
    for scoring the examples it may add, at the judge's worst case."""
    if left is None:
        return None
    price = spec.model_price()
    asking = price.cost(ledger.largest_prompt(spec.name, source.name), 0, source.max_tokens)
    scoring = (price.cost(ledger.largest_prompt(spec.name, judge.name), 0, judge.max_tokens)
               * source.examples_per_request / judge.examples_per_request)
    return left if asking + scoring <= 0 else left * asking / (asking + scoring)


def _lacks(need: TopUpNeed) -> str:
    parts = [f"{need.short} example(s) short of its target"] if need.short else []
    if need.cells:
        parts.append(f"{len(need.cells)} cell(s) below their share")
    return ", ".join(parts)


def _wanted_indices(spec: JobSpec, stage: ResolvedStage, need: TopUpNeed, sources: Sources,
                    estimate: StageEstimate) -> tuple[list[int], list[str]]:
    """The variant indices a round asks for, in the order the budget takes them: each short cell's (the lowest
    yield first), then the next free indices for what the target lacks beyond the cells' shortfall; and the cells
    no index was found for within TOP_UP_SCAN."""
    per_cell = {c.key: estimate.requests_for(c.missing, spec.overgeneration) for c in need.cells}
    found = cell_assigner(spec, stage, sources.cells).indices_for(per_cell, need.first, TOP_UP_SCAN)
    wanted = [index for c in need.cells for index in found[c.key]]
    unplaced = [c.key for c in need.cells if not found[c.key]]
    beyond = need.short - sum(c.missing for c in need.cells)
    if beyond > 0:
        extra = estimate.requests_for(beyond, spec.overgeneration)
        taken, index = set(wanted), need.first
        while extra:
            if index not in taken:
                wanted.append(index)
                extra -= 1
            index += 1
    return wanted, unplaced


def _compile_within(ledger: Ledger, workspace: Workspace, spec: JobSpec, stage: ResolvedStage, sources: Sources,
                    wanted: list[int], limits: LimitsSpec | None, budget: Callable[[], Decimal | None]
                    ) -> tuple[CompileResult | None, int]:
    """Compile the wanted indices, cut (in their order) to what the budget covers at the worst case: first by the
    stage's largest prompt so far, then by each compiled request's own tokens. (None, 0) when nothing fits."""
    price = spec.model_price()
    budget_left = budget() if wanted else None
    if budget_left is not None:
        per_request = price.cost(ledger.largest_prompt(spec.name, stage.name), 0, stage.max_tokens)
        if per_request > 0:
            wanted = wanted[:int(max(budget_left, Decimal(0)) / per_request)]
    attempt = ledger.next_attempt(spec.name, stage.name)
    while wanted:
        result = compile_stage(spec, stage, shards_dir=workspace.shards_dir, attempt=attempt, indices=wanted,
                               limits=limits, **sources.compile_args())
        if budget_left is None:
            return result, len(wanted)
        fits = _prefix_within(result, price, budget_left, wanted)
        if fits == len(wanted):
            return result, fits
        wanted = wanted[:fits]
    return None, 0


def _top_up_inputs(ledger: Ledger, workspace: Workspace, spec: JobSpec, stage: ResolvedStage,
                   limits: LimitsSpec | None) -> int:
    """An embeddings stage below its target asks again for the inputs that still have no vector: each top-up round
    gives every one of them an attempt more than max_attempts, up to max_top_ups rounds. It adds no new variants:
    when the axes cycle they render texts already embedded, which would be paid for and be duplicates. Admission
    keeps the round within the budget, as for any retry. How many requests were resubmitted.
    """
    short = stage.target - ledger.valid_example_count(spec.name, stage.name)
    if short <= 0:
        return 0
    lacking, _ = retry_candidates(ledger, spec, stage.name, attempts=sys.maxsize)
    used = attempts_used(ledger, spec, stage.name, ledger.batches_that_ran(spec.name))
    rounds = max(0, max((used.get(variant, 0) for variant in lacking), default=0) - spec.max_attempts)
    if not lacking:
        _short(ledger, spec, stage, short, rounds, "answered")
        return 0
    if rounds >= spec.max_top_ups:
        _short(ledger, spec, stage, short, rounds, "max_top_ups")
        return 0
    return schedule_retries(ledger, workspace, spec, stage, limits, attempts=spec.max_attempts + rounds + 1)


def _short(ledger: Ledger, spec: JobSpec, stage: ResolvedStage, missing: int, rounds: int, reason: str) -> None:
    """Record that the stage ends below its target, and why (`batchgen show` reports it)."""
    with ledger.transaction():
        ledger.record_shortfall(spec.name, stage.name, target=stage.target, missing=missing, top_ups=rounds,
                                reason=reason)
        ledger.event("short", job=spec.name, stage=stage.name, target=stage.target, missing=missing, top_ups=rounds,
                     reason=reason)


def _ends_short(ledger: Ledger, spec: JobSpec, stage: ResolvedStage, need: TopUpNeed, reason: str,
                stage_too: bool = True) -> None:
    """Record what the stage ends without, and why: its target (when `stage_too`) and the cells below their
    share (`batchgen show` names them)."""
    if need.short and stage_too:
        _short(ledger, spec, stage, need.short, need.rounds, reason)
    if need.cells:
        with ledger.transaction():
            ledger.record_cell_shortfalls(spec.name, stage.name, [
                {"cell_json": c.key, "share": c.share, "valid": c.valid, "requests": c.requests} for c in need.cells],
                top_ups=need.rounds, reason=reason)
            ledger.event("cells_short", job=spec.name, stage=stage.name, cells={c.key: c.missing for c in need.cells},
                         top_ups=need.rounds, reason=reason)


def _prefix_within(result: CompileResult, price: ModelPrice, budget: Decimal, order: list[int]) -> int:
    """How many of the compiled requests, in the given order of their variant indices, fit the budget at their
    worst case."""
    costs = {r["index"]: price.cost(r["input_tokens"], 0, r["max_tokens"])
             for shard in result.shards for r in read_manifest(shard.manifest_path)}
    total, fits = Decimal(0), 0
    for index in order:
        total += costs[index]
        if total > budget:
            break
        fits += 1
    return fits


def split_shard(ledger: Ledger, workspace: Workspace, spec: JobSpec, shard: dict[str, Any],
                limits: LimitsSpec, *, learn: bool = True) -> None:
    """Cut a pending shard that alone exceeds the queued-token cap into smaller ones with the same requests."""
    variants = ledger.shard_variants(shard["id"])
    stage = spec.stage(shard["stage"])
    spec.require_job_dir(f"splitting shard {shard['id']} for the queued-token cap")
    # A folder of its own: the same attempt and variants as a retry or top-up shard would be that shard's folder.
    sources = sources_for(ledger, spec, stage, ledger.shard_custom_ids(shard["id"]))
    result = compile_stage(spec, stage, shards_dir=workspace.shards_dir, attempt=shard["attempt"], indices=variants,
                           limits=limits, label="split", **sources.compile_args())
    with ledger.transaction():
        if (ledger.find_shard(shard["id"]) or {}).get("status") != "pending":
            return
        estimate = stage_estimate(ledger, spec, stage, learn=learn)
        for part_id, manifest in _insert_shards(ledger, workspace, spec, stage, result, estimate):
            ledger.move_requests(part_id, (r["custom_id"] for r in manifest))
        ledger.set_shard_status(shard["id"], "split")
        ledger.event("split", job=spec.name, shard=shard["id"], parts=len(result.shards),
                     max_queued_tokens=limits.max_queued_tokens)
