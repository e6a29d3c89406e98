"""Coverage by cell: what each axis cell of a stage asked for and gave, against its share of the stage's target.

A cell's share is floor(target x the requests the plan gives the cell / the stage's planned requests)
(`recipe.variants.cell_shares`): the Task API job's 500 examples, planned as 55 requests over 40 cells, give a cell
of one request a share of 9 and a cell of two requests 18. Per stage and cell, coverage counts the requests sent
(every attempt), the examples they asked for, the valid ones and the yield (valid / asked for); a cell that ended
below its share says why (`ledger.cell_shortfalls`: max_top_ups, budget, dead_end, no_variant).

Who asks: `batchgen show --json` (`coverage`), a top-up (`below_share`: the cells below their share, the lowest
yield first), an export (`examples_by_share`: each cell's share first, then the rest of the target).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from batchgen.ledger import Ledger
from batchgen.ledger.reports import ValidExample
from batchgen.recipe.spec import JobSpec, ResolvedStage
from batchgen.recipe.variants import cell_key, cell_shares


@dataclass(frozen=True)
class CellCoverage:
    """One cell of one stage: its share of the target and what it has."""

    stage: str
    key: str  # the cell as `requests.cell_json` holds it
    share: int
    requests: int  # request lines sent for the cell, every attempt
    requested: int  # the examples those asked for
    valid: int
    short: str | None = None  # why it ended below its share, once the stage has ended there

    @property
    def cell(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.key)
        return value

    @property
    def missing(self) -> int:
        """Valid examples the cell lacks to reach its share."""
        return max(self.share - self.valid, 0)

    @property
    def yield_(self) -> Fraction | None:
        """Valid examples over the examples asked for (None: nothing asked for yet)."""
        return Fraction(self.valid, self.requested) if self.requested else None

    def to_dict(self) -> dict[str, Any]:
        rate = self.yield_
        return {"stage": self.stage, "cell": self.cell, "share": self.share, "requests": self.requests,
                "requested": self.requested, "valid": self.valid, "missing": self.missing,
                "yield": None if rate is None else round(float(rate), 4), "short": self.short}


def stage_coverage(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> list[CellCoverage]:
    """Every cell of the stage: those the plan gives a share, in the order of their first request, then any other
    the ledger has requests of."""
    shares = cell_shares(spec, stage, source_cells(ledger, spec, stage))
    standings = ledger.cell_standings(spec.name, stage.name)
    short = {cell_key(row["cell"]): row["reason"] for row in ledger.cell_shortfalls(spec.name, stage.name)}
    keys = list(shares) + [key for key in standings if key not in shares]
    rows = []
    for key in keys:
        held = standings.get(key, {"requests": 0, "valid": 0})
        rows.append(CellCoverage(stage.name, key, shares.get(key, 0), held["requests"],
                                 held["requests"] * stage.examples_per_request, held["valid"], short.get(key)))
    return rows


def source_cells(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> list[dict[str, Any]] | None:
    """The cells an evolved stage's requests take from their sources (None: a first stage, whose cells are the
    axes')."""
    return None if stage.source is None else ledger.source_cells(spec.name, stage.source)


def job_coverage(ledger: Ledger, spec: JobSpec) -> list[CellCoverage]:
    """The coverage of every stage that has requests, stage by stage (a judge stage makes no examples: none)."""
    return [row for stage in spec.resolved_stages()
            if not stage.judges and ledger.stage_has_shards(spec.name, stage.name)
            for row in stage_coverage(ledger, spec, stage)]


def recorded_coverage(ledger: Ledger, job: str) -> list[CellCoverage]:
    """The coverage of a job from what the ledger holds alone (its spec as registered): for `show`."""
    return job_coverage(ledger, JobSpec.recorded(ledger.job(job)["spec_json"]))


def below_share(rows: list[CellCoverage]) -> list[CellCoverage]:
    """The cells below their share, the lowest yield first (a cell asked for nothing yet first of all); cells of
    one yield in their plan order."""
    short = [row for row in rows if row.missing]
    return sorted(short, key=lambda row: row.yield_ if row.yield_ is not None else Fraction(-1))


def examples_by_share(ledger: Ledger, spec: JobSpec, stage: ResolvedStage) -> Iterator[ValidExample]:
    """The valid examples of the stage an export writes, `stage.target` at most, in variant order: each cell's
    first examples up to its share, and as many more (the earliest first, of any cell) as the target leaves.

    The counts per cell come first from the ledger, so the examples are read once, lazily."""
    shares = cell_shares(spec, stage, source_cells(ledger, spec, stage))
    held = ledger.cell_standings(spec.name, stage.name, exported=True)
    within = sum(min(shares.get(key, 0), counts["valid"]) for key, counts in held.items())
    spare = stage.target - within
    taken: dict[str, int] = {}
    written = 0
    with closing(ledger.valid_examples_for_export(spec.name, stage.name)) as found:
        for example in found:
            if written >= stage.target:
                break
            key = cell_key(example.cell)
            taken[key] = taken.get(key, 0) + 1
            if taken[key] > shares.get(key, 0):
                if spare <= 0:
                    continue
                spare -= 1
            written += 1
            yield example


def coverage_summary(rows: list[CellCoverage]) -> dict[str, dict[str, int]]:
    """Per stage: its cells, and how many of them are at their share."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = out.setdefault(row.stage, {"cells": 0, "at_share": 0})
        entry["cells"] += 1
        entry["at_share"] += row.missing == 0
    return out
