"""A stage's estimates: expected output tokens per request and yield (valid examples per request), the prior
figures from the job's own files and the figures learned from what earlier answers showed.

Prior (nothing observed yet):
- output tokens per request = examples_per_request x the mean tokens of one seed example written as the model
  returns it (compact JSON), plus the `{"examples": [...]}` wrapper, capped at max_tokens; a judge stage's: one
  `{"index", "score", "reason"}` item a shown example (`JUDGMENT_WORDS` words of reason);
- yield = examples_per_request: each request gives what it asks for, and `overgeneration` is the margin a stage
  asks for on top (requests = ceil(examples x overgeneration / yield), for the first compile and every top-up).

Learned (`Observed`, which `batchgen.ledger` reads with one aggregate query a stage): the answers (results from
the output file with status 200: succeeded or invalid, both billed) to requests of the same model and the same
template digest (`template_digest`: the stage's kind, format, examples asked for, system message and template text),
in the same ledger. The job's own answers are used once there are `MIN_ANSWERS` of them; else the other jobs'
answers of that model and digest, pooled, when they have as many; else the prior stays.
- output tokens per request = the 95 % upper bound of the observed mean, ceil(mean + 1.96 x sd / sqrt(n)), capped
  at max_tokens. The budget guard's expected mode prices a shard with it: an upper bound, so that a figure learned
  from a lucky sample does not let the guard admit what the budget cannot pay; the worst case (every answer at
  max_tokens), the guard's default, never learns.
- yield = the valid examples those requests hold now (duplicates, failed checks and judge rejections counted out)
  over the answered requests. Lines that failed, expired or went missing are not counted: they bill nothing and
  are retried, so the variants a top-up asks for give at least this much once their retries are in. A yield of 0
  (nothing valid yet) is not learned: the prior stays and `run/dead_ends` judges the rounds that yield nothing.

Money is never involved here: the figures are integers and Fractions; `plan` and the engine price them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from batchgen.recipe.render import stand_in_sources
from batchgen.recipe.spec import CHAT, JobSpec, ResolvedStage
from batchgen.recipe.tokens import count_text

MIN_ANSWERS = 20  # answered requests a learned figure needs (the first batch of the Task API job has 55)
Z_95 = 1.96
# The words of reason a judge is expected to give per score, for its output estimate.
JUDGMENT_WORDS = 20

PRIOR, LEARNED = "prior", "learned"


def expected_output_tokens(spec: JobSpec, stage: ResolvedStage) -> int:
    """The prior expected completion tokens of one request of a stage (see the module docstring)."""
    if spec.endpoint != CHAT:
        return 0
    if stage.judges:
        item = json.dumps({"index": 0, "score": 7, "reason": " ".join(["word"] * JUDGMENT_WORDS)})
        wrapper = count_text('{"scores":[]}', spec.model) + stage.examples_per_request - 1
        return min(stage.max_tokens, count_text(item, spec.model) * stage.examples_per_request + wrapper)
    examples = list(spec.seeds) or stand_in_sources(spec)
    per_example = Fraction(sum(count_text(_compact(e), spec.model) for e in examples), len(examples))
    wrapper = count_text('{"examples":[]}', spec.model) + stage.examples_per_request - 1
    return min(stage.max_tokens, math.ceil(per_example * stage.examples_per_request) + wrapper)


def _compact(example: dict[str, Any]) -> str:
    return json.dumps(example, ensure_ascii=False, separators=(",", ":"))


def template_digest(spec: JobSpec, stage: ResolvedStage) -> str:
    """What makes two stages' answers alike, as a digest: the stage's kind, the job's format and structured output,
    the examples a request asks for, the system message and the template's text (the model is matched apart)."""
    identity = json.dumps([stage.kind, spec.endpoint, spec.format, spec.prompt.structured_output,
                           stage.examples_per_request, stage.system, spec.template_text(stage)], ensure_ascii=False)
    return hashlib.sha256(identity.encode()).hexdigest()


@dataclass(frozen=True)
class Observed:
    """What the answers of some jobs to requests of one model and template digest showed."""

    jobs: tuple[str, ...]
    answered: int
    completion_tokens: int  # their sum
    completion_squares: int  # the sum of their squares
    valid: int  # valid examples those requests hold

    @classmethod
    def pooled(cls, parts: list[Observed]) -> Observed | None:
        if not parts:
            return None
        return cls(tuple(j for p in parts for j in p.jobs), sum(p.answered for p in parts),
                   sum(p.completion_tokens for p in parts), sum(p.completion_squares for p in parts),
                   sum(p.valid for p in parts))

    def output_bound(self) -> int:
        """ceil(mean + 1.96 x sd / sqrt(n)) of the completion tokens (the sample's sd)."""
        n = self.answered
        mean = Fraction(self.completion_tokens, n)
        variance = max(Fraction(self.completion_squares, n) - mean * mean, Fraction(0)) * n / max(n - 1, 1)
        return math.ceil(mean + Z_95 * math.sqrt(variance / n))


@dataclass(frozen=True)
class StageEstimate:
    """A stage's prior figures, what was observed (None: not enough), and the figures to use."""

    stage: str
    prior_output_tokens: int
    prior_yield: Fraction | None  # None: a stage that makes no examples (judge, embeddings)
    max_tokens: int
    observed: Observed | None = None
    own: bool = False  # observed in this job (else in the jobs named)

    @property
    def basis(self) -> str:
        return PRIOR if self.observed is None else LEARNED

    @property
    def learned_output_tokens(self) -> int | None:
        if self.observed is None:
            return None
        return min(self.max_tokens, self.observed.output_bound())

    @property
    def output_tokens(self) -> int:
        learned = self.learned_output_tokens
        return self.prior_output_tokens if learned is None else learned

    @property
    def learned_yield(self) -> Fraction | None:
        if self.observed is None or self.prior_yield is None or not self.observed.valid:
            return None
        return Fraction(self.observed.valid, self.observed.answered)

    @property
    def yield_(self) -> Fraction | None:
        learned = self.learned_yield
        return self.prior_yield if learned is None else learned

    @property
    def source(self) -> str | None:
        """Where the learned figures come from: "this job", "job X", "jobs X, Y", or None."""
        if self.observed is None:
            return None
        if self.own:
            return "this job"
        jobs = self.observed.jobs
        return f"job{'s' if len(jobs) > 1 else ''} {', '.join(jobs)}"

    def requests_for(self, examples: int, overgeneration: Any) -> int:
        """Requests that give `examples` valid ones at this yield, with the job's overgeneration on top."""
        rate = self.yield_
        assert rate is not None, "a stage without a yield asks for no examples"
        wanted = Fraction(examples) * Fraction(str(overgeneration)) / rate
        return math.ceil(wanted)

    def to_dict(self) -> dict[str, Any]:
        observed = self.observed
        return {
            "basis": self.basis,
            "source": self.source,
            "jobs": list(observed.jobs) if observed else [],
            "answers": observed.answered if observed else 0,
            "prior": {"output_tokens_per_request": self.prior_output_tokens,
                      "yield_per_request": _number(self.prior_yield)},
            "learned": None if observed is None else {
                "output_tokens_per_request": self.learned_output_tokens,
                "mean_output_tokens": round(observed.completion_tokens / observed.answered, 1),
                "yield_per_request": _number(self.learned_yield),
            },
            "output_tokens_per_request": self.output_tokens,
            "yield_per_request": _number(self.yield_),
        }

    def text(self) -> str:
        """One line for people: the prior and the learned figures, and where the learned ones come from."""
        prior = f"prior {self.prior_output_tokens:,} output tokens a request"
        if self.prior_yield is not None:
            prior += f", {_number(self.prior_yield)} valid examples a request"
        if self.observed is None:
            return f"{prior}; learned: none yet (needs {MIN_ANSWERS} answers of this model and template)"
        learned = f"learned {self.learned_output_tokens:,}"
        if self.learned_yield is not None:
            learned += f", {_number(self.learned_yield)}"
        return f"{prior}; {learned} (from {self.source}, {self.observed.answered:,} answers)"


def _number(value: Fraction | None) -> float | None:
    return None if value is None else round(float(value), 2)


def prior_estimate(spec: JobSpec, stage: ResolvedStage) -> StageEstimate:
    """The stage's prior figures, nothing learned."""
    makes = spec.endpoint == CHAT and not stage.judges
    return StageEstimate(stage.name, expected_output_tokens(spec, stage),
                         Fraction(stage.examples_per_request) if makes else None, stage.max_tokens)


def choose(prior: StageEstimate, job: str, by_job: Mapping[str, Observed]) -> StageEstimate:
    """The prior with the figures learned from the job's own answers when it has MIN_ANSWERS of them, else from
    the other jobs' pooled when they have as many, else the prior alone."""
    own = by_job.get(job)
    if own is not None and own.answered >= MIN_ANSWERS:
        return StageEstimate(prior.stage, prior.prior_output_tokens, prior.prior_yield, prior.max_tokens, own, True)
    others = Observed.pooled([seen for name, seen in sorted(by_job.items()) if name != job])
    if others is not None and others.answered >= MIN_ANSWERS:
        return StageEstimate(prior.stage, prior.prior_output_tokens, prior.prior_yield, prior.max_tokens, others)
    return prior
