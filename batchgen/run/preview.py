"""`batchgen preview`: a few rendered requests of a stage, sent synchronously before the overnight run and judged as
collect would judge their answers, so that a broken prompt shows in seconds rather than the next morning.

- Which requests: `spread_indices` picks n of the stage's planned variants, spread evenly over the plan and, as far
  as the axes allow, each of another cell; the same ones on every run, since they follow from the plan alone. A
  stage with `from` is rendered from the valid examples its source stage has in the ledger or, before that stage
  has any, from the seeds standing in for them (as `plan` does).
- What it costs: the requests go to the synchronous `/v1/chat/completions`, billed at the standard price (twice
  the batch price). The expected and the worst case are known before anything is sent; each answer's usage is
  priced here (exact Decimal, standard price) and recorded as preview spend (the `previews` table), apart from
  batch spend. The embedded emulator bills nothing, but its usage is priced all the same, as its batches are: a
  preview there is recorded at what it would cost on OpenAI, so that the budget behaves offline as it will online.
- The budget: preview spend counts against the job's `budget_usd` as batch spend does. A preview whose worst case
  does not fit in what the budget leaves is refused before anything is sent, and the run counts what previews spent.
- Judging: each answer goes through `result_lines.judge_answer`, what collect applies to a line of an output file;
  then copies of seeds, repeats of valid examples of earlier stages and repeats inside the preview are rejected,
  as collect rejects them.
- Nothing else changes: no shard, request or batch is made. A job the ledger does not know yet is recorded as
  `previewed`, which `tick` leaves alone and `run` or `submit` starts. Run again, a preview sends its requests
  again, and records what they cost again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from batchgen.dataset.reasons import Reason, Summary
from batchgen.dataset.result_lines import judge_answer
from batchgen.dataset.validate import Deduper, example_key
from batchgen.errors import BackendError, BatchgenError, BudgetExceeded
from batchgen.ledger import Ledger
from batchgen.ledger.states import PREVIEWED
from batchgen.money import format_usd
from batchgen.recipe.estimates import expected_output_tokens
from batchgen.recipe.formats import parse_example, to_turns
from batchgen.recipe.loader import load_spec
from batchgen.recipe.plan import estimate_requests
from batchgen.recipe.pricing import LOCAL_SOURCE, is_loopback_url
from batchgen.recipe.render import Renderer, stand_in_sources
from batchgen.recipe.spec import CHAT, JobSpec, ResolvedStage
from batchgen.recipe.variants import Variant, VariantPlan
from batchgen.run.client import BatchClient, choose_backend
from batchgen.run.collect import earlier_deduper, rules_for
from batchgen.run.session import Session
from batchgen.run.tick import check_backend, check_same_spec, keep_job_dir

DEFAULT_COUNT = 5
MAX_COUNT = 50  # a preview is a handful of requests; more is a batch's work at twice its price
PARALLEL = 8  # requests in flight at once: five answers of a real model come in the time of one
SCAN = 4096  # variants looked at after each evenly spaced start for one of a cell not picked yet


@dataclass(frozen=True)
class PreviewRequest:
    """One request of the preview: the variant it was rendered from and the body a batch line would carry."""

    variant: Variant
    body: dict[str, Any]
    input_tokens: int
    label: str  # names the request in verdicts (a duplicate names the first), as a custom_id names a batch line


@dataclass(frozen=True)
class PreviewPlan:
    """What a preview will send, where, and what it may cost at standard price, before anything is sent."""

    spec: JobSpec
    stage: ResolvedStage
    backend: str
    base_url: str  # where the requests go
    requests: tuple[PreviewRequest, ...]
    planned: int  # requests the stage plans
    sources: str | None  # a `from` stage's examples: "ledger" (its source stage's), "seeds" (standing in), or None
    expected_usd: Decimal
    worst_usd: Decimal

    @property
    def billed(self) -> bool:
        """Whether the backend charges for what is sent (the embedded emulator does not)."""
        return self.backend != "embedded"

    def announcement(self) -> str:
        """The line shown before anything is sent: what goes where, and what it may cost."""
        where = ("the embedded emulator, which bills nothing" if not self.billed
                 else f"backend {self.backend} at {self.base_url}")
        if self.billed and self.spec.model_price().source == LOCAL_SOURCE:
            where += ", free (local server)"
        stand_in = (f"; the seeds stand in for the examples of stage {self.stage.source!r}, which has none yet"
                    if self.sources == "seeds" else "")
        return (f"Preview of {self.spec.name}, stage {self.stage.name}: {len(self.requests)} of its {self.planned} "
                f"requests to {where}, at standard price: {format_usd(self.expected_usd)} expected, at most "
                f"{format_usd(self.worst_usd)}{stand_in}")


@dataclass(frozen=True)
class PreviewExample:
    """One example of an answer with its verdict; `turns` are (role, content) when it fits the format."""

    content: Any
    turns: tuple[tuple[str, str], ...] | None
    valid: bool
    category: str | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"content": self.content, "valid": self.valid, "category": self.category, "reason": self.reason}


@dataclass(frozen=True)
class PreviewAnswer:
    """A request's answer: its usage, its exact cost at standard price, and the verdict on what it held."""

    request: PreviewRequest
    finish_reason: str | None
    tokens: dict[str, int]
    cost_usd: Decimal
    reason: Reason | None  # why the answer as a whole was rejected (no examples to judge), else None
    examples: tuple[PreviewExample, ...]

    @property
    def valid(self) -> int:
        return sum(1 for example in self.examples if example.valid)

    def to_dict(self) -> dict[str, Any]:
        variant = self.request.variant
        return {"variant": variant.index, "cell": variant.cell, "temperature": variant.temperature,
                "input_tokens": self.request.input_tokens, "finish_reason": self.finish_reason,
                "tokens": self.tokens, "cost_usd": self.cost_usd,
                "reason": None if self.reason is None else str(self.reason),
                "examples": [example.to_dict() for example in self.examples]}


@dataclass
class PreviewReport:
    """What a preview found and spent, and what the job's previews spent together."""

    plan: PreviewPlan
    number: int  # the job's preview number: 1 for its first
    answers: list[PreviewAnswer] = field(default_factory=list)
    spent_usd: Decimal = Decimal(0)
    total_usd: Decimal = Decimal(0)  # every preview of the job so far, this one included

    def quality(self) -> Summary:
        """Valid examples over everything the answers held (a rejected answer counts once), with the reasons."""
        summary = Summary()
        for answer in self.answers:
            if answer.reason is not None:
                summary.add(answer.reason)
            for example in answer.examples:
                summary.add(None if example.valid else Reason.parse(example.category or "", example.reason or ""))
        return summary

    def projected(self) -> int:
        """Valid examples the stage's planned requests would give at this preview's yield per request."""
        if not self.answers:
            return 0
        per_request = Fraction(sum(answer.valid for answer in self.answers), len(self.answers))
        return int(per_request * self.plan.planned)

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {"job": plan.spec.name, "stage": plan.stage.name, "preview": self.number, "backend": plan.backend,
                "billed": plan.billed, "sources": plan.sources, "planned_requests": plan.planned,
                "estimate": {"expected_usd": plan.expected_usd, "worst_usd": plan.worst_usd},
                "requests": [answer.to_dict() for answer in self.answers], "quality": self.quality().to_dict(),
                "projected_valid": self.projected(), "target": plan.stage.target, "spent_usd": self.spent_usd,
                "preview_spent_usd": self.total_usd}


# -- which requests ------------------------------------------------------------------------------------------

def spread_indices(plan: VariantPlan, count: int) -> list[int]:
    """`count` variant indices of the stage's plan, in order: from evenly spaced starts, each the first variant
    at or after its start (round the plan) whose cell no earlier pick has, or once every cell is taken the first
    variant not picked yet."""
    total = plan.count
    count = min(count, total)
    chosen: set[int] = set()
    cells: set[str] = set()
    for k in range(count):
        start = k * total // count
        pick = next((index for index in islice(_round(start, total), SCAN)
                     if index not in chosen and _cell(plan, index) not in cells), None)
        if pick is None:
            pick = next(index for index in _round(start, total) if index not in chosen)
        chosen.add(pick)
        cells.add(_cell(plan, pick))
    return sorted(chosen)


def _round(start: int, total: int) -> Iterator[int]:
    """The indices of a plan of `total` requests from `start` on, round to the one before it."""
    return ((start + offset) % total for offset in range(total))


def _cell(plan: VariantPlan, index: int) -> str:
    return json.dumps(plan.cells.cell(index), sort_keys=True)


# -- the plan: render, price, check the budget ---------------------------------------------------------------

def plan_preview(session: Session, job_ref: str | Path, count: int = DEFAULT_COUNT,
                 stage_name: str | None = None) -> PreviewPlan:
    """Render `count` requests of the stage (default: the first) and price them; BudgetExceeded if their worst case
    does not fit in what the job's budget leaves. Connects to the backend first, so that a missing key or an
    emulator that cannot start is said before anything is announced as about to be spent."""
    spec = load_spec(job_ref)
    if spec.endpoint != CHAT:
        raise BatchgenError(f"Job {spec.name!r} is an embeddings job: preview sends chat requests; "
                            f"'batchgen plan {job_ref}' prices it, and its answers are only vectors")
    stage = spec.stage(stage_name)
    if stage.judges:
        raise BatchgenError(f"Stage {stage.name!r} of job {spec.name!r} is a judge stage: it scores the examples of "
                            f"stage {stage.source!r}, so preview that one (--stage {stage.source}); 'batchgen plan "
                            f"{job_ref}' prices the judge")
    row = session.ledger.find_job(spec.name)
    backend = _backend(session, spec, row)
    base_url = session.client(backend).base_url
    spec.served_locally(backend != "embedded" and is_loopback_url(base_url))
    sources, origin = _sources(session.ledger, spec, stage)
    variants = VariantPlan(spec, stage, None if sources is None else len(sources))
    renderer = Renderer(spec, stage, sources)
    requests = []
    for index in spread_indices(variants, count):
        variant = variants.variant(index)
        body, tokens = renderer.body(variant)
        requests.append(PreviewRequest(variant, orjson.loads(body), tokens, f"preview:{stage.name}:{index}"))
    price = spec.model_price()
    output = expected_output_tokens(spec, stage)
    costs = [estimate_requests(price, r.input_tokens, output, stage.max_tokens) for r in requests]
    plan = PreviewPlan(spec, stage, backend, base_url, tuple(requests), variants.count, origin,
                       sum((c.standard_expected for c in costs), Decimal(0)),
                       sum((c.standard_worst for c in costs), Decimal(0)))
    _check_budget(session.ledger, plan, row is not None)
    return plan


def _backend(session: Session, spec: JobSpec, row: dict[str, Any] | None) -> str:
    """The backend a started job runs on (with the same spec); for a job not started, the one chosen now."""
    if row is None or row["status"] == PREVIEWED:
        return choose_backend(session.backend_flag, spec.backend)
    check_same_spec(spec, row)
    check_backend(session, row)
    return str(row["backend"])


def _sources(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> tuple[list[dict[str, Any]] | None, str | None]:
    """A `from` stage's examples to evolve, and where they come from: its source stage's valid examples in the
    ledger, or before there are any the seeds (as `plan` renders it)."""
    if stage.source is None:
        return None, None
    found = ledger.source_examples(spec.name, stage.source)
    return (found, "ledger") if found else (stand_in_sources(spec), "seeds")


def _check_budget(ledger: Ledger, plan: PreviewPlan, known: bool) -> None:
    budget = plan.spec.budget_usd
    if budget is None:
        return
    committed = ledger.committed_usd(plan.spec.name, "worst") if known else Decimal(0)
    if committed + plan.worst_usd > budget:
        left = max(budget - committed, Decimal(0))
        raise BudgetExceeded(
            f"Budget {format_usd(budget)} of job {plan.spec.name!r} has {format_usd(left)} "
            f"left ({format_usd(committed)} committed), and this preview of {len(plan.requests)} request(s) may cost "
            f"up to {format_usd(plan.worst_usd)} at standard price; preview fewer (-n) or raise budget_usd in "
            "job.toml")


# -- sending, judging, recording -----------------------------------------------------------------------------

def send_preview(session: Session, plan: PreviewPlan) -> PreviewReport:
    """Send the plan's requests (several at once), judge the answers, and record them in one transaction with
    what they cost. A request that failed is one BackendError, raised after the answered ones are recorded (they
    were billed)."""
    client = session.client(plan.backend)
    outcomes = _send(client, plan.requests, client.deployment(plan.spec.deployment, plan.spec.model))
    answered = [(request, body) for request, body in zip(plan.requests, outcomes, strict=True)
                if not isinstance(body, BackendError)]
    failed = [outcome for outcome in outcomes if isinstance(outcome, BackendError)]
    report = PreviewReport(plan, 0, judge_answers(session.ledger, plan, answered))
    report.spent_usd = sum((answer.cost_usd for answer in report.answers), Decimal(0))
    if report.answers:
        with session.ledger.transaction():
            register_previewed(session, plan)
            report.number = session.ledger.record_preview(plan.spec.name, _rows(session.client(plan.backend), report))
            session.ledger.event("previewed", job=plan.spec.name, preview=report.number, stage=plan.stage.name,
                                 requests=len(plan.requests), answered=len(report.answers),
                                 valid=sum(answer.valid for answer in report.answers), cost_usd=str(report.spent_usd))
        report.total_usd = session.ledger.preview_spent_usd(plan.spec.name)
    if failed:
        kept = (f"; the {len(report.answers)} answered are recorded as preview {report.number} of the job "
                f"({format_usd(report.spent_usd)} at standard price)" if report.answers else "; nothing was recorded")
        raise BackendError(f"Preview of job {plan.spec.name!r}: {len(failed)} of {len(outcomes)} request(s) failed, "
                           f"the first with: {str(failed[0]).rstrip('.')}{kept}", status_code=failed[0].status_code)
    return report


def _send(client: BatchClient, requests: Sequence[PreviewRequest],
          deployment: str) -> list[dict[str, Any] | BackendError]:
    """Each request's answer, or the BackendError it met, in the requests' order (`deployment`: on Azure)."""
    def one(request: PreviewRequest) -> dict[str, Any] | BackendError:
        try:
            return client.complete(CHAT, request.body, deployment=deployment)
        except BackendError as error:
            return error

    with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL, len(requests)))) as pool:
        return list(pool.map(one, requests))


def judge_answers(ledger: Ledger, plan: PreviewPlan,
                  answered: Sequence[tuple[PreviewRequest, dict[str, Any]]]) -> list[PreviewAnswer]:
    """Each answer judged as collect judges a line of an output file (`judge_answer`), then its valid examples
    checked against the seeds, the valid examples of earlier stages and the examples before it in the preview.

    What collect adds to its judging belongs in one of these two places, so that a preview keeps judging as collect
    does: checks of one answer inside `judge_answer` (through the rules, which the judging worker receives too),
    checks that need the job, such as a judge stage's scores of the valid examples, here."""
    spec = plan.spec
    rules = rules_for(spec, {request.label: request.variant.cell for request, _ in answered})
    deduper = earlier_deduper(ledger, spec, plan.stage.name, rules)
    price = spec.model_price()
    answers = []
    for request, body in answered:
        judged = judge_answer(request.label, {"status_code": 200, "body": body}, spec.format, rules)
        finish, prompt, cached, completion, reasoning, reason, examples = judged[4:]
        tokens = {"prompt": prompt, "cached": cached, "completion": completion, "reasoning": reasoning}
        verdicts = tuple(_verdict(deduper, spec.format, example_key(request.label, position), example)
                         for position, example in enumerate(examples))
        answers.append(PreviewAnswer(request, finish, tokens, price.cost(prompt, cached, completion, batch=False),
                                     None if reason is None else Reason.parse(reason[0], reason[1]), verdicts))
    return answers


def _verdict(deduper: Deduper, fmt: str, key: str, example: tuple[Any, ...]) -> PreviewExample:
    content_json, digest, valid, category, reason = example
    if valid and digest is not None:
        found = deduper.check(digest, key)
        if found is not None:
            valid, category, reason = False, found.category, str(found)
    content = orjson.loads(content_json) if content_json is not None else None
    return PreviewExample(content, _turns(content, fmt), bool(valid), category, reason)


def _turns(content: Any, fmt: str) -> tuple[tuple[str, str], ...] | None:
    """The example's (role, content) turns, if it fits the format's schema."""
    try:
        return tuple((turn.role, turn.content) for turn in to_turns(parse_example(content, fmt)))
    except ValidationError:
        return None


def register_previewed(session: Session, plan: PreviewPlan) -> None:
    """Make sure the ledger knows the job (call inside a transaction): a job it does not know is recorded as
    `previewed` (nothing for `tick` to do); a job only previewed takes its files and backend as they are now; a
    started job is left as it is."""
    ledger, spec = session.ledger, plan.spec
    row = ledger.find_job(spec.name)
    budget = None if spec.budget_usd is None else str(spec.budget_usd)
    if row is None:
        ledger.insert_job(spec.name, spec_hash=spec.spec_hash, spec_json=spec.model_dump_json(by_alias=True),
                          job_dir=str(spec.job_dir.resolve()), status=PREVIEWED, stage=spec.stage().name,
                          backend=plan.backend, budget_usd=budget)
    elif row["status"] == PREVIEWED:
        ledger.set_job(spec.name, spec_hash=spec.spec_hash, spec_json=spec.model_dump_json(by_alias=True),
                       backend=plan.backend, budget_usd=budget)
    else:
        return
    keep_job_dir(session, spec)


def _rows(client: BatchClient, report: PreviewReport) -> list[dict[str, Any]]:
    """The `previews` rows of a report's answers."""
    price = report.plan.spec.model_price()
    return [{"stage": report.plan.stage.name, "variant": answer.request.variant.index,
             "cell_json": json.dumps(answer.request.variant.cell, sort_keys=True), "backend": client.identity,
             "model": report.plan.spec.model, "finish_reason": answer.finish_reason,
             "prompt_tokens": answer.tokens["prompt"], "cached_tokens": answer.tokens["cached"],
             "completion_tokens": answer.tokens["completion"], "reasoning_tokens": answer.tokens["reasoning"],
             "cost_usd": str(answer.cost_usd), "priced_by": price.source, "examples": len(answer.examples),
             "valid": answer.valid} for answer in report.answers]
