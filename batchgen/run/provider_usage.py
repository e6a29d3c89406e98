"""`batchgen ledger reconcile --usage`: the ledger's tokens and money, day by day, against the provider's bill.

Needs an admin key (`OPENAI_ADMIN_KEY`): the organization's Usage and Costs APIs answer nothing else.

- tokens: per UTC day and model, the ledger's batch results (input, cached input, output tokens; answered requests)
  against `GET /organization/usage/completions?batch=true&group_by=model&bucket_width=1d`, every page;
- money: per day, what the ledger recorded (batches at batch price, previews at standard price) against
  `GET /organization/costs` (`bucket_width=1d`), every page.

The organization's usage is everyone's: the provider's batches that the ledger does not know are counted apart, as
spend of other tools (no key of this ledger) or as this ledger's batches not recorded yet (its key: `run` adopts
them), and so are synchronous requests beyond the ledger's previews. What remains, the difference, is reported
for each day and model where it exceeds the tolerance (a share of the larger figure). Read-only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from batchgen.errors import BatchgenError, PricingError
from batchgen.ledger import Ledger
from batchgen.money import format_usd
from batchgen.recipe.pricing import get_price
from batchgen.run.client import BatchClient

ADMIN_KEY = "OPENAI_ADMIN_KEY"
USAGE = "/organization/usage/completions"
COSTS = "/organization/costs"
DAY = 86_400
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass
class Tokens:
    input: int = 0
    cached: int = 0
    output: int = 0
    requests: int = 0

    def add(self, other: Tokens) -> None:
        self.input += other.input
        self.cached += other.cached
        self.output += other.output
        self.requests += other.requests

    def minus(self, *others: Tokens) -> Tokens:
        left = Tokens(self.input, self.cached, self.output, self.requests)
        for other in others:
            left.input -= other.input
            left.cached -= other.cached
            left.output -= other.output
            left.requests -= other.requests
        return left

    def to_dict(self) -> dict[str, int]:
        return {"input": self.input, "cached": self.cached, "output": self.output, "requests": self.requests}


@dataclass
class UsageRow:
    """One day and model: the ledger's tokens, the provider's, what other tools and unrecorded batches account for,
    and the difference left."""

    day: str
    model: str
    ledger: Tokens = field(default_factory=Tokens)
    provider: Tokens = field(default_factory=Tokens)
    other_tools: Tokens = field(default_factory=Tokens)
    unrecorded: Tokens = field(default_factory=Tokens)  # batches with this ledger's key, not recorded yet
    problems: list[str] = field(default_factory=list)

    @property
    def difference(self) -> Tokens:
        return self.provider.minus(self.ledger, self.other_tools, self.unrecorded)

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "model": self.model, "ledger": self.ledger.to_dict(),
                "provider": self.provider.to_dict(), "other_tools": self.other_tools.to_dict(),
                "unrecorded": self.unrecorded.to_dict(), "difference": self.difference.to_dict(),
                "verdict": "differs" if self.problems else "agrees", "problems": self.problems}


@dataclass
class MoneyRow:
    """One day: what the ledger recorded, what the provider bills, what other tools and this ledger's batches not
    recorded yet account for (both priced here)."""

    day: str
    ledger_usd: Decimal = Decimal(0)
    provider_usd: Decimal = Decimal(0)
    other_tools_usd: Decimal = Decimal(0)
    unrecorded_usd: Decimal = Decimal(0)
    problems: list[str] = field(default_factory=list)

    @property
    def explained_usd(self) -> Decimal:
        return self.ledger_usd + self.other_tools_usd + self.unrecorded_usd

    @property
    def difference_usd(self) -> Decimal:
        return self.provider_usd - self.explained_usd

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "ledger_usd": self.ledger_usd, "provider_usd": self.provider_usd,
                "other_tools_usd": self.other_tools_usd, "unrecorded_usd": self.unrecorded_usd,
                "difference_usd": self.difference_usd,
                "verdict": "differs" if self.problems else "agrees", "problems": self.problems}


@dataclass
class UsageAudit:
    since: str
    until: str
    tolerance_pct: Decimal
    tokens: list[UsageRow] = field(default_factory=list)
    money: list[MoneyRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(row.problems for row in self.tokens) and not any(row.problems for row in self.money)

    def summary(self) -> str:
        differs = sum(1 for row in self.tokens if row.problems), sum(1 for row in self.money if row.problems)
        text = (f"Usage {self.since} to {self.until}: {len(self.tokens) - differs[0]} of {len(self.tokens)} "
                f"day-model row(s) and {len(self.money) - differs[1]} of {len(self.money)} day(s) of cost agree with "
                f"the provider within {self.tolerance_pct}%")
        others = sum((row.other_tools_usd for row in self.money), Decimal(0))
        if others:
            text += f"; other tools spent {format_usd(others)} in the organization"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "summary": self.summary(), "since": self.since, "until": self.until,
                "tolerance_pct": self.tolerance_pct, "tokens": [row.to_dict() for row in self.tokens],
                "money": [row.to_dict() for row in self.money], "notes": self.notes}


def usage_audit(ledger: Ledger, client: BatchClient, admin_key: str, *, since: str | None = None,
                until: str | None = None, tolerance_pct: Decimal = Decimal(1)) -> UsageAudit:
    """Compare the ledger with the provider's usage and costs, day by day (see the module docstring)."""
    today = datetime.now(timezone.utc).date().isoformat()
    days = [] if since and until else [line.key["day"] for line in ledger.cost_report(("day",)).lines]
    first = since or min(days, default=today)
    last = until or max([today, *days])  # a provider whose clock runs ahead (the emulator's) still counts
    if last < first:
        raise BatchgenError(f"--until {last} is before --since {first}")
    audit = UsageAudit(first, last, tolerance_pct)
    start = int(datetime.fromisoformat(first).replace(tzinfo=timezone.utc).timestamp())
    end = int((datetime.fromisoformat(last).replace(tzinfo=timezone.utc) + timedelta(days=1)).timestamp())
    ours = ledger.cost_report(("day", "model"), since=first, until=last, only="batches")
    previews = ledger.cost_report(("day", "model"), since=first, until=last, only="previews").lines
    models = {line.key["model"] for line in ours.lines}
    rows: dict[tuple[str, str], UsageRow] = {}

    def row(day: str, model: str) -> UsageRow:
        return rows.setdefault((day, model), UsageRow(day, model))

    for line in ours.lines:
        row(line.key["day"], line.key["model"]).ledger.add(Tokens(line.input_tokens, line.cached_tokens,
                                                                  line.output_tokens, line.answered))
    for day, model, tokens in _provider_usage(client, admin_key, start, end, batch=True):
        row(day, _base_model(model, models)).provider.add(tokens)
    other_money: dict[str, Decimal] = {}
    unrecorded_money: dict[str, Decimal] = {}
    for day, model, tokens, job_name in _unknown_batches(ledger, client, start, end):
        target = row(day, _base_model(model, models))
        (target.unrecorded if job_name else target.other_tools).add(tokens)
        money = unrecorded_money if job_name else other_money
        money[day] = money.get(day, Decimal(0)) + _priced(model, tokens, True, audit, ledger, job_name)
    _synchronous_others(client, admin_key, start, end, previews, other_money, audit)
    audit.tokens = [rows[key] for key in sorted(rows)]
    for usage in audit.tokens:
        usage.problems = _token_problems(usage, tolerance_pct)
    audit.money = _money_rows(ledger, client, admin_key, first, last, start, end, other_money, unrecorded_money,
                              tolerance_pct)
    return audit


def _buckets(client: BatchClient, admin_key: str, path: str, params: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for page in client.organization_pages(path, params, admin_key):
        for bucket in page.get("data") or []:
            if isinstance(bucket, dict):
                yield bucket


def _day(unix: Any) -> str:
    return datetime.fromtimestamp(int(unix), timezone.utc).date().isoformat()


def _provider_usage(client: BatchClient, admin_key: str, start: int, end: int,
                    batch: bool) -> Iterable[tuple[str, str, Tokens]]:
    params = {"start_time": start, "end_time": end, "bucket_width": "1d", "group_by": ["model"],
              "batch": "true" if batch else "false", "limit": 31}
    for bucket in _buckets(client, admin_key, USAGE, params):
        for result in bucket.get("results") or []:
            yield _day(bucket["start_time"]), str(result.get("model") or "-"), Tokens(
                int(result.get("input_tokens") or 0), int(result.get("input_cached_tokens") or 0),
                int(result.get("output_tokens") or 0), int(result.get("num_model_requests") or 0))


def _unknown_batches(ledger: Ledger, client: BatchClient, start: int,
                     end: int) -> Iterable[tuple[str, str, Tokens, str | None]]:
    """The provider's batches in the range that the ledger has not recorded: (day, model, tokens, the job of this
    ledger whose key it carries, None for another tool's)."""
    known, keys = ledger.recorded_batch_ids(), ledger.submission_keys()
    names = {job["name"] for job in ledger.jobs()}
    for batch in client.list_batches():
        when = batch.completed_at or batch.expired_at or batch.cancelled_at
        if batch.id in known or batch.usage is None or when is None or not start <= when < end:
            continue
        metadata = batch.metadata or {}
        key, job_name = metadata.get("batchgen_key", ""), metadata.get("batchgen_job")
        ours = keys.get(key) or (job_name if key and job_name in names else None)
        usage = batch.usage
        cached = usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0
        completed = batch.request_counts.completed if batch.request_counts else 0
        yield _day(when), batch.model or "-", Tokens(usage.input_tokens, cached, usage.output_tokens, completed), ours


def _synchronous_others(client: BatchClient, admin_key: str, start: int, end: int, previews: list[Any],
                        other_money: dict[str, Decimal], audit: UsageAudit) -> None:
    """Synchronous usage beyond the ledger's previews is other tools' spend, priced at standard price."""
    ours = {(line.key["day"], line.key["model"]): Tokens(line.input_tokens, line.cached_tokens, line.output_tokens,
                                                         line.answered) for line in previews}
    for day, model, tokens in _provider_usage(client, admin_key, start, end, batch=False):
        mine = ours.get((day, _base_model(model, {m for _, m in ours})), Tokens())
        left = tokens.minus(mine)
        if left.input > 0 or left.output > 0:
            other_money[day] = other_money.get(day, Decimal(0)) + _priced(model, left, False, audit)


def _priced(model: str, tokens: Tokens, batch: bool, audit: UsageAudit, ledger: Ledger | None = None,
            job: str | None = None) -> Decimal:
    """What these tokens cost: at the job's price for a batch of this ledger's job, else at the known price."""
    try:
        price = ledger.job_price(job, model) if ledger is not None and job else get_price(model)
        cost: Decimal = price.cost(max(tokens.input, 0), max(min(tokens.cached, tokens.input), 0),
                                   max(tokens.output, 0), batch)
    except PricingError:
        who = f"job {job}'s batch not recorded yet" if job else "other tools"
        audit.notes.append(f"{who} used {model}, which has no known price: its spend is not estimated")
        return Decimal(0)
    return cost


def _money_rows(ledger: Ledger, client: BatchClient, admin_key: str, first: str, last: str, start: int, end: int,
                other_money: dict[str, Decimal], unrecorded_money: dict[str, Decimal],
                tolerance_pct: Decimal) -> list[MoneyRow]:
    rows: dict[str, MoneyRow] = {}
    for line in ledger.cost_report(("day",), since=first, until=last).lines:
        rows.setdefault(line.key["day"], MoneyRow(line.key["day"])).ledger_usd += line.cost_usd
    params = {"start_time": start, "end_time": end, "bucket_width": "1d", "limit": 180}
    for bucket in _buckets(client, admin_key, COSTS, params):
        day = _day(bucket["start_time"])
        for result in bucket.get("results") or []:
            amount = (result.get("amount") or {}).get("value") or 0
            rows.setdefault(day, MoneyRow(day)).provider_usd += Decimal(str(amount))
    for day, amount in other_money.items():
        rows.setdefault(day, MoneyRow(day)).other_tools_usd += amount
    for day, amount in unrecorded_money.items():
        rows.setdefault(day, MoneyRow(day)).unrecorded_usd += amount
    money = [rows[day] for day in sorted(rows)]
    for row in money:
        if _beyond(row.difference_usd, max(row.provider_usd, row.explained_usd), tolerance_pct):
            row.problems.append(f"cost: ledger {format_usd(row.ledger_usd)}, provider {format_usd(row.provider_usd)}"
                                + (f", other tools {format_usd(row.other_tools_usd)}" if row.other_tools_usd else "")
                                + (f", not recorded yet {format_usd(row.unrecorded_usd)}" if row.unrecorded_usd
                                   else "")
                                + f": {format_usd(row.difference_usd)} unexplained")
    return [row for row in money if row.ledger_usd or row.provider_usd or row.other_tools_usd or row.unrecorded_usd]


def _token_problems(row: UsageRow, tolerance_pct: Decimal) -> list[str]:
    left, problems = row.difference, []
    explained = Tokens()
    for part in (row.ledger, row.other_tools, row.unrecorded):
        explained.add(part)
    for name in ("input", "cached", "output", "requests"):
        difference, ours, theirs = getattr(left, name), getattr(explained, name), getattr(row.provider, name)
        if _beyond(Decimal(difference), Decimal(max(ours, theirs)), tolerance_pct):
            label = "answered requests" if name == "requests" else f"{name} tokens"
            problems.append(f"{label}: ledger {getattr(row.ledger, name):,}, provider {theirs:,}"
                            + (f", other tools {getattr(row.other_tools, name):,}" if getattr(row.other_tools, name)
                               else "")
                            + (f", not recorded yet {getattr(row.unrecorded, name):,}"
                               if getattr(row.unrecorded, name) else "")
                            + f": {difference:+,} unexplained")
    return problems


def _beyond(difference: Decimal, scale: Decimal, tolerance_pct: Decimal) -> bool:
    return difference != 0 and abs(difference) * 100 > tolerance_pct * abs(scale)


def _base_model(name: str, known: set[str]) -> str:
    """A provider's snapshot name (gpt-4o-mini-2024-07-18) as the ledger's model when it records the alias."""
    if name in known:
        return name
    base = _SNAPSHOT.sub("", name)
    return base if base in known else name


def parse_tolerance(text: str) -> Decimal:
    """`--tolerance` as a percentage: 1, 0.5 or 1%."""
    try:
        value = Decimal(text.strip().removesuffix("%"))
    except ArithmeticError:
        raise BatchgenError(f"--tolerance {text!r}: expected a percentage such as 1 or 0.5") from None
    if not value.is_finite() or value < 0:
        raise BatchgenError(f"--tolerance {text!r}: expected a percentage of 0 or more")
    return value


def usage_table(audit: UsageAudit) -> list[tuple[list[tuple[Any, ...]], tuple[str, ...]]]:
    """The audit as two tables (tokens by day and model; cost by day), each with its headers."""
    def tokens(t: Tokens) -> str:
        return f"{t.input:,} / {t.cached:,} / {t.output:,}"

    token_rows = [(row.day, row.model, tokens(row.ledger), tokens(row.provider),
                   tokens(row.other_tools) if row.other_tools.requests or row.other_tools.input else "-",
                   tokens(row.unrecorded) if row.unrecorded.requests or row.unrecorded.input else "-",
                   "; ".join(row.problems) or "agrees") for row in audit.tokens]
    money_rows = [(row.day, format_usd(row.ledger_usd), format_usd(row.provider_usd),
                   format_usd(row.other_tools_usd) if row.other_tools_usd else "-",
                   format_usd(row.unrecorded_usd) if row.unrecorded_usd else "-",
                   "; ".join(row.problems) or "agrees") for row in audit.money]
    return [(token_rows, ("day", "model", "ledger in/cached/out", "provider", "other tools", "not recorded yet",
                          "verdict")),
            (money_rows, ("day", "ledger cost", "provider cost", "other tools", "not recorded yet", "verdict"))]
