"""Jobs side by side: the lesson's quality-vs-cost table ("GPT-4o vs GPT-4o-mini, few-shot vs many-shot, with a
validation pass") from what the ledger recorded of each job instead of from estimates.

For each job and each of its stages: the settings that make a strategy (model, examples and seeds per request,
temperatures), what was asked (requests that have their outcome, times the examples each asked for), what came
back (examples found in the answers, valid ones, duplicates), the review pass rate, and the money: the exact cost
at batch price and the cost per valid example (exact, to the nano-dollar). Rates are shares to 4 places, None where
there is nothing to divide by.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from batchgen.dataset.reasons import DUPLICATE, NEAR_DUPLICATE, UNCHANGED_EVOLUTION
from batchgen.dataset.review import review_summary
from batchgen.ledger import Ledger
from batchgen.money import NANO, format_usd
from batchgen.recipe.spec import JobSpec

# The rejection categories that count as near-duplicates (`dataset/near`, `run/near_dedupe`): an example nearly
# repeating an earlier one or a seed, and an evolution nearly equal to its own parent. Exact duplicates are
# `duplicate`.
NEAR_DUPLICATE_CATEGORIES: tuple[str, ...] = (NEAR_DUPLICATE, UNCHANGED_EVOLUTION)


@dataclass
class Figures:
    """What a job, or one of its stages, asked for, got and cost."""

    requests: int = 0  # requests that have their outcome, every attempt counted
    requested: int = 0  # examples those requests asked for
    found: int = 0  # examples found in the answers
    valid: int = 0
    duplicates: int = 0  # exact duplicates
    near_duplicates: int = 0
    cost_usd: Decimal = Decimal(0)
    review: dict[str, Any] = field(default_factory=dict)

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.requested += other.requested
        self.found += other.found
        self.valid += other.valid
        self.duplicates += other.duplicates
        self.near_duplicates += other.near_duplicates
        self.cost_usd += other.cost_usd

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "requested": self.requested, "found": self.found, "valid": self.valid,
                "yield": share(self.valid, self.requested), "duplicates": self.duplicates,
                "duplicate_rate": share(self.duplicates, self.found),
                "near_duplicate_rate": share(self.near_duplicates, self.found),
                "review_pass_rate": self.review.get("pass_rate"), "reviewed": self.review.get("reviewed", 0),
                "accepted": self.review.get("accepted", 0), "cost_usd": self.cost_usd,
                "cost_per_valid_usd": per_example(self.cost_usd, self.valid)}


@dataclass
class StageFigures(Figures):
    name: str = ""
    examples_per_request: int = 0
    seeds_per_request: int = 0
    temperatures: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "examples_per_request": self.examples_per_request,
                "seeds_per_request": self.seeds_per_request, "temperatures": list(self.temperatures),
                **super().to_dict()}


@dataclass
class JobFigures(Figures):
    job: str = ""
    status: str = ""
    model: str = ""
    seconds: int | None = None  # from the first batch created to the last one completed, as the provider says
    stages: list[StageFigures] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "status": self.status, "model": self.model, "seconds": self.seconds,
                **super().to_dict(), "stages": [stage.to_dict() for stage in self.stages]}


def share(part: int, whole: int) -> float | None:
    """part / whole to 4 places, None when whole is 0."""
    return round(part / whole, 4) if whole else None


def per_example(cost: Decimal, examples: int) -> Decimal | None:
    """The exact cost of one example, rounded to the nano-dollar (half to even); None for no examples."""
    return (cost / examples).quantize(NANO, rounding=ROUND_HALF_EVEN) if examples else None


def compare_jobs(ledger: Ledger, specs: Iterable[JobSpec]) -> list[JobFigures]:
    """The figures of each job, in the order given."""
    return [job_figures(ledger, spec) for spec in specs]


def job_figures(ledger: Ledger, spec: JobSpec) -> JobFigures:
    """One job's figures, stage by stage in the spec's order, and in all."""
    requests = ledger.answered_requests_by_stage(spec.name)
    verdicts = ledger.example_verdicts_by_stage(spec.name)
    costs = ledger.cost_by_stage(spec.name)
    review = review_summary(ledger, spec.name)
    started, ended = ledger.batch_span(spec.name)
    figures = JobFigures(job=spec.name, status=ledger.job(spec.name)["status"], model=spec.model,
                         seconds=ended - started if started is not None and ended is not None else None,
                         review=review)
    for stage in spec.resolved_stages():
        counts = {} if stage.judges else verdicts.get(stage.name, {})  # a judge asks for scores, not examples
        asked = requests.get(stage.name, 0)
        found = StageFigures(
            requests=asked, requested=0 if stage.judges else asked * stage.examples_per_request,
            found=sum(counts.values()),
            valid=counts.get(None, 0), duplicates=counts.get(DUPLICATE, 0),
            near_duplicates=sum(counts.get(category, 0) for category in NEAR_DUPLICATE_CATEGORIES),
            cost_usd=costs.get(stage.name, Decimal(0)), review=review["stages"].get(stage.name, {}),
            name=stage.name, examples_per_request=stage.examples_per_request,
            seeds_per_request=stage.seeds_per_request, temperatures=stage.temperatures)
        figures.stages.append(found)
        figures.add(found)
    return figures


def table_rows(jobs: Sequence[JobFigures]) -> list[list[str]]:
    """The comparison as people read it: one row per figure, one column per job (headers: "", then the jobs)."""
    dicts = [job.to_dict() for job in jobs]
    rows: list[tuple[str, Any]] = [
        ("model", lambda j: j["model"]),
        ("status", lambda j: j["status"]),
        ("stages", lambda j: ", ".join(s["name"] for s in j["stages"])),
        ("examples per request", lambda j: _distinct(s["examples_per_request"] for s in j["stages"])),
        ("seeds per request", lambda j: _distinct(s["seeds_per_request"] for s in j["stages"])),
        ("temperatures", lambda j: _distinct(t for s in j["stages"] for t in s["temperatures"])),
        ("requests", lambda j: f"{j['requests']:,}"),
        ("examples requested", lambda j: f"{j['requested']:,}"),
        ("valid examples", lambda j: f"{j['valid']:,}"),
        ("yield (valid / requested)", lambda j: _percent(j["yield"])),
        ("exact duplicates", lambda j: _percent(j["duplicate_rate"])),
        ("near-duplicates", lambda j: _percent(j["near_duplicate_rate"])),
        ("review pass rate", lambda j: _percent(j["review_pass_rate"])
         + (f" ({j['accepted']}/{j['reviewed']})" if j["reviewed"] else "")),
        ("cost at batch price", lambda j: format_usd(j["cost_usd"])),
        ("cost per valid example", lambda j: "-" if j["cost_per_valid_usd"] is None
         else format_usd(j["cost_per_valid_usd"])),
        ("batch time", lambda j: "-" if j["seconds"] is None else _duration(j["seconds"])),
    ]
    return [[label, *(str(render(job)) for job in dicts)] for label, render in rows]


def _distinct(values: Iterable[Any]) -> str:
    """The different values in the order they first appear: `5, 10`."""
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return ", ".join(str(value) for value in seen) or "-"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds / 3600:.1f}h"
