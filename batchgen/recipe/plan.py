"""The cost plan of a job before a cent is spent: requests, shards, tokens, cost at batch and standard price.

- Input tokens are exact: every request line is rendered and counted as compile would (nothing is written),
  for a job of up to `EXACT_LIMIT` requests. Beyond it, so that a plan answers in seconds at any size, each stage
  of more than `SAMPLE_SIZE` requests is estimated from a stratified sample of `SAMPLE_SIZE` of them, each
  standing for its stratum (`batchgen.recipe.tally`): tokens stay integers and costs exact Decimals, the shards
  are estimated from the totals, and the plan states the sample and the 95 % margin of its input tokens.
  `plan_job(spec, exact=True)` renders every request whatever the size.
  A stage with `from` has no sources before its earlier stage ran, so it is estimated with the seeds
  standing in for them (`exact` is False for it, as for a sampled stage); a judge stage is planned to score as
  many examples as its source asks for (ceil(target x overgeneration)). A json_schema response format adds an
  estimate per request (`format_tokens`, see `tokens.response_format_tokens`): OpenAI bills it by a rule it does
  not publish.
- Expected output tokens per request: the stage's estimate (`batchgen.recipe.estimates`): its prior, from the
  seed examples, or the figure learned from earlier answers of the same model and template when the caller passes
  one (`plan_job(spec, estimates=...)`; `batchgen plan` reads them from the workspace's ledger). Both are shown,
  with where the learned one comes from. Worst case = max_tokens.
- Prompt caching: each chat request after the first is expected to find in the provider's cache the longest prefix
  it shares with an earlier request of the job, at least 1,024 tokens, in steps of 128 (`batchgen.recipe.prefix`);
  those tokens are priced at the cached-input rate in the expected cost (batch and standard). The worst case assumes
  no cached input. A sampled stage matches its sample alone, which can only understate the hits.
- The long-context tier applies per request.
- The budget verdict compares the budget with the worst case first (what the budget guard reserves by
  default).

The budget guard of the pipeline reuses `plan_job` / `estimate_requests`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batchgen.money import format_usd
from batchgen.recipe.compile import ShardInfo
from batchgen.recipe.estimates import StageEstimate, prior_estimate
from batchgen.recipe.model_limits import OutputLimit, output_limit
from batchgen.recipe.prefix import PrefixCache
from batchgen.recipe.pricing import ModelPrice, Rates
from batchgen.recipe.render import max_tokens_param, request_response_format, stand_in_sources
from batchgen.recipe.spec import CHAT, JobSpec, ResolvedStage
from batchgen.recipe.tally import Tally, count_every, count_sample, estimated_shards
from batchgen.recipe.tokens import response_format_tokens
from batchgen.recipe.variants import request_count

MILLION = Decimal(1_000_000)
# A job of up to EXACT_LIMIT requests is rendered and counted in full (1.6 s for the job of BENCHMARKS.md "Plan");
# beyond it each stage of more than SAMPLE_SIZE requests is sampled (see the module docstring).
EXACT_LIMIT = 20_000
SAMPLE_SIZE = 2_000


@dataclass
class Money:
    """Expected and worst-case cost, at batch and at standard (synchronous) price."""

    batch_expected: Decimal = Decimal(0)
    batch_worst: Decimal = Decimal(0)
    standard_expected: Decimal = Decimal(0)
    standard_worst: Decimal = Decimal(0)

    def add(self, other: Money) -> None:
        self.batch_expected += other.batch_expected
        self.batch_worst += other.batch_worst
        self.standard_expected += other.standard_expected
        self.standard_worst += other.standard_worst


@dataclass
class StagePlan:
    """The plan of one stage."""

    name: str
    source: str | None
    target: int
    requests: int
    exact: bool
    input_tokens: int
    expected_output_tokens: int
    worst_output_tokens: int
    cost: Money
    shards: list[ShardInfo] = field(default_factory=list)
    max_tokens: int = 0  # per request (0 on the embeddings endpoint)
    rendered: int = 0  # requests rendered and counted: all of them, or the sample
    input_margin: int = 0  # 95 % margin of input_tokens when sampled, in tokens
    kind: str = "generate"  # or "judge": its target is its source's, which it scores, not examples of its own
    cached_input_tokens: int = 0  # of input_tokens, expected from the provider's prompt cache
    estimate: StageEstimate | None = None  # its output tokens and yield: prior, and learned if known

    @property
    def sampled(self) -> bool:
        return self.rendered < self.requests


@dataclass
class Plan:
    """The plan of a job (see the module docstring)."""

    job: str
    model: str
    endpoint: str
    spec_hash: str
    price: ModelPrice
    budget_usd: Decimal | None
    stages: list[StagePlan]
    format_tokens: int = 0  # estimated prompt tokens of the response format, in every request's input tokens
    output_limit: OutputLimit | None = None  # the model's output-token limit, when batchgen knows it

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.stages)

    @property
    def rendered(self) -> int:
        return sum(s.rendered for s in self.stages)

    @property
    def sampled(self) -> bool:
        return any(s.sampled for s in self.stages)

    @property
    def input_margin(self) -> int:
        """95 % margin of input_tokens over the sampled stages (independent samples: margins add in squares)."""
        return math.ceil(math.sqrt(sum(s.input_margin**2 for s in self.stages)))

    @property
    def counted_text(self) -> str:
        """Whether the tokens were counted on every request or estimated from a sample, for people."""
        if not self.sampled:
            return "exact: every request rendered and counted"
        several = len(self.stages) > 1
        parts = [f"{s.rendered:,} of {s.requests:,} requests" + (f" of stage {s.name}" if several else "")
                 for s in self.stages if s.sampled]
        percent = Decimal(100 * self.input_margin) / (self.input_tokens or 1)
        rest = "; every request of the other stages" if several and not all(s.sampled for s in self.stages) else ""
        return f"estimate: sampled {', '.join(parts)}{rest}; input tokens within ±{percent:.1f} % (95 %)"

    @property
    def max_tokens_text(self) -> str:
        """max_tokens per request, under which name it is sent, and the model's output limit if known."""
        values = sorted({s.max_tokens for s in self.stages})
        param = max_tokens_param(self.model)
        shown = f"{values[0]:,}-{values[-1]:,}" if len(values) > 1 else f"{values[0]:,}"
        sent = "" if param == "max_tokens" else f", sent as {param}"
        limit = self.output_limit
        if limit is None:
            return f"{shown} a request{sent}; {self.model}'s output limit is not known to batchgen, not checked"
        return f"{shown} a request{sent}; {limit.model}'s output limit is {limit.tokens:,}"

    @property
    def target(self) -> int:
        return sum(s.target for s in self.stages if s.kind != "judge")

    @property
    def input_tokens(self) -> int:
        return sum(s.input_tokens for s in self.stages)

    @property
    def expected_output_tokens(self) -> int:
        return sum(s.expected_output_tokens for s in self.stages)

    @property
    def cached_input_tokens(self) -> int:
        return sum(s.cached_input_tokens for s in self.stages)

    @property
    def worst_output_tokens(self) -> int:
        return sum(s.worst_output_tokens for s in self.stages)

    @property
    def cost(self) -> Money:
        total = Money()
        for stage in self.stages:
            total.add(stage.cost)
        return total

    @property
    def verdict(self) -> str:
        """no_budget | within (even at worst case) | expected_within (worst case over) | over."""
        if self.budget_usd is None:
            return "no_budget"
        cost = self.cost
        if cost.batch_worst <= self.budget_usd:
            return "within"
        return "expected_within" if cost.batch_expected <= self.budget_usd else "over"

    @property
    def verdict_text(self) -> str:
        cost, budget = self.cost, self.budget_usd
        if budget is None:
            return "no budget set (budget_usd in job.toml)"
        worst, expected, limit = format_usd(cost.batch_worst), format_usd(cost.batch_expected), format_usd(budget)
        return {
            "within": f"within budget: {worst} worst case <= {limit}",
            "expected_within": f"expected {expected} is within {limit}, but the worst case {worst} (every request "
            "at max_tokens) is over it",
            "over": f"over budget: expected {expected} > {limit}",
        }[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (Decimals stay Decimals; `batchgen.output.dumps` writes them as strings)."""
        cost = self.cost
        target = self.target or 1
        return {
            "job": self.job,
            "model": self.model,
            "endpoint": self.endpoint,
            "spec_hash": self.spec_hash,
            "requests": self.requests,
            "target_examples": self.target,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "format_tokens_per_request": self.format_tokens,
            "expected_output_tokens": self.expected_output_tokens,
            "worst_output_tokens": self.worst_output_tokens,
            "cost_usd": {
                "batch_expected": cost.batch_expected,
                "batch_worst": cost.batch_worst,
                "standard_expected": cost.standard_expected,
                "standard_worst": cost.standard_worst,
                "saving_expected": cost.standard_expected - cost.batch_expected,
            },
            "per_example": {
                "input_tokens": Decimal(self.input_tokens) / target,
                "expected_output_tokens": Decimal(self.expected_output_tokens) / target,
                "batch_cost_usd": cost.batch_expected / target,
            },
            "counted": {
                "exact": not self.sampled,
                "rendered": self.rendered,
                "requests": self.requests,
                "input_tokens_margin": self.input_margin,
                "text": self.counted_text,
            },
            "output_limit": None if self.output_limit is None else {
                "model": self.output_limit.model,
                "tokens": self.output_limit.tokens,
            },
            "budget_usd": self.budget_usd,
            "verdict": self.verdict,
            "verdict_text": self.verdict_text,
            "price": {
                "source": self.price.source,
                "batch": _rates(self.price.batch),
                "standard": _rates(self.price.standard),
            },
            "stages": [_stage_dict(s) for s in self.stages],
        }


def _rates(rates: Rates) -> dict[str, Decimal]:
    return {
        "input_per_1m": rates.input,
        "cached_input_per_1m": rates.cached_input,
        "output_per_1m": rates.output,
    }


def _stage_dict(stage: StagePlan) -> dict[str, Any]:
    return {
        "name": stage.name,
        "kind": stage.kind,
        "from": stage.source,
        "target": stage.target,
        "requests": stage.requests,
        "exact": stage.exact,
        "sampled": stage.sampled,
        "rendered": stage.rendered,
        "input_tokens": stage.input_tokens,
        "cached_input_tokens": stage.cached_input_tokens,
        "input_tokens_margin": stage.input_margin,
        "max_tokens": stage.max_tokens,
        "expected_output_tokens": stage.expected_output_tokens,
        "worst_output_tokens": stage.worst_output_tokens,
        "cost_batch_expected_usd": stage.cost.batch_expected,
        "cost_batch_worst_usd": stage.cost.batch_worst,
        "estimate": None if stage.estimate is None else stage.estimate.to_dict(),
        "shards_estimated": stage.sampled,
        "shards": [
            {"number": s.number, "lines": s.lines, "bytes": s.bytes, "input_tokens": s.input_tokens}
            for s in stage.shards
        ],
    }


def estimate_requests(price: ModelPrice, input_tokens: int, output_tokens: int, max_tokens: int) -> Money:
    """Cost of one request with `input_tokens`, expected `output_tokens` and at worst `max_tokens`."""
    money = Money()
    for batch in (True, False):
        rates = price.rates(input_tokens, batch)
        base = input_tokens * rates.input
        expected = (base + output_tokens * rates.output) / MILLION
        worst = (base + max_tokens * rates.output) / MILLION
        if batch:
            money.batch_expected, money.batch_worst = expected, worst
        else:
            money.standard_expected, money.standard_worst = expected, worst
    return money


def plan_stage(spec: JobSpec, stage: ResolvedStage, price: ModelPrice, *, exact_limit: int | None = EXACT_LIMIT,
               estimate: StageEstimate | None = None, prefixes: PrefixCache | None = None) -> StagePlan:
    """Render the requests of a stage, count their tokens and price them: every request when there are at most
    `exact_limit` (None: always), else a sample of SAMPLE_SIZE (see the module docstring). `estimate`: the stage's
    output figures (default: its prior); `prefixes`: the job's earlier prompts, for the cache estimate."""
    sources = plan_sources(spec, stage)
    count = request_count(spec, stage)
    if exact_limit is None or count <= exact_limit or count <= SAMPLE_SIZE:
        tally = count_every(spec, stage, sources, prefixes)
    else:
        tally = count_sample(spec, stage, sources, count, SAMPLE_SIZE, prefixes)
    estimate = estimate or prior_estimate(spec, stage)
    output = estimate.output_tokens
    worst = stage.max_tokens if spec.endpoint == CHAT else 0
    cost = Money()
    for tokens, weight in tally.by_input.items():
        one = estimate_requests(price, tokens, output, worst)
        cost.add(Money(one.batch_expected * weight, one.batch_worst * weight, one.standard_expected * weight,
                       one.standard_worst * weight))
    _cache_savings(cost, tally, price)
    requests = sum(tally.by_input.values())
    input_tokens = sum(t * w for t, w in tally.by_input.items())
    shards = tally.shards or estimated_shards(spec, stage, requests, tally.bytes, input_tokens)
    exact = stage.source is None and tally.rendered == requests
    return StagePlan(stage.name, stage.source, stage.target, requests, exact, input_tokens, output * requests,
                     worst * requests, cost, shards, worst, tally.rendered, tally.margin, stage.kind,
                     tally.cached_tokens, estimate)


def _cache_savings(cost: Money, tally: Tally, price: ModelPrice) -> None:
    """Take off the expected costs what the cached input tokens save (cached rate instead of input rate)."""
    for (tokens, cached), weight in tally.cached.items():
        batch, standard = price.rates(tokens, True), price.rates(tokens, False)
        cost.batch_expected -= cached * weight * (batch.input - batch.cached_input) / MILLION
        cost.standard_expected -= cached * weight * (standard.input - standard.cached_input) / MILLION


def plan_sources(spec: JobSpec, stage: ResolvedStage) -> list[dict[str, Any]] | None:
    """What a `from` stage is planned with before its source ran: the stand-ins, and for a judge stage as many of
    them (repeated) as the examples it is expected to score."""
    if stage.source is None:
        return None
    stand_ins = stand_in_sources(spec)
    if not stage.judges:
        return stand_ins
    judged = request_count(spec, stage) * stage.examples_per_request
    return [stand_ins[i % len(stand_ins)] for i in range(judged)]


def plan_job(spec: JobSpec, *, exact: bool = False, estimates: Mapping[str, StageEstimate] | None = None) -> Plan:
    """The plan of every stage of a job: exact up to EXACT_LIMIT requests (or with exact=True), else sampled;
    `estimates`: a stage's learned figures by its name (the others plan with their prior)."""
    price = spec.model_price()
    stages = spec.resolved_stages()
    everything = exact or sum(request_count(spec, s) for s in stages) <= EXACT_LIMIT
    prefixes = PrefixCache()
    plans = [plan_stage(spec, s, price, exact_limit=None if everything else SAMPLE_SIZE,
                        estimate=(estimates or {}).get(s.name), prefixes=prefixes) for s in stages]
    format_tokens = response_format_tokens(request_response_format(spec, stages[0]), spec.model)
    limit = output_limit(spec.model) if spec.endpoint == CHAT else None
    return Plan(spec.name, spec.model, spec.endpoint, spec.spec_hash, price, spec.budget_usd, plans, format_tokens,
                limit)


def summary_rows(plan: Plan) -> list[tuple[str, str]]:
    """(label, value) rows of the plan for a table; amounts rounded to the micro-dollar for display only."""
    cost, target = plan.cost, plan.target or 1
    word = "sampled" if plan.sampled else "exact"
    exact = word if all(s.source is None for s in plan.stages) else f"{word}; from-stages estimated with the seeds"
    if plan.format_tokens:
        exact = exact.replace(word, f"messages {word}; {plan.format_tokens} a request estimated for the schema", 1)
    shards = sum(len(s.shards) for s in plan.stages)
    saving = cost.standard_expected - cost.batch_expected
    percent = (saving * 100 / cost.standard_expected).quantize(Decimal(1)) if cost.standard_expected else 0
    return [
        ("job", f"{plan.job} ({plan.spec_hash[:12]})"),
        ("model", f"{plan.model} {plan.endpoint}"),
        (
            "price",
            f"batch {plan.price.batch.input} in / {plan.price.batch.output} out per 1M; {plan.price.source}",
        ),
        ("requests", f"{plan.requests:,} for {plan.target:,} examples"),
        ("counted", plan.counted_text),
        ("shards", f"{shards} (estimated from the sample)" if plan.sampled else str(shards)),
        ("input tokens", f"{plan.input_tokens:,} ({exact})"),
        *([("cached input", _cached_text(plan))] if plan.endpoint == CHAT else []),
        (
            "output tokens",
            f"{plan.expected_output_tokens:,} expected; {plan.worst_output_tokens:,} worst case",
        ),
        *[(f"estimate {s.name}" if len(plan.stages) > 1 else "estimate", s.estimate.text())
          for s in plan.stages if s.estimate is not None and plan.endpoint == CHAT],
        *([("max_tokens", plan.max_tokens_text)] if plan.endpoint == CHAT else []),
        ("batch cost", f"{format_usd(cost.batch_expected)} expected; {format_usd(cost.batch_worst)} worst case"),
        (
            "standard cost",
            f"{format_usd(cost.standard_expected)} expected (batch saves {format_usd(saving)}, {percent} %)",
        ),
        (
            "per example",
            f"{Decimal(plan.input_tokens) / target:.1f} input + "
            f"{Decimal(plan.expected_output_tokens) / target:.1f} output tokens; "
            f"{format_usd(cost.batch_expected / target)}",
        ),
        ("budget", plan.verdict_text),
    ]


def _cached_text(plan: Plan) -> str:
    """The expected cached input tokens and what they save at batch price, per stage when there are several."""
    cached = plan.cached_input_tokens
    if not cached:
        return "none expected (no request shares a prefix of 1,024 tokens with an earlier one)"
    share = Decimal(100 * cached) / (plan.input_tokens or 1)
    stages = "; ".join(f"{s.name} {s.cached_input_tokens:,}" for s in plan.stages) if len(plan.stages) > 1 else ""
    return (f"{cached:,} of the input tokens expected from the prompt cache ({share:.0f} %, shared prefixes"
            f"{': ' + stages if stages else ''}); the worst case assumes none")


def shard_rows(plan: Plan) -> list[dict[str, Any]]:
    """One row per shard: stage, number, lines, MB, input tokens."""
    return [
        {
            "stage": stage.name,
            "shard": s.number,
            "lines": f"{s.lines:,}",
            "MB": f"{s.bytes / 1_000_000:.2f}",
            "input tokens": f"{s.input_tokens:,}",
        }
        for stage in plan.stages
        for s in stage.shards
    ]
