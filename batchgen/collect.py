"""Collect a finished batch: stream its output and error files, join each line to its request by `custom_id`
(never by position), price it, validate what it generated, and record it all in one ledger transaction.

Every request of the batch ends with exactly one result row:
  output file, HTTP 2xx     -> succeeded (at least one valid example) or invalid (none)
  error file, HTTP 4xx/5xx  -> failed (the model endpoint said no; not billed)
  error file, no response   -> expired / cancelled (batch_expired / batch_cancelled) or failed
  in neither file           -> missing
A line whose custom_id is not one of the batch's requests, or repeats one already answered, is recorded as an
event and otherwise ignored. A file that is not JSONL raises and leaves the ledger untouched; the file is removed so
that the next collect downloads it again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from batchgen import pricing
from batchgen.client import BatchClient
from batchgen.crashpoints import crash_point
from batchgen.errors import BackendError
from batchgen.ledger import Ledger, utcnow
from batchgen.spec import JobSpec
from batchgen.validate import Deduper, ResponseVerdict, Rules, example_key, validate_response
from batchgen.workspace import Workspace

CHUNK = 2000
ERROR_STATUS = {"batch_expired": "expired", "batch_cancelled": "cancelled"}


@dataclass
class CollectReport:
    batch_id: str
    outcomes: Counter[str] = field(default_factory=Counter)
    examples_valid: int = 0
    examples_total: int = 0
    cost_usd: Decimal = Decimal(0)
    unknown_ids: int = 0
    repeated_ids: int = 0


def rules_for(spec: JobSpec) -> Rules:
    v = spec.validate_
    return Rules.from_values(patterns=v.response_patterns, role_order=v.role_order == "alternate",
                             min_turns=v.min_turns, max_turns=v.max_turns, dedupe=v.dedupe,
                             reject_seed_copies=v.reject_seed_copies)


def earlier_deduper(ledger: Ledger, spec: JobSpec, stage: str, rules: Rules) -> Deduper:
    """Seed copies, and repeats of valid examples of the job's *earlier* stages.

    Duplicates inside the stage being collected are settled afterwards by `dedupe_stage`, which does not depend on
    the order in which output lines or batches arrive.
    """
    known = {row[0]: f"{row[1]}#{row[2]}" for row in ledger.execute(
        "SELECT content_hash, custom_id, position FROM examples WHERE job = ? AND stage != ? AND valid = 1 "
        "AND content_hash IS NOT NULL ORDER BY id", [spec.name, stage])}
    return Deduper.for_rules(rules, spec.format, spec.seeds, known=known)


def dedupe_stage(ledger: Ledger, job: str, stage: str) -> None:
    """Mark repeats inside a stage, keeping the first in canonical order (variant, attempt, position).

    Run after every collection of the stage: a batch collected later may hold an earlier twin of an example
    that was valid so far, so the stage's duplicates are settled again from scratch each time.
    """
    ledger.execute("UPDATE examples SET valid = 1, category = NULL, reason = NULL, duplicate_of = NULL "
                   "WHERE job = ? AND stage = ? AND category = 'duplicate'", [job, stage])
    ledger.execute(
        """
        UPDATE examples SET valid = 0, category = 'duplicate', reason = 'Duplicate: ' || d.first_key,
               duplicate_of = d.first_key
        FROM (
            SELECT e.id,
                   row_number() OVER w AS rank,
                   first_value(e.custom_id || '#' || e.position) OVER w AS first_key
            FROM examples e JOIN requests r ON r.custom_id = e.custom_id
            WHERE e.job = ? AND e.stage = ? AND e.valid = 1 AND e.content_hash IS NOT NULL
            WINDOW w AS (PARTITION BY e.content_hash ORDER BY r.variant, r.attempt, e.position)
        ) AS d
        WHERE examples.id = d.id AND d.rank > 1
        """, [job, stage])


def download_results(client: BatchClient, workspace: Workspace, job: str, batch: dict[str, Any]) -> list[Path]:
    """Download the batch's output and error files (each once; a present file is complete)."""
    paths = []
    for kind in ("output", "error"):
        file_id = batch[f"{kind}_file_id"]
        if not file_id:
            continue
        target = workspace.results_dir / job / f"{batch['id']}.{kind}.jsonl"
        if not target.exists():
            client.download(file_id, target)
        paths.append(target)
    return paths


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise BackendError(f"Result file {path} is corrupt at line {number}: {error}") from error
            if not isinstance(row, dict) or "custom_id" not in row:
                raise BackendError(f"Result file {path} is corrupt at line {number}: not a batch result line")
            yield number, row


class _Collector:
    """The state of one batch's collection inside its transaction."""

    def __init__(self, ledger: Ledger, spec: JobSpec, batch: dict[str, Any]):
        self.ledger, self.spec, self.batch = ledger, spec, batch
        self.rules = rules_for(spec)
        self.stage = ledger.scalar("SELECT stage FROM shards WHERE id = ?", [batch["shard_id"]])
        self.deduper = earlier_deduper(ledger, spec, self.stage, self.rules)
        self.price = pricing.get_price(spec.model, job_dir=spec.job_dir)
        self.pending: dict[str, tuple[str, str]] = {
            row[0]: (row[1], row[2]) for row in ledger.execute(
                "SELECT custom_id, stage, cell_json FROM requests WHERE batch_id = ?", [batch["id"]])}
        self.report = CollectReport(batch["id"])
        self.now = utcnow()
        self.results: list[tuple[Any, ...]] = []
        self.examples: list[tuple[Any, ...]] = []
        self.statuses: list[tuple[str, str]] = []

    def add(self, row: dict[str, Any]) -> None:
        custom_id = row["custom_id"]
        if custom_id not in self.pending:
            seen = self.ledger.scalar("SELECT 1 FROM results WHERE custom_id = ?", [custom_id])
            if seen or any(r[0] == custom_id for r in self.results):
                self.report.repeated_ids += 1
            else:
                self.report.unknown_ids += 1
                self.ledger.event("unknown_custom_id", job=self.spec.name, batch_id=self.batch["id"],
                                  custom_id=custom_id)
            return
        stage, cell_json = self.pending.pop(custom_id)
        response = row.get("response")
        if response is not None and 200 <= int(response.get("status_code") or 0) < 300:
            self._success(custom_id, stage, cell_json, response)
        else:
            self._failure(custom_id, row, response)
        if len(self.results) >= CHUNK:
            self.flush()

    def _success(self, custom_id: str, stage: str, cell_json: str, response: dict[str, Any]) -> None:
        body = response.get("body") or {}
        usage = body.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
        cost = self.price.cost(prompt, cached, completion)
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        finish = choice.get("finish_reason")
        verdict = validate_response(message.get("content"), finish, self.spec.format, self.rules, None,
                                    custom_id=custom_id, refusal=message.get("refusal"))
        verdict = self._check_earlier(verdict, custom_id)
        self._examples(custom_id, stage, cell_json, verdict)
        status = "succeeded" if verdict.valid_count else "invalid"
        self.results.append((custom_id, self.batch["id"], self.spec.name, "output", response.get("status_code"),
                             None, None, finish, prompt, cached, completion, reasoning, str(cost),
                             self.price.source, response.get("request_id"), self.now))
        self.statuses.append((status, custom_id))
        self.report.outcomes[status] += 1
        self.report.cost_usd += cost

    def _check_earlier(self, verdict: ResponseVerdict, custom_id: str) -> ResponseVerdict:
        """Seed copies and repeats of earlier stages; the Deduper is told nothing new (see dedupe_stage)."""
        examples = []
        for position, example in enumerate(verdict.examples):
            digest = example.content_hash
            if example.valid and digest is not None and (digest in self.deduper.known or self.deduper.is_seed(digest)):
                example = self.deduper.admit(example, example_key(custom_id, position))
            examples.append(example)
        return ResponseVerdict(verdict.reason, examples, verdict.parsed)

    def _examples(self, custom_id: str, stage: str, cell_json: str, verdict: ResponseVerdict) -> None:
        job = self.spec.name
        if verdict.reason is not None:
            self.examples.append((job, stage, custom_id, -1, None, None, cell_json, 0, verdict.reason.category,
                                  str(verdict.reason), None))
            self.report.examples_total += 1
            return
        for position, (raw, example) in enumerate(zip(verdict.parsed.examples, verdict.examples)):
            reason = example.reason
            self.examples.append((job, stage, custom_id, position, orjson.dumps(raw).decode(),
                                  example.content_hash, cell_json, int(example.valid),
                                  reason.category if reason else None, str(reason) if reason else None,
                                  example.duplicate_of))
            self.report.examples_total += 1
            self.report.examples_valid += int(example.valid)

    def _failure(self, custom_id: str, row: dict[str, Any], response: dict[str, Any] | None) -> None:
        error = row.get("error") or {}
        if response is not None:
            inner = ((response.get("body") or {}).get("error") or {})
            code, message, status = inner.get("code") or inner.get("type"), inner.get("message"), "failed"
        else:
            code, message = error.get("code"), error.get("message")
            status = ERROR_STATUS.get(str(code), "failed")
        self.results.append((custom_id, self.batch["id"], self.spec.name, "error",
                             response.get("status_code") if response else None, code, message, None,
                             0, 0, 0, 0, "0", None, response.get("request_id") if response else None, self.now))
        self.statuses.append((status, custom_id))
        self.report.outcomes[status] += 1

    def missing(self) -> None:
        for custom_id in list(self.pending):
            self.results.append((custom_id, self.batch["id"], self.spec.name, "missing", None, "missing",
                                 "in neither the output nor the error file", None, 0, 0, 0, 0, "0", None,
                                 None, self.now))
            self.statuses.append(("missing", custom_id))
            self.report.outcomes["missing"] += 1
        self.pending.clear()

    def flush(self) -> None:
        self.ledger.db.conn.executemany(
            "INSERT INTO results (custom_id, batch_id, job, source, status_code, error_code, error_message, "
            "finish_reason, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_usd, "
            "priced_by, request_id, collected_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.results)
        crash_point("ingest")
        self.ledger.db.conn.executemany(
            "INSERT INTO examples (job, stage, custom_id, position, content_json, content_hash, cell_json, valid, "
            "category, reason, duplicate_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self.examples)
        self.ledger.db.conn.executemany("UPDATE requests SET status = ? WHERE custom_id = ?", self.statuses)
        self.results, self.examples, self.statuses = [], [], []


def collect_batch(ledger: Ledger, client: BatchClient, workspace: Workspace, spec: JobSpec,
                  batch: dict[str, Any]) -> CollectReport:
    """Collect one terminal batch (a second call for the same batch does nothing and says so)."""
    paths = download_results(client, workspace, spec.name, batch)
    try:
        with ledger.transaction():
            if ledger.scalar("SELECT collected FROM batches WHERE id = ?", [batch["id"]]):
                return CollectReport(batch["id"])
            collector = _Collector(ledger, spec, batch)
            for path in paths:
                for _, row in _lines(path):
                    collector.add(row)
            collector.missing()
            collector.flush()
            if collector.rules.dedupe != "none":
                dedupe_stage(ledger, spec.name, collector.stage)
            report = collector.report
            ledger.execute("UPDATE batches SET collected = 1, actual_cost_usd = ?, updated_utc = ? WHERE id = ?",
                           [str(report.cost_usd), utcnow(), batch["id"]])
            ledger.execute("UPDATE shards SET status = 'done' WHERE id = ?", [batch["shard_id"]])
            ledger.event("collected", job=spec.name, batch_id=batch["id"], outcomes=dict(report.outcomes),
                         examples_valid=report.examples_valid, examples_total=report.examples_total,
                         cost_usd=str(report.cost_usd), unknown_ids=report.unknown_ids,
                         repeated_ids=report.repeated_ids)
    except BackendError:
        for path in paths:
            path.unlink(missing_ok=True)
        raise
    return report
