"""The batch status machine (spec §3), one bounded step at a time.

validating → failed | in_progress → finalizing → completed; in_progress → expired at the completion window (or a
forced/fractional expiry); validating | in_progress → cancelling → cancelled. A step returns whether it did work
and, when it is waiting, the emulated time of its next event.

A step whose write fails (a full disk) raises its OSError with the batch as it was before the step: the record is
reverted and its part files cut back before the batches lock is let go. Lines answered but not recorded are kept
for the next try, so an upstream is not asked twice for them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from batchgen.emulator.batches import BatchRecord, BatchStore, empty_usage
from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.files import FileStore
from batchgen.emulator.runner import CONTENT_KEY, INPUT_LINK, Answers, Runner
from batchgen.emulator.tokencount import TokenCounter
from batchgen.emulator.validate import AZURE_KEY, DEPLOYMENT_KEY, Verdict, batch_error, validate_input

CHUNK = 256
_HOLDING = ("in_progress", "finalizing", "cancelling")  # statuses whose input tokens count against the queue limit


@dataclass
class Step:
    worked: bool
    next_due: float | None = None
    lines: int = 0  # lines due now, run after the batches lock is released


class Lifecycle:
    """Moves batches along their status machine."""

    def __init__(self, batches: BatchStore, files: FileStore, runner: Runner, counter: TokenCounter,
                 config: Callable[[], EmulatorConfig]) -> None:
        self.batches = batches
        self.files = files
        self.runner = runner
        self.counter = counter
        self._config = config
        self._unrecorded: dict[str, Answers] = {}  # lines answered whose record the disk refused

    @contextmanager
    def _changing(self, record: BatchRecord) -> Iterator[None]:
        """Under the batches lock: if the change fails, the record and its part files are as they were before."""
        with self.batches.lock:
            try:
                with self.batches.reverting(record):
                    yield
            except BaseException:
                self.runner.recover(record)
                raise

    def step(self, record: BatchRecord, now: float) -> Step:
        status = record.status
        if status == "validating":
            return self._validating(record, now)
        with self._changing(record):
            if record.status != "in_progress":
                self._unrecorded.pop(record.id, None)
            if record.status == "finalizing":
                return self._finalizing(record, now)
            if record.status == "cancelling":
                return self._cancelling(record, now)
            if record.status != "in_progress":
                return Step(False)
            step = self._in_progress(record, now)
        if step.lines:
            # Only this thread moves a batch's lines forward, so they can run unlocked: API calls reading batches
            # are not held up by a slow upstream. A cancel meanwhile keeps the lines already in flight.
            answers = self._unrecorded.pop(record.id, None)
            if answers is None or answers.start != record.run.pos:
                answers = self.runner.answer(record, step.lines)
            if answers is None:
                return Step(False)
            with self._changing(record):
                try:
                    self.runner.record(record, answers)
                except OSError:
                    self._unrecorded[record.id] = answers
                    raise
        return step

    def _validating(self, record: BatchRecord, now: float) -> Step:
        config = self._config()
        due = record.run.created_t + config.validation_seconds
        if now < due:
            return Step(False, due)
        verdict = self._check_file(record)
        if verdict is None:
            verdict = validate_input(record.part(INPUT_LINK), record.batch["endpoint"], config, self.counter,
                                     azure=bool(record.run.extra.get(AZURE_KEY)))
        with self._changing(record):
            if record.status != "validating":
                return Step(True)
            if verdict.error is None:
                verdict = self._check_queue(record, verdict, config)
            if verdict.error is not None:
                self._fail(record, verdict, now)
            else:
                self._start(record, verdict, now)
            self.batches.save(record)
        return Step(True)

    def _check_file(self, record: BatchRecord) -> Verdict | None:
        file_id = record.batch["input_file_id"]
        meta = self.files.find(file_id)
        if meta is None or meta["purpose"] != "batch":
            why = "does not exist" if meta is None else f"has purpose '{meta['purpose']}', not 'batch'"
            return Verdict(batch_error("invalid_request", f"Cannot use file {file_id}: it {why}.", "file_id"))
        link = record.part(INPUT_LINK)
        link.unlink(missing_ok=True)
        try:
            os.link(self.files.data_path(file_id), link)
        except FileNotFoundError:
            return Verdict(batch_error("invalid_request", f"Cannot find file {file_id}.", "file_id"))
        return None

    def _check_queue(self, record: BatchRecord, verdict: Verdict, config: EmulatorConfig) -> Verdict:
        model = str(verdict.model)
        limit = config.queued_token_limit(model)
        if limit is None:
            return verdict
        # Tokens stay enqueued until a batch ends: while it runs, finalizes or is being cancelled.
        queued = sum(r.run.queued_tokens for r in self.batches.all()
                     if r is not record and r.status in _HOLDING and r.batch.get("model") == model)
        if queued + verdict.tokens <= limit:
            return verdict
        return Verdict(batch_error(
            "token_limit_exceeded", f"Enqueued token limit reached for {model} in organization org-emulator. "
            f"Limit: {limit:,} enqueued tokens. Please try again once some in_progress batches have been completed."))

    def _fail(self, record: BatchRecord, verdict: Verdict, now: float) -> None:
        record.batch.update(status="failed", failed_at=int(now),
                            errors={"object": "list", "data": [verdict.error]})
        record.part(INPUT_LINK).unlink(missing_ok=True)

    def _start(self, record: BatchRecord, verdict: Verdict, now: float) -> None:
        record.run.total = verdict.total
        record.run.queued_tokens = verdict.tokens
        record.run.in_progress_t = now
        record.run.extra[CONTENT_KEY] = verdict.digest
        if verdict.deployment is not None and verdict.deployment != verdict.model:
            record.run.extra[DEPLOYMENT_KEY] = verdict.deployment
        record.batch.update(status="in_progress", in_progress_at=int(now), model=verdict.model,
                            usage=empty_usage(),
                            request_counts={"total": verdict.total, "completed": 0, "failed": 0})

    def _in_progress(self, record: BatchRecord, now: float) -> Step:
        config, run = self._config(), record.run
        deadline = float(record.batch["expires_at"])
        started = run.in_progress_t if run.in_progress_t is not None else now
        horizon = min(now, deadline)
        if config.line_seconds > 0:
            due = min(run.total, max(0, math.floor((horizon - started) / config.line_seconds)))
        else:
            due = run.total
        if config.expire_after_fraction is not None:
            stop_at = math.floor(config.expire_after_fraction * run.total)
            if run.lines_done >= stop_at and run.total > 0:
                return self._terminate(record, now, "expired")
            due = min(due, stop_at)
        if run.force_expire:
            return self._terminate(record, now, "expired")
        if run.lines_done < due:
            return Step(True, now, lines=min(CHUNK, due - run.lines_done))
        if run.lines_done >= run.total:
            run.finalizing_t = now
            record.batch.update(status="finalizing", finalizing_at=int(now))
            self.batches.save(record)
            return Step(True, now)
        if now >= deadline:
            return self._terminate(record, now, "expired")
        return Step(False, min(deadline, started + (run.lines_done + 1) * config.line_seconds))

    def _finalizing(self, record: BatchRecord, now: float) -> Step:
        config, run = self._config(), record.run
        started = run.finalizing_t if run.finalizing_t is not None else now
        due = started + config.finalizing_seconds + config.stuck_finalizing_seconds + run.stuck_seconds
        if now < due:
            return Step(False, due)
        return self._terminate(record, now, "completed")

    def _cancelling(self, record: BatchRecord, now: float) -> Step:
        started = record.run.cancelling_t if record.run.cancelling_t is not None else now
        due = started + self._config().cancelling_seconds
        if now < due:
            return Step(False, due)
        return self._terminate(record, now, "cancelled")

    def _terminate(self, record: BatchRecord, now: float, status: str) -> Step:
        """Write the rows of unexecuted lines, publish the result files, and enter a terminal status."""
        if status in ("expired", "cancelled"):
            self.runner.write_tail(record, "batch_expired" if status == "expired" else "batch_cancelled")
        self.runner.finalize(record, int(now))
        record.batch["status"] = status
        record.batch[f"{status}_at"] = int(now)
        self.batches.save(record)
        self.runner.cleanup(record)
        return Step(True, now)
