"""`batchgen costs`: where every cent went, from the ledger alone, grouped by job, model, day, batch, stage, cell or
estimate basis.

Each line adds up, exactly (Decimal), the results the ledger recorded and the previews it sent:

- requests: result rows (every outcome line of a collected batch, answered or not) and preview requests;
- tokens: input, cached input, output and reasoning (reasoning is part of output, as the API counts it);
- cost: what was paid, at batch price for batches and at standard price for previews, as recorded when collected;
- standard: the same tokens at the standard (synchronous) price, priced when collected by the same price; results
  collected before batchgen recorded it are priced now by the job's price (`repriced` counts them);
- saving: standard - cost;
- estimated: what the collected batches were expected to cost (their shard's estimate at submission), next to
  `estimated_actual`, what those batches cost: the estimate error is theirs alone (previews have no estimate). A
  batch's estimate is shared equally by its requests when lines are grouped by cell (a batch mixes cells);
- sources: the price source (and version) of each price used.

The basis of a batch is how its expected cost was estimated (`batchgen.recipe.estimates`): `prior` (from the job's
files) or `learned` (from answers already collected); `--by basis` shows the estimate error of each, so whether
learning made the estimates better. Previews have none (`-`).

The day of a batch result is the UTC day its batch completed at the provider (else ended: expired, cancelled,
failed), as the provider's Usage API counts it; of a preview, the day it was sent. `--since` and `--until` are
inclusive days. Batches not collected yet have no results: they are counted apart, with their estimate.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from batchgen.errors import BatchgenError, PricingError
from batchgen.ledger.base import Store
from batchgen.money import format_usd

GROUPINGS = ("job", "model", "day", "batch", "stage", "cell", "basis")
PICO = Decimal("0.000000000001")
PREVIEW = "preview"  # the batch key of preview requests (sent synchronously, outside any batch)


@dataclass
class CostLine:
    """The figures of one group (or of the total)."""

    key: dict[str, Any]
    requests: int = 0
    answered: int = 0  # of the requests, those answered (an output line, or a preview's answer): what is billed
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    standard_usd: Decimal = Decimal(0)
    estimated_usd: Decimal = Decimal(0)
    estimated_actual_usd: Decimal = Decimal(0)
    repriced: int = 0  # results whose standard price was not recorded and is priced now
    sources: set[str] = field(default_factory=set)
    shares: dict[str, int] = field(default_factory=dict)  # batch id -> its results in this line (for the estimate)

    @property
    def saving_usd(self) -> Decimal:
        return self.standard_usd - self.cost_usd

    @property
    def error_pct(self) -> Decimal | None:
        """(actual - estimated) / estimated in percent, over the collected batches; None without an estimate."""
        if not self.estimated_usd:
            return None
        return ((self.estimated_actual_usd - self.estimated_usd) * 100 / self.estimated_usd).quantize(Decimal("0.01"))

    def add(self, other: CostLine) -> None:
        for name in ("requests", "answered", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens",
                     "cost_usd", "standard_usd", "estimated_usd", "estimated_actual_usd", "repriced"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.sources |= other.sources
        for batch, count in other.shares.items():
            self.shares[batch] = self.shares.get(batch, 0) + count

    def estimate(self, batches: dict[str, tuple[str, str, Decimal, int, str]]) -> None:
        """Set the estimate from the batches' estimates: whole for a batch all of whose results are in the line, else
        its share by results (to the pico-dollar); `estimated_actual_usd` is what those batches cost here."""
        total = Decimal(0)
        for batch, count in self.shares.items():
            estimate, results = batches[batch][2], batches[batch][3]
            total += estimate if count == results else (estimate * count / results).quantize(PICO)
        self.estimated_usd = total

    def to_dict(self) -> dict[str, Any]:
        return {**self.key, "requests": self.requests, "answered": self.answered, "input_tokens": self.input_tokens,
                "cached_tokens": self.cached_tokens, "output_tokens": self.output_tokens,
                "reasoning_tokens": self.reasoning_tokens, "cost_usd": self.cost_usd,
                "standard_usd": self.standard_usd, "saving_usd": self.saving_usd,
                "estimated_usd": self.estimated_usd, "estimated_actual_usd": self.estimated_actual_usd,
                "estimate_error_pct": self.error_pct, "repriced": self.repriced, "sources": sorted(self.sources)}


@dataclass
class CostReport:
    by: tuple[str, ...]
    lines: list[CostLine]
    total: CostLine
    in_flight: dict[str, Any]  # {"batches": n, "estimated_usd": Decimal}: submitted, not collected yet
    since: str | None = None
    until: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"by": list(self.by), "since": self.since, "until": self.until,
                "lines": [line.to_dict() for line in self.lines], "total": self.total.to_dict(),
                "in_flight": self.in_flight}


def parse_day(text: str | None, option: str) -> str | None:
    """A `--since`/`--until` value as an ISO day (YYYY-MM-DD; a date-time is cut to its UTC day)."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BatchgenError(f"{option} {text!r}: expected a day as YYYY-MM-DD (or an ISO date-time)") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.date().isoformat()


def parse_groupings(text: str) -> tuple[str, ...]:
    """`--by` as a tuple of groupings: one name or several joined by commas (`day,model`)."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in GROUPINGS]
    if not names or unknown:
        raise BatchgenError(f"--by {text!r}: choose from {', '.join(GROUPINGS)} (several joined by commas)")
    return names


class CostQueries(Store):
    def cost_report(self, by: tuple[str, ...] = ("job",), *, job: str | None = None, since: str | None = None,
                    until: str | None = None, only: str | None = None) -> CostReport:
        """The ledger's spend grouped `by` (see the module docstring), of one job or all, within the days given;
        `only="batches"` or `only="previews"` keeps one kind of spend."""
        if job is not None and self.scalar("SELECT 1 FROM jobs WHERE name = ?", [job]) is None:
            raise BatchgenError(f"No job {job!r} in ledger {self.path}; run 'batchgen jobs list'")
        groups: dict[tuple[Any, ...], CostLine] = {}
        batches = self._batch_facts(job)
        fine = (self._batch_lines(batches, job, since, until) if only != "previews" else iter(()),
                self._preview_lines(job, since, until) if only != "batches" else iter(()))
        for line in (line for lines in fine for line in lines):
            key = tuple(_key_value(line.key[name]) for name in by)
            group = groups.get(key)
            if group is None:
                group = groups[key] = CostLine({name: line.key[name] for name in by})
            group.add(line)
        lines = [groups[key] for key in sorted(groups, key=lambda k: tuple(str(v) for v in k))]
        total = CostLine({name: None for name in by})
        for line in lines:
            total.add(line)
        for line in (*lines, total):
            line.estimate(batches)
        return CostReport(by, lines, total, self._in_flight(job), since, until)

    # -- the finest lines: one per (job, model, day, batch, stage, cell) ------------------------------------------
    def _batch_lines(self, batches: dict[str, tuple[str, str, Decimal, int, str]], job: str | None, since: str | None,
                     until: str | None) -> Iterator[CostLine]:
        lines: dict[tuple[str, ...], CostLine] = {}
        standard_now = _StandardNow(self)
        where, params = ("WHERE r.job = ?", [job]) if job else ("", [])
        for (job_name, batch_id, stage, cell, prompt, cached, completion, reasoning, cost, standard,
             priced_by, source) in self._execute(
                "SELECT r.job, r.batch_id, q.stage, q.cell_json, r.prompt_tokens, r.cached_tokens, "
                "r.completion_tokens, r.reasoning_tokens, r.cost_usd, r.standard_cost_usd, r.priced_by, r.source "
                f"FROM results r JOIN requests q ON q.custom_id = r.custom_id {where}", params):
            facts = batches.get(batch_id)
            if facts is None:
                continue
            model, day = facts[0], facts[1]
            if (since and day < since) or (until and day > until):
                continue
            fine = (job_name, model, day, batch_id, stage, cell)
            line = lines.get(fine)
            if line is None:
                line = lines[fine] = _line(job_name, model, day, batch_id, stage, cell, facts[4])
                line.shares[batch_id] = 0
            line.shares[batch_id] += 1
            _add_tokens(line, prompt, cached, completion, reasoning, cost, priced_by)
            line.answered += source == "output"
            if standard is None and (prompt or completion):
                standard = standard_now.cost(job_name, model, prompt, cached, completion)
                line.repriced += 1
            line.standard_usd += Decimal(standard or 0)
        for line in lines.values():
            line.estimated_actual_usd = line.cost_usd
            yield line

    def _batch_facts(self, job: str | None) -> dict[str, tuple[str, str, Decimal, int, str]]:
        """batch id -> (model, day, estimated cost, results recorded, estimate basis) of each collected batch."""
        where, params = ("AND b.job = ?", [job]) if job else ("", [])
        counts = dict(self._execute("SELECT batch_id, count(*) FROM results GROUP BY batch_id").fetchall())
        facts = {}
        for batch_id, model, completed_at, batch_json, est, collected_utc, basis in self._execute(
                "SELECT b.id, s.model, b.completed_at, b.batch_json, b.est_cost_usd, b.updated_utc, "
                "s.estimate_basis FROM batches b JOIN shards s ON s.id = b.shard_id "
                f"WHERE b.collected = 1 {where}", params):
            facts[batch_id] = (model, _batch_day(completed_at, batch_json, collected_utc), Decimal(est),
                               int(counts.get(batch_id, 0)), basis)
        return facts

    def _preview_lines(self, job: str | None, since: str | None, until: str | None) -> Iterator[CostLine]:
        where, params = ("WHERE job = ?", [job]) if job else ("", [])
        lines: dict[tuple[str, ...], CostLine] = {}
        for job_name, model, at, stage, cell, prompt, cached, completion, reasoning, cost, priced_by in self._execute(
                "SELECT job, model, at_utc, stage, cell_json, prompt_tokens, cached_tokens, completion_tokens, "
                f"reasoning_tokens, cost_usd, priced_by FROM previews {where}", params):
            day = str(at)[:10]
            if (since and day < since) or (until and day > until):
                continue
            key = (job_name, model, day, stage, cell)
            line = lines.get(key)
            if line is None:
                line = lines[key] = _line(job_name, model, day, PREVIEW, stage, cell, "-")
            _add_tokens(line, prompt, cached, completion, reasoning, cost, priced_by)
            line.answered += 1
            line.standard_usd += Decimal(cost)  # a preview is paid at standard price
        yield from lines.values()

    def _in_flight(self, job: str | None) -> dict[str, Any]:
        where, params = ("AND job = ?", [job]) if job else ("", [])
        rows = self._execute(f"SELECT est_cost_usd FROM batches WHERE collected = 0 {where}", params).fetchall()
        return {"batches": len(rows), "estimated_usd": sum((Decimal(r[0]) for r in rows), Decimal(0))}


class _StandardNow:
    """The standard price of results collected before batchgen recorded it: the job's price as known now."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._prices: dict[tuple[str, str], Any] = {}

    def cost(self, job: str, model: str, prompt: int, cached: int, completion: int) -> Decimal:
        price = self._prices.get((job, model))
        if price is None:
            try:
                price = self._prices[(job, model)] = self._store.job_price(job, model)
            except PricingError as error:
                raise BatchgenError(f"Cannot price the standard cost of job {job}'s results: {error}") from None
        cost: Decimal = price.cost(prompt, cached, completion, batch=False)
        return cost


def _line(job: str, model: str, day: str, batch: str, stage: str, cell_json: str, basis: str) -> CostLine:
    return CostLine({"job": job, "model": model, "day": day, "batch": batch, "stage": stage,
                     "cell": json.loads(cell_json), "basis": basis})


def _add_tokens(line: CostLine, prompt: int, cached: int, completion: int, reasoning: int, cost: str,
                priced_by: str | None) -> None:
    line.requests += 1
    line.input_tokens += prompt
    line.cached_tokens += cached
    line.output_tokens += completion
    line.reasoning_tokens += reasoning
    line.cost_usd += Decimal(cost)
    if priced_by:
        line.sources.add(priced_by)


def _batch_day(completed_at: int | None, batch_json: str, collected_utc: str) -> str:
    """The UTC day the batch completed at the provider, else ended there, else the day it was collected."""
    moment = completed_at
    if moment is None:
        batch = json.loads(batch_json)
        moment = next((batch[k] for k in ("expired_at", "cancelled_at", "failed_at") if batch.get(k)), None)
    if moment is None:
        return collected_utc[:10]
    return datetime.fromtimestamp(int(moment), timezone.utc).date().isoformat()


def _key_value(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def cell_text(cell: dict[str, Any] | None) -> str:
    """A cell for a table: `axis=value` pairs, or `-` for a request without axes."""
    return " ".join(f"{k}={v}" for k, v in sorted(cell.items())) if cell else "-"


TABLE_HEADERS = ("requests", "input", "cached", "output", "reasoning", "cost", "standard", "saving", "estimated",
                 "error")


def table_rows(report: CostReport) -> list[tuple[Any, ...]]:
    """The report as table rows (the grouping's values, then TABLE_HEADERS), the total last."""

    def figures(line: CostLine) -> tuple[Any, ...]:
        error = line.error_pct
        return (f"{line.requests:,}", f"{line.input_tokens:,}", f"{line.cached_tokens:,}", f"{line.output_tokens:,}",
                f"{line.reasoning_tokens:,}", format_usd(line.cost_usd), format_usd(line.standard_usd),
                format_usd(line.saving_usd), format_usd(line.estimated_usd), "-" if error is None else f"{error:+}%")

    rows = [(*(cell_text(v) if name == "cell" else str(v) for name, v in line.key.items()), *figures(line))
            for line in report.lines]
    return [*rows, ("total", *("" for _ in report.by[1:]), *figures(report.total))]


def footer(report: CostReport) -> list[str]:
    """What the table cannot say: the price sources, results priced now, batches in flight."""
    lines = [f"Prices: {'; '.join(sorted(report.total.sources)) or '-'}"]
    if report.total.repriced:
        lines.append(f"{report.total.repriced} result(s) were collected before batchgen recorded standard prices: "
                     "their standard price is today's")
    if report.in_flight["batches"]:
        lines.append(f"In flight: {report.in_flight['batches']} batch(es) not collected yet, estimated "
                     f"{format_usd(report.in_flight['estimated_usd'])}")
    return lines


def csv_text(report: CostReport) -> str:
    """The lines as CSV, one row each (the total is left out, so a script can add the lines up)."""
    buffer = io.StringIO()
    columns = [*report.by, *(name for name in report.total.to_dict() if name not in GROUPINGS)]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for line in report.lines:
        row = line.to_dict()
        if "cell" in row:
            row["cell"] = cell_text(row["cell"])
        row["sources"] = "; ".join(row["sources"])
        writer.writerow(row)
    return buffer.getvalue()
