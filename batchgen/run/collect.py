"""Collect a finished batch: stream its output and error files, join each line to its request by `custom_id`
(never by position), price it, validate what it generated, and record it all in one ledger transaction.

Every request of the batch ends with exactly one result row:
  output file, HTTP 2xx     -> succeeded (at least one valid example) or invalid (none; for an embeddings request:
                               its vector is missing, of the wrong size or not finite numbers)
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from batchgen.crashpoints import crash_point
from batchgen.dataset.checks import CheckRef
from batchgen.dataset.embeddings import EmbeddingRules
from batchgen.dataset.judge import JudgeRules, incomplete, rejection
from batchgen.dataset.lineage import ParentChooser
from batchgen.dataset.near import SignedByKey
from batchgen.dataset.result_lines import AnyRules, Judged, judged_lines
from batchgen.dataset.validate import Deduper, Rules, example_key
from batchgen.errors import BackendError, BatchgenError
from batchgen.ledger import Ledger, utcnow
from batchgen.ledger.workspace import Workspace
from batchgen.recipe.embeddings import vector_size
from batchgen.recipe.spec import EMBEDDINGS, JobSpec
from batchgen.run.client import BatchClient
from batchgen.run.near_dedupe import near_settings, settle_near_duplicates

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


def rules_for(spec: JobSpec, cells: Mapping[str, dict[str, Any]] | None = None) -> Rules:
    """The checks of the job's chat answers, its rule hooks (`cells`: custom_id -> cell, for them) among them."""
    v = spec.validate_
    return Rules.from_values(patterns=v.response_patterns, role_order=v.role_order == "alternate",
                             min_turns=v.min_turns, max_turns=v.max_turns, dedupe=v.dedupe,
                             reject_seed_copies=v.reject_seed_copies, checks=check_refs(spec),
                             reference_date=v.reference_date, cells=cells, examples_keys=v.examples_keys)


def check_refs(spec: JobSpec) -> tuple[CheckRef, ...]:
    """The job's rule hooks, each function looked up now, so that a missing one is one error line at once."""
    kept = spec.check_sources if spec.detached else {}
    refs = tuple(CheckRef.parse(text, spec.job_dir, kept.get(text.rsplit(":", 1)[0])) for text in spec.validate_.checks)
    for ref in refs:
        ref.function()
    return refs


def embedding_rules(spec: JobSpec, shard_path: str) -> EmbeddingRules:
    """The checks of an embeddings batch's answers, with the input text of each of its requests, read from the
    shard file the batch was made of: what was sent, which an answer does not repeat."""
    inputs: dict[str, str] = {}
    try:
        with open(shard_path, "rb") as handle:
            for line in handle:
                if line.strip():
                    request = orjson.loads(line)
                    inputs[request["custom_id"]] = request["body"]["input"]
    except OSError as error:
        raise BatchgenError(f"Cannot read shard file {shard_path}, which holds the inputs of its embeddings: "
                            f"{error.strerror or error}; 'batchgen ledger check' lists the missing files") from None
    size = vector_size(spec.model, spec.embeddings.dimensions if spec.embeddings is not None else None)
    return EmbeddingRules(size, spec.validate_.dedupe, inputs)


def earlier_deduper(ledger: Ledger, spec: JobSpec, stage: str, rules: AnyRules) -> Deduper:
    """Seed copies (of a chat job), and repeats of valid examples of the job's *earlier* stages.

    Duplicates inside the stage being collected are settled afterwards by `Ledger.dedupe_stage`, which does not
    depend on the order in which output lines or batches arrive.
    """
    if isinstance(rules, JudgeRules):
        return Deduper({}, dedupe=False)  # a judge's answers hold no examples: nothing to read for them
    known = ledger.earlier_stage_hashes(spec.name, stage)
    if isinstance(rules, EmbeddingRules):
        return Deduper(known, dedupe=rules.dedupe != "none")
    return Deduper.for_rules(rules, spec.format, spec.seeds, known=known)


def parent_examples(ledger: Ledger, spec: JobSpec, stage: str) -> dict[str, Any]:
    """The examples a stage's requests show as candidate parents, by key: the source stage's valid examples for a
    `from` stage, the seeds for a first stage (read from the ledger only for a `from` stage)."""
    resolved = spec.stage(stage)
    if resolved.judges:
        return {}  # a judge's answers hold scores, not examples with parents
    if resolved.source is not None:
        return {key: content for content, key, _, _ in ledger.source_lineage(spec.name, resolved.source)}
    return {f"seed:{i}": seed for i, seed in enumerate(spec.seeds)}


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

    def __init__(self, ledger: Ledger, workspace: Workspace, spec: JobSpec, batch: dict[str, Any]):
        self.ledger, self.spec, self.batch = ledger, spec, batch
        shard = ledger.shard(batch["shard_id"])
        self.stage: str = shard["stage"]
        resolved = spec.stage(self.stage)
        self.judge = resolved if resolved.judges else None
        cells = ledger.batch_cells(batch["id"]) if spec.validate_.checks and self.judge is None else None
        self.rules: AnyRules = (embedding_rules(spec, str(workspace.locate(shard["path"])))
                                if spec.endpoint == EMBEDDINGS else JudgeRules() if self.judge is not None
                                else rules_for(spec, cells))
        self.deduper = earlier_deduper(ledger, spec, self.stage, self.rules)
        self.price = spec.model_price()
        self.pending = ledger.batch_requests(batch["id"])  # custom_id -> (stage, rowid)
        self.parents = ledger.batch_parents(batch["id"])  # custom_id -> [[key, root], ...] shown to it
        self.chooser = ParentChooser(parent_examples(ledger, spec, self.stage), spec.dataset_format)
        self.report = CollectReport(batch["id"])
        self.track_hashes = self.rules.dedupe != "none"
        self.prior = ledger.stage_hashes(spec.name, self.stage) if self.track_hashes else set()
        self.seen: set[int] = set()  # hash() of each valid hash of this batch
        self.candidates: set[str] = set()  # valid hashes this batch brings twice, or again after the stage had it
        self.now = utcnow()
        # Rows to insert, kept apart by shape: binding None costs sqlite3 far more than any other value, so the
        # common rows (a success, a valid example) leave their NULL columns out of the statement.
        self.succeeded: list[tuple[Any, ...]] = []
        self.results: list[tuple[Any, ...]] = []
        self.accepted: list[tuple[Any, ...]] = []
        self.examples: list[tuple[Any, ...]] = []
        self.judgments: list[tuple[Any, ...]] = []  # a judge stage's scores
        self.rejections: list[tuple[str, str]] = []  # (example key, reason): what a judge stage scored too low
        self.statuses: list[tuple[str, int]] = []  # (status, requests.rowid), written last in rowid order
        self.flushed = 0  # len(statuses) at the last flush
        self.recorded: set[str] = set()  # the custom_ids whose line this collection recorded
        self.signed = SignedByKey()  # their valid examples, signed by the judging worker for near-dedupe
        self.near = near_settings(spec) if self.judge is None else None  # what the worker signs for

    def add(self, judged: Judged) -> None:
        kind, custom_id = judged[0], judged[1]
        if kind == "signed":  # examples the worker signed for near-dedupe: keep those of lines recorded here
            _, keys, part = judged
            recorded = self.recorded
            self.signed.add(keys, part, lambda key: key[:key.rindex("#")] in recorded)
            return
        if custom_id not in self.pending:
            seen = self.ledger.has_result(custom_id)
            if seen or any(r[0] == custom_id for r in self.succeeded + self.results):
                self.report.repeated_ids += 1
            else:
                self.report.unknown_ids += 1
                self.ledger.event("unknown_custom_id", job=self.spec.name, batch_id=self.batch["id"],
                                  custom_id=custom_id)
            return
        stage, rowid = self.pending.pop(custom_id)
        self.recorded.add(custom_id)
        if kind == "ok":
            self._success(judged, stage, rowid)
        else:
            self._failure(judged, rowid)
        if len(self.statuses) >= self.flushed + CHUNK:
            self.flush()

    def _success(self, judged: Judged, stage: str, rowid: int) -> None:
        _, custom_id, status_code, request_id, finish, prompt, cached, completion, reasoning, reason, examples = judged
        cost = self.price.cost(prompt, cached, completion)
        standard = self.price.cost(prompt, cached, completion, batch=False)
        if self.judge is not None:
            valid = self._judgments(custom_id, stage, reason, examples)
        else:
            valid = self._examples(custom_id, stage, reason, examples)
        status = "succeeded" if valid else "invalid"
        self.succeeded.append((custom_id, self.batch["id"], self.spec.name, status_code, finish, prompt, cached,
                               completion, reasoning, str(cost), str(standard), self.price.source, request_id,
                               self.now))
        self.statuses.append((status, rowid))
        self.report.outcomes[status] += 1
        self.report.cost_usd += cost

    def _examples(self, custom_id: str, stage: str, reason: tuple[str, str] | None,
                  examples: list[tuple[Any, ...]]) -> int:
        """Record a response's examples; how many are valid. Seed copies and repeats of earlier stages are
        rejected here; repeats inside the stage are settled afterwards (see Ledger.dedupe_stage)."""
        job, valid_count, rows, accepted = self.spec.name, 0, self.examples, self.accepted
        if reason is not None:  # one row for the answer; a truncated answer or one of another shape has examples too
            rows.append((job, stage, custom_id, -1, None, None, 0, reason[0], reason[1], None, None, None))
            self.report.examples_total += 1
            if not examples:
                return 0
        shown, choose = self.parents.get(custom_id, []), self.chooser.choose
        known, is_seed, track = self.deduper.known, self.deduper.is_seed, self.track_hashes
        prior, seen, candidates = self.prior, self.seen, self.candidates
        for position, (content, digest, valid, category, text) in enumerate(examples):
            duplicate_of = None
            own = example_key(custom_id, position)
            parent, root = (choose(orjson.loads(content) if len(shown) > 1 else None, position, shown, own)
                            if content is not None else (None, None))
            if valid and digest is not None:
                if digest in known or is_seed(digest):
                    found = self.deduper.check(digest, own)
                    if found is not None:
                        valid, category, text, duplicate_of = False, found.category, str(found), found.detail
                if valid and track:
                    # A candidate for Ledger.dedupe_stage if the stage already holds it or the batch brings it twice.
                    # `seen` keeps only each hash's hash() (a small int, not the 32-character text); two different
                    # hashes sharing one only add a candidate, which dedupe_stage settles to what it was.
                    key = hash(digest)
                    if digest in prior or key in seen:
                        candidates.add(digest)
                    else:
                        seen.add(key)
            if valid:
                accepted.append((job, stage, custom_id, position, content, digest, parent, root))
                valid_count += 1
            else:
                rows.append((job, stage, custom_id, position, content, digest, 0, category, text, duplicate_of,
                             parent, root))
        self.report.examples_total += len(examples)
        self.report.examples_valid += valid_count
        return valid_count

    def _judgments(self, custom_id: str, stage: str, reason: tuple[str, str] | None,
                   judgments: list[tuple[int, float, str]]) -> int:
        """Record a judge's scores of the examples its request showed (1), or why its answer cannot be used (0;
        then none of its scores counts, and it is retried like any invalid answer)."""
        assert self.judge is not None and self.judge.threshold is not None
        shown = self.parents.get(custom_id, [])
        if reason is None and (problem := incomplete(judgments, len(shown))) is not None:
            reason = (problem.category, str(problem))
        if reason is not None:
            self.examples.append((self.spec.name, stage, custom_id, -1, None, None, 0, reason[0], reason[1], None,
                                  None, None))
            return 0
        threshold = self.judge.threshold
        for index, score, why in judgments:
            key = str(shown[index][0])
            self.judgments.append((self.spec.name, stage, key, custom_id, index, score, int(score >= threshold),
                                   why, self.now))
            if score < threshold:
                self.rejections.append((key, str(rejection(stage, score, threshold, why))))
        return 1

    def _failure(self, judged: Judged, rowid: int) -> None:
        _, custom_id, status_code, code, message, request_id = judged
        status = "failed" if status_code is not None else ERROR_STATUS.get(str(code), "failed")
        self.results.append((custom_id, self.batch["id"], self.spec.name, "error", status_code, code, message, None,
                             0, 0, 0, 0, "0", "0", None, request_id, self.now))
        self.statuses.append((status, rowid))
        self.report.outcomes[status] += 1

    def missing(self) -> None:
        """Requests in neither file: not executed when the batch was cancelled or expired, else missing."""
        code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(self.batch["status"], "missing")
        status = ERROR_STATUS.get(code, "missing")
        for custom_id, (_, rowid) in self.pending.items():
            self.results.append((custom_id, self.batch["id"], self.spec.name, "missing", None, code,
                                 "in neither the output nor the error file", None, 0, 0, 0, 0, "0", "0", None,
                                 None, self.now))
            self.statuses.append((status, rowid))
            self.report.outcomes[status] += 1
        self.pending.clear()

    def dedupe_candidates(self) -> list[str]:
        return sorted(self.candidates)

    def flush(self) -> None:
        self.ledger.insert_results(self.succeeded, self.results)
        crash_point("ingest")
        self.ledger.insert_examples(self.accepted, self.examples)
        self.ledger.record_judgments(self.judgments)
        self.succeeded, self.results, self.accepted, self.examples, self.judgments = [], [], [], [], []
        self.flushed = len(self.statuses)

    def finish(self) -> None:
        """Write what is left, then every request's status (in table order, see Ledger.set_request_statuses)."""
        self.missing()
        self.flush()
        self.ledger.set_request_statuses(self.statuses)
        self.statuses = []
        if self.rejections:
            assert self.judge is not None and self.judge.source is not None
            self.ledger.reject_judged(self.spec.name, self.judge.source, self.rejections)
            self.rejections = []


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
        if ledger.batch_collected(batch["id"]):
            return report
        ledger.mark_batch_collected(batch["id"], Decimal(0))
        if code == "token_limit_exceeded":
            _learn_queue_limit(ledger, spec, batch, message)
            ledger.requeue_shard(batch["shard_id"])
            report.outcomes["requeued"] = int(ledger.shard(batch["shard_id"])["lines"])
        else:
            detail = f"line {line}: {message}" if line else message
            report.outcomes["rejected"] = ledger.reject_batch_requests(batch["id"], spec.name, code, detail)
            ledger.set_shard_status(batch["shard_id"], "failed")
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
    shard = ledger.find_shard(batch["shard_id"]) or {}
    if found:
        if shard.get("model"):
            ledger.learn_queue_limit(shard["model"], int(found.group(1).replace(",", "")))
        ledger.event("queue_limit", job=spec.name, batch_id=batch["id"], model=shard.get("model"),
                     limit=int(found.group(1).replace(",", "")))
        return
    others = ledger.queued_batches_of_model(shard.get("model"), batch["id"])
    if not others:
        raise BackendError(f"The Batch API refused shard {batch['shard_id']} ({shard.get('input_tokens')} tokens) "
                           f"with nothing else queued: {message}; set limits.max_queued_tokens in job.toml or "
                           "--queue-limit below that")


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
            if ledger.batch_collected(batch["id"]):
                return CollectReport(batch["id"])
            collector = _Collector(ledger, workspace, spec, batch)
            with _no_cyclic_gc():
                for path in paths:
                    for judged in judged_lines(path, spec.format, collector.rules, near=collector.near):
                        if judged[0] == "corrupt":
                            raise BackendError(f"Result file {path} is corrupt at line {judged[1]}: {judged[2]}")
                        collector.add(judged)
                collector.signed.prepare()  # while the rest is written (see SignedByKey)
                collector.finish()
            if collector.rules.dedupe != "none":
                ledger.dedupe_stage(spec.name, collector.stage, collector.dedupe_candidates())
            if collector.judge is None:
                settle_near_duplicates(ledger, spec, collector.stage, collector.signed)
            report = collector.report
            ledger.mark_batch_collected(batch["id"], report.cost_usd)
            ledger.set_shard_status(batch["shard_id"], "done")
            ledger.event("collected", job=spec.name, batch_id=batch["id"], outcomes=dict(report.outcomes),
                         examples_valid=report.examples_valid, examples_total=report.examples_total,
                         cost_usd=str(report.cost_usd), unknown_ids=report.unknown_ids,
                         repeated_ids=report.repeated_ids)
    except BackendError:
        for path in paths:
            path.unlink(missing_ok=True)
        raise
    return report
