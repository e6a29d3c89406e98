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

import gc
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any

from batchgen.crashpoints import crash_point
from batchgen.dataset.result_lines import Judged, judged_lines
from batchgen.dataset.validate import Deduper, Rules, example_key
from batchgen.errors import BackendError
from batchgen.ledger import Ledger, utcnow
from batchgen.ledger.workspace import Workspace
from batchgen.recipe import pricing
from batchgen.recipe.spec import JobSpec
from batchgen.run.client import BatchClient

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


def stage_hashes(ledger: Ledger, job: str, stage: str) -> set[str]:
    """Hashes of the stage's examples that passed every check but dedupe (valid ones and duplicates)."""
    return {h for (h,) in ledger.execute(
        "SELECT content_hash FROM examples WHERE job = ? AND stage = ? AND content_hash IS NOT NULL AND "
        "(valid = 1 OR category = 'duplicate')", [job, stage])}


def dedupe_stage(ledger: Ledger, job: str, stage: str, candidates: Iterable[str]) -> None:
    """Mark repeats inside a stage, keeping the first in canonical order (variant, attempt, position).

    Run after every collection of the stage, with the hashes that can have changed: those the batch brought
    twice, or brought again after an earlier batch. A batch collected later may hold an earlier twin of an example
    that was valid so far, so each such hash is settled again from scratch; the result does not depend on the
    order in which lines or batches arrive.
    """
    candidates = list(candidates)
    if not candidates:
        return
    ledger.execute("CREATE TEMP TABLE IF NOT EXISTS dedupe_candidates (hash TEXT PRIMARY KEY)")
    ledger.execute("DELETE FROM dedupe_candidates")
    ledger.db.conn.executemany("INSERT OR IGNORE INTO dedupe_candidates VALUES (?)", ((h,) for h in candidates))
    ledger.execute("UPDATE examples SET valid = 1, category = NULL, reason = NULL, duplicate_of = NULL "
                   "WHERE job = ? AND stage = ? AND category = 'duplicate' AND content_hash IN "
                   "(SELECT hash FROM dedupe_candidates)", [job, stage])
    ledger.execute(
        """
        UPDATE examples SET valid = 0, category = 'duplicate', reason = 'Duplicate: ' || d.first_key,
               duplicate_of = d.first_key
        FROM (
            SELECT e.id,
                   row_number() OVER w AS rank,
                   first_value(e.custom_id || '#' || e.position) OVER w AS first_key
            FROM examples e JOIN requests r ON r.custom_id = e.custom_id
            WHERE e.job = ? AND e.stage = ? AND e.valid = 1
              AND e.content_hash IN (SELECT hash FROM dedupe_candidates)
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


class _Collector:
    """The state of one batch's collection inside its transaction."""

    def __init__(self, ledger: Ledger, spec: JobSpec, batch: dict[str, Any]):
        self.ledger, self.spec, self.batch = ledger, spec, batch
        self.rules = rules_for(spec)
        self.stage = ledger.scalar("SELECT stage FROM shards WHERE id = ?", [batch["shard_id"]])
        self.deduper = earlier_deduper(ledger, spec, self.stage, self.rules)
        self.price = pricing.get_price(spec.model, job_dir=spec.job_dir)
        self.pending: dict[str, tuple[str, int]] = {  # custom_id -> (stage, rowid)
            row[0]: (row[1], row[2]) for row in ledger.execute(
                "SELECT custom_id, stage, rowid FROM requests WHERE batch_id = ?", [batch["id"]])}
        self.report = CollectReport(batch["id"])
        self.track_hashes = self.rules.dedupe != "none"
        self.prior = stage_hashes(ledger, spec.name, self.stage) if self.track_hashes else set()
        self.seen: set[int] = set()  # hash() of each valid hash of this batch
        self.candidates: set[str] = set()  # valid hashes this batch brings twice, or again after the stage had it
        self.now = utcnow()
        # Rows to insert, kept apart by shape: binding None costs sqlite3 far more than any other value, so the
        # common rows (a success, a valid example) leave their NULL columns out of the statement.
        self.succeeded: list[tuple[Any, ...]] = []
        self.results: list[tuple[Any, ...]] = []
        self.accepted: list[tuple[Any, ...]] = []
        self.examples: list[tuple[Any, ...]] = []
        self.statuses: list[tuple[str, int]] = []  # (status, requests.rowid), written last in rowid order
        self.flushed = 0  # len(statuses) at the last flush

    def add(self, judged: Judged) -> None:
        kind, custom_id = judged[0], judged[1]
        if custom_id not in self.pending:
            seen = self.ledger.scalar("SELECT 1 FROM results WHERE custom_id = ?", [custom_id])
            if seen or any(r[0] == custom_id for r in self.succeeded + self.results):
                self.report.repeated_ids += 1
            else:
                self.report.unknown_ids += 1
                self.ledger.event("unknown_custom_id", job=self.spec.name, batch_id=self.batch["id"],
                                  custom_id=custom_id)
            return
        stage, rowid = self.pending.pop(custom_id)
        if kind == "ok":
            self._success(judged, stage, rowid)
        else:
            self._failure(judged, rowid)
        if len(self.statuses) >= self.flushed + CHUNK:
            self.flush()

    def _success(self, judged: Judged, stage: str, rowid: int) -> None:
        _, custom_id, status_code, request_id, finish, prompt, cached, completion, reasoning, reason, examples = judged
        cost = self.price.cost(prompt, cached, completion)
        valid = self._examples(custom_id, stage, reason, examples)
        status = "succeeded" if valid else "invalid"
        self.succeeded.append((custom_id, self.batch["id"], self.spec.name, status_code, finish, prompt, cached,
                               completion, reasoning, str(cost), self.price.source, request_id, self.now))
        self.statuses.append((status, rowid))
        self.report.outcomes[status] += 1
        self.report.cost_usd += cost

    def _examples(self, custom_id: str, stage: str, reason: tuple[str, str] | None,
                  examples: list[tuple[Any, ...]]) -> int:
        """Record a response's examples; how many are valid. Seed copies and repeats of earlier stages are
        rejected here; repeats inside the stage are settled afterwards (see dedupe_stage)."""
        job, valid_count, rows, accepted = self.spec.name, 0, self.examples, self.accepted
        if reason is not None:
            rows.append((job, stage, custom_id, -1, None, None, 0, reason[0], reason[1], None))
            self.report.examples_total += 1
            return 0
        known, is_seed, track = self.deduper.known, self.deduper.is_seed, self.track_hashes
        prior, seen, candidates = self.prior, self.seen, self.candidates
        for position, (content, digest, valid, category, text) in enumerate(examples):
            duplicate_of = None
            if valid and digest is not None:
                if digest in known or is_seed(digest):
                    found = self.deduper.check(digest, example_key(custom_id, position))
                    if found is not None:
                        valid, category, text, duplicate_of = False, found.category, str(found), found.detail
                if valid and track:
                    # A candidate for dedupe_stage if the stage already holds it or the batch brings it twice.
                    # `seen` keeps only each hash's hash() (a small int, not the 32-character text); two different
                    # hashes sharing one only add a candidate, which dedupe_stage settles to what it was.
                    key = hash(digest)
                    if digest in prior or key in seen:
                        candidates.add(digest)
                    else:
                        seen.add(key)
            if valid:
                accepted.append((job, stage, custom_id, position, content, digest))
                valid_count += 1
            else:
                rows.append((job, stage, custom_id, position, content, digest, 0, category, text, duplicate_of))
        self.report.examples_total += len(examples)
        self.report.examples_valid += valid_count
        return valid_count

    def _failure(self, judged: Judged, rowid: int) -> None:
        _, custom_id, status_code, code, message, request_id = judged
        status = "failed" if status_code is not None else ERROR_STATUS.get(str(code), "failed")
        self.results.append((custom_id, self.batch["id"], self.spec.name, "error", status_code, code, message, None,
                             0, 0, 0, 0, "0", None, request_id, self.now))
        self.statuses.append((status, rowid))
        self.report.outcomes[status] += 1

    def missing(self) -> None:
        """Requests in neither file: not executed when the batch was cancelled or expired, else missing."""
        code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(self.batch["status"], "missing")
        status = ERROR_STATUS.get(code, "missing")
        for custom_id, (_, rowid) in self.pending.items():
            self.results.append((custom_id, self.batch["id"], self.spec.name, "missing", None, code,
                                 "in neither the output nor the error file", None, 0, 0, 0, 0, "0", None,
                                 None, self.now))
            self.statuses.append((status, rowid))
            self.report.outcomes[status] += 1
        self.pending.clear()

    def dedupe_candidates(self) -> list[str]:
        return sorted(self.candidates)

    def flush(self) -> None:
        conn = self.ledger.db.conn
        conn.executemany(
            "INSERT INTO results (custom_id, batch_id, job, source, status_code, finish_reason, prompt_tokens, "
            "cached_tokens, completion_tokens, reasoning_tokens, cost_usd, priced_by, request_id, collected_utc) "
            "VALUES (?, ?, ?, 'output', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self.succeeded)
        conn.executemany(
            "INSERT INTO results (custom_id, batch_id, job, source, status_code, error_code, error_message, "
            "finish_reason, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_usd, "
            "priced_by, request_id, collected_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.results)
        crash_point("ingest")
        conn.executemany(
            "INSERT INTO examples (job, stage, custom_id, position, content_json, content_hash, valid) "
            "VALUES (?, ?, ?, ?, ?, ?, 1)", self.accepted)
        conn.executemany(
            "INSERT INTO examples (job, stage, custom_id, position, content_json, content_hash, valid, category, "
            "reason, duplicate_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self.examples)
        self.succeeded, self.results, self.accepted, self.examples = [], [], [], []
        self.flushed = len(self.statuses)

    def finish(self) -> None:
        """Write what is left, then every request's status in table order (lines arrive in any order; updating
        the requests in rowid order touches each page of the table once)."""
        self.missing()
        self.flush()
        self.statuses.sort(key=itemgetter(1))
        self.ledger.db.conn.executemany("UPDATE requests SET status = ? WHERE rowid = ?", self.statuses)
        self.statuses = []


def settle_failed_batch(ledger: Ledger, client: BatchClient, spec: JobSpec, batch: dict[str, Any]) -> CollectReport:
    """A batch whose input failed validation ran nothing and produced no files.

    `token_limit_exceeded` (too many tokens queued for the model) sends its requests back to the queue in a fresh
    shard record and deletes the dead input file; any other code is a permanent rejection of the input file, reported
    on every request with the code and line the API gave.
    """
    errors = (json.loads(batch["batch_json"]).get("errors") or {}).get("data") or [{}]
    first = errors[0]
    code, line, message = first.get("code") or "failed", first.get("line"), first.get("message") or ""
    report = CollectReport(batch["id"])
    with ledger.transaction():
        if ledger.scalar("SELECT collected FROM batches WHERE id = ?", [batch["id"]]):
            return report
        ledger.execute("UPDATE batches SET collected = 1, actual_cost_usd = '0', updated_utc = ? WHERE id = ?",
                       [utcnow(), batch["id"]])
        if code == "token_limit_exceeded":
            _learn_queue_limit(ledger, spec, batch, message)
            requeue_shard(ledger, batch["shard_id"])
            report.outcomes["requeued"] = int(ledger.scalar("SELECT lines FROM shards WHERE id = ?",
                                                            [batch["shard_id"]]))
        else:
            detail = f"line {line}: {message}" if line else message
            rows = ledger.execute("SELECT custom_id FROM requests WHERE batch_id = ?", [batch["id"]]).fetchall()
            ledger.db.conn.executemany(
                "INSERT INTO results (custom_id, batch_id, job, source, error_code, error_message, cost_usd, "
                "collected_utc) VALUES (?, ?, ?, 'batch_failed', ?, ?, '0', ?)",
                ((r[0], batch["id"], spec.name, code, detail, utcnow()) for r in rows))
            ledger.execute("UPDATE requests SET status = 'rejected' WHERE batch_id = ?", [batch["id"]])
            ledger.execute("UPDATE shards SET status = 'failed' WHERE id = ?", [batch["shard_id"]])
            report.outcomes["rejected"] = len(rows)
        ledger.event("batch_failed", job=spec.name, batch_id=batch["id"], code=code, line=line, message=message)
    try:
        client.delete_file(batch["input_file_id"])
    except BackendError:
        pass  # already gone, or the backend refuses: nothing depends on it
    return report


_LIMIT = re.compile(r"Limit: ([\d,]+) enqueued tokens")


def _learn_queue_limit(ledger: Ledger, spec: JobSpec, batch: dict[str, Any], message: str) -> None:
    """Remember the provider's queued-token limit from its message; refuse to loop on a shard that can never fit."""
    found = _LIMIT.search(message)
    shard = ledger.one("SELECT model, input_tokens FROM shards WHERE id = ?", [batch["shard_id"]]) or {}
    if found:
        ledger.event("queue_limit", job=spec.name, batch_id=batch["id"], model=shard.get("model"),
                     limit=int(found.group(1).replace(",", "")))
        return
    others = ledger.scalar(
        "SELECT count(*) FROM batches b JOIN shards s ON s.id = b.shard_id WHERE s.model = ? AND b.id != ? AND "
        "b.status IN ('validating', 'in_progress', 'finalizing', 'cancelling')", [shard.get("model"), batch["id"]])
    if not others:
        raise BackendError(f"The Batch API refused shard {batch['shard_id']} ({shard.get('input_tokens')} tokens) "
                           f"with nothing else queued: {message}; set limits.max_queued_tokens in job.toml or "
                           "--queue-limit below that")


def requeue_shard(ledger: Ledger, shard_id: str) -> str:
    """A new pending shard record for the same file, taking over the shard's requests (inside a transaction)."""
    base = shard_id.split("~", 1)[0]
    tries = int(ledger.scalar("SELECT count(*) FROM shards WHERE id = ? OR id LIKE ?", [base, base + "~%"]))
    new_id = f"{base}~{tries}"
    ledger.execute(
        "INSERT INTO shards (id, job, stage, attempt, model, path, sha256, lines, bytes, input_tokens, est_cost_usd, "
        "max_cost_usd, status, created_utc) SELECT ?, job, stage, attempt, model, path, sha256, lines, bytes, "
        "input_tokens, est_cost_usd, max_cost_usd, 'pending', ? FROM shards WHERE id = ?", [new_id, utcnow(), shard_id])
    ledger.execute("UPDATE shards SET status = 'requeued' WHERE id = ?", [shard_id])
    ledger.execute("UPDATE requests SET shard_id = ?, status = 'compiled', batch_id = NULL WHERE shard_id = ?",
                   [new_id, shard_id])
    return new_id


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of short-lived tuples and dicts are made: they hold no
    cycles, and its passes over them cost ~10 % of a large collection. Reference counting still frees them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def collect_batch(ledger: Ledger, client: BatchClient, workspace: Workspace, spec: JobSpec,
                  batch: dict[str, Any]) -> CollectReport:
    """Collect one terminal batch (a second call for the same batch does nothing and says so)."""
    if batch["status"] == "failed":
        return settle_failed_batch(ledger, client, spec, batch)
    paths = download_results(client, workspace, spec.name, batch)
    try:
        with ledger.transaction():
            if ledger.scalar("SELECT collected FROM batches WHERE id = ?", [batch["id"]]):
                return CollectReport(batch["id"])
            collector = _Collector(ledger, spec, batch)
            with _no_cyclic_gc():
                for path in paths:
                    for judged in judged_lines(path, spec.format, collector.rules):
                        if judged[0] == "corrupt":
                            raise BackendError(f"Result file {path} is corrupt at line {judged[1]}: {judged[2]}")
                        collector.add(judged)
                collector.finish()
            if collector.rules.dedupe != "none":
                dedupe_stage(ledger, spec.name, collector.stage, collector.dedupe_candidates())
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
