"""`batchgen ledger check`: does the ledger still add up?

Each check is a query that returns the rows that break a rule; every such row is one problem with a one-line
message. The rules:

- outcomes: a request has at most one result row, a result belongs to a known request, a request's status
  agrees with whether it has a result, and each variant of a stage has at most one final outcome (earlier attempts
  are `retried`);
- collection: every request of a collected batch has exactly one result from that batch;
- money: a collected batch's `actual_cost_usd` is the exact (Decimal) sum of its results' `cost_usd`, and every
  result's cost (and its cost at standard price) equals its usage priced again (results priced by another price
  table are counted, not re-priced);
  so does every preview request's, at standard price;
- files: every shard's input file exists, and so do the downloaded result files of collected batches (paths the
  ledger records relative to the workspace are looked for in the workspace in use);
- submissions: no intent is still pending when its batch is recorded, every done intent's batch is recorded, and
  no idempotency key was submitted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batchgen.errors import BatchgenError
from batchgen.ledger.store import Ledger
from batchgen.ledger.workspace import Workspace
from batchgen.recipe.pricing import ModelPrice

OUTCOMES = ("succeeded", "invalid", "failed", "expired", "cancelled", "missing", "rejected", "retried")
_IN = ",".join(f"'{s}'" for s in OUTCOMES)


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass
class CheckReport:
    ledger: str
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    not_repriced: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        counts = ", ".join(f"{n} {name}" for name, n in self.checked.items())
        extra = f"; {self.not_repriced} result(s) priced by another price table not re-priced" \
            if self.not_repriced else ""
        if self.clean:
            return f"Ledger {self.ledger} is clean: {counts}{extra}"
        return f"Ledger {self.ledger}: {len(self.problems)} problem(s) in {counts}{extra}"

    def to_dict(self) -> dict[str, Any]:
        return {"ledger": self.ledger, "clean": self.clean, "problems": [p.to_dict() for p in self.problems],
                "checked": self.checked, "not_repriced": self.not_repriced}


def check_ledger(ledger: Ledger, workspace: Workspace) -> CheckReport:
    """Run every check; the report lists each problem found."""
    report = CheckReport(str(ledger.path))
    report.checked = {name: int(ledger.scalar(f"SELECT count(*) FROM {name}"))
                      for name in ("requests", "results", "batches", "shards", "intents", "previews")}
    for problem in (*_outcomes(ledger), *_collection(ledger), *_batch_costs(ledger), *_files(ledger, workspace),
                    *_intents(ledger)):
        report.problems.append(problem)
    report.problems.extend(_result_costs(ledger, report))
    report.problems.extend(_preview_costs(ledger, report))
    return report


def _rows(ledger: Ledger, sql: str) -> Iterator[tuple[Any, ...]]:
    yield from ledger._execute(sql)


def _outcomes(ledger: Ledger) -> Iterator[Problem]:
    for custom_id, n in _rows(ledger, "SELECT custom_id, count(*) FROM results GROUP BY custom_id HAVING count(*) > 1"):
        yield Problem("duplicate_result", f"request {custom_id} has {n} results")
    for custom_id, batch in _rows(ledger, "SELECT s.custom_id, s.batch_id FROM results s LEFT JOIN requests r "
                                          "ON r.custom_id = s.custom_id WHERE r.custom_id IS NULL"):
        yield Problem("unknown_request", f"result of batch {batch} names an unknown request {custom_id}")
    for custom_id, status in _rows(ledger, f"SELECT r.custom_id, r.status FROM requests r WHERE r.status IN ({_IN}) "
                                           "AND NOT EXISTS (SELECT 1 FROM results s WHERE s.custom_id = r.custom_id)"):
        yield Problem("outcome_without_result", f"request {custom_id} is {status} but has no result")
    for custom_id, status in _rows(ledger, f"SELECT r.custom_id, r.status FROM requests r WHERE r.status NOT IN "
                                           f"({_IN}) AND EXISTS (SELECT 1 FROM results s "
                                           "WHERE s.custom_id = r.custom_id)"):
        yield Problem("result_without_outcome", f"request {custom_id} has a result but is still {status}")
    for job, stage, variant, n in _rows(
            ledger, "SELECT r.job, r.stage, r.variant, count(*) FROM requests r JOIN results s "
                    "ON s.custom_id = r.custom_id WHERE r.status != 'retried' GROUP BY r.job, r.stage, r.variant "
                    "HAVING count(*) > 1"):
        yield Problem("several_outcomes", f"variant {variant} of {job}/{stage} has {n} final outcomes")


def _collection(ledger: Ledger) -> Iterator[Problem]:
    for custom_id, batch in _rows(ledger, "SELECT r.custom_id, b.id FROM batches b JOIN requests r "
                                          "ON r.batch_id = b.id WHERE b.collected = 1 AND NOT EXISTS "
                                          "(SELECT 1 FROM results s WHERE s.custom_id = r.custom_id "
                                          "AND s.batch_id = b.id)"):
        yield Problem("missing_result", f"request {custom_id} of collected batch {batch} has no result from it")
    for custom_id, batch, other in _rows(ledger, "SELECT s.custom_id, s.batch_id, r.batch_id FROM results s "
                                                 "JOIN requests r ON r.custom_id = s.custom_id "
                                                 "WHERE r.batch_id IS NOT s.batch_id"):
        yield Problem("result_batch_mismatch",
                      f"result of request {custom_id} comes from batch {batch}, the request was sent in {other}")


def _batch_costs(ledger: Ledger) -> Iterator[Problem]:
    for batch, actual in _rows(ledger, "SELECT id, actual_cost_usd FROM batches WHERE collected = 1"):
        total = ledger.batch_spent_usd(batch)
        try:
            recorded = Decimal(actual) if actual is not None else None
        except ArithmeticError:
            recorded = None
        if recorded != total:
            yield Problem("batch_cost", f"batch {batch} cost ${actual} but its results add up to ${total}")


def _result_costs(ledger: Ledger, report: CheckReport) -> Iterator[Problem]:
    prices: dict[tuple[str, str], ModelPrice | None] = {}
    cursor = ledger._execute(
        "SELECT s.custom_id, s.prompt_tokens, s.cached_tokens, s.completion_tokens, s.cost_usd, s.priced_by, "
        "sh.model, s.job, s.standard_cost_usd FROM results s JOIN requests r ON r.custom_id = s.custom_id "
        "JOIN shards sh ON sh.id = r.shard_id")
    for custom_id, prompt, cached, completion, cost, priced_by, model, job, standard in cursor:
        try:
            recorded = Decimal(cost)
        except ArithmeticError:
            yield Problem("result_cost", f"request {custom_id} has a cost that is not a number: {cost!r}")
            continue
        if priced_by is None:
            if recorded != 0 or prompt or completion:
                yield Problem("result_cost", f"request {custom_id} has usage or a cost (${cost}) but no price")
            continue
        if (model, job) not in prices:
            prices[(model, job)] = _price(ledger, job, model)
        price = prices[(model, job)]
        if price is None or price.source != priced_by:
            report.not_repriced += 1
            continue
        expected = price.cost(prompt, cached, completion)
        if expected != recorded:
            yield Problem("result_cost", f"request {custom_id} cost ${cost} but its usage prices at ${expected}")
        at_standard = price.cost(prompt, cached, completion, batch=False)
        if standard is not None and _decimal(standard) != at_standard:
            yield Problem("result_cost", f"request {custom_id} records ${standard} at standard price but its usage "
                                         f"prices at ${at_standard}")


def _preview_costs(ledger: Ledger, report: CheckReport) -> Iterator[Problem]:
    """Each preview request's cost is its usage priced again at standard price (the synchronous endpoint's)."""
    prices: dict[tuple[str, str], ModelPrice | None] = {}
    for row in ledger.preview_costs():
        key = (row["model"], row["job"])
        if key not in prices:
            prices[key] = _price(ledger, row["job"], row["model"])
        price = prices[key]
        try:
            recorded = Decimal(row["cost_usd"])
        except ArithmeticError:
            yield Problem("preview_cost", f"preview request {row['id']} of {row['job']} has a cost that is not a "
                                          f"number: {row['cost_usd']!r}")
            continue
        if price is None or price.source != row["priced_by"]:
            report.not_repriced += 1
            continue
        expected = price.cost(row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"], batch=False)
        if expected != recorded:
            yield Problem("preview_cost", f"preview request {row['id']} of {row['job']} cost ${row['cost_usd']} "
                                          f"but its usage prices at ${expected} (standard price)")


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except ArithmeticError:
        return None


def _price(ledger: Ledger, job: str, model: str) -> ModelPrice | None:
    """The job's price of the model (its price file as the ledger kept it), or None when none is known now."""
    try:
        return ledger.job_price(job, model)
    except BatchgenError:
        return None


def _files(ledger: Ledger, workspace: Workspace) -> Iterator[Problem]:
    for shard, stored in _rows(ledger, "SELECT id, path FROM shards"):
        path = workspace.locate(stored)
        if not path.is_file():
            yield Problem("missing_file", f"shard {shard}: input file {path} does not exist")
    for job, batch, output, error in _rows(ledger, "SELECT job, id, output_file_id, error_file_id FROM batches "
                                                   "WHERE collected = 1"):
        for kind, file_id in (("output", output), ("error", error)):
            # The name collect.download_results gives a downloaded result file.
            path = workspace.results_dir / job / f"{batch}.{kind}.jsonl"
            if file_id and not path.is_file():
                yield Problem("missing_file", f"batch {batch}: {kind} file {path} does not exist")


def _intents(ledger: Ledger) -> Iterator[Problem]:
    for key, shard, batch in _rows(
            ledger, "SELECT i.idempotency_key, i.shard_id, b.id FROM intents i JOIN batches b ON "
                    "(b.id = i.batch_id OR json_extract(b.batch_json, '$.metadata.batchgen_key') = "
                    "i.idempotency_key) WHERE i.status = 'pending'"):
        yield Problem("pending_intent", f"intent {key} of shard {shard} is pending but batch {batch} is recorded")
    for key, batch in _rows(ledger, "SELECT i.idempotency_key, i.batch_id FROM intents i WHERE i.status = 'done' "
                                    "AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = i.batch_id)"):
        yield Problem("unrecorded_batch", f"intent {key} is done but its batch {batch} is not recorded")
    for key, n in _rows(ledger, "SELECT json_extract(batch_json, '$.metadata.batchgen_key') AS k, count(*) "
                                "FROM batches WHERE k IS NOT NULL GROUP BY k HAVING count(*) > 1"):
        yield Problem("duplicate_batch", f"idempotency key {key} was submitted as {n} batches")
