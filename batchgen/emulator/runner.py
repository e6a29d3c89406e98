"""Line execution with exactly-once results across crashes.

Lines run block by block (256 lines); inside a block they run in a seeded shuffled order, which is the order the
result rows appear in (clients must join on custom_id). Rows are appended to `output.part` / `errors.part`, both
fsynced, and only then is the batch record (positions, committed byte sizes, counters) replaced atomically. After
a crash, `recover` cuts the part files back to the committed sizes, so no line is answered twice or dropped.

Running a chunk is split in two: `answer` executes the lines (without the batches lock, since an upstream server
may take a while; an executor with `concurrency` above 1 gets the whole chunk at once) and `record` writes them.
Nothing is written before `record`, so lines answered when the emulator stops (`halt`) simply run again.

A write the disk refuses raises before the record is saved: the caller reverts the record and `recover`s the part
files to its committed sizes, which leaves the batch exactly as it was before the step.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from batchgen.emulator import ids
from batchgen.emulator.batches import BatchRecord
from batchgen.emulator.executor import (
    Executor,
    Interrupted,
    LineRequest,
    LineResult,
    concurrency,
    error_body,
    forget_batch,
    prepare_lines,
)
from batchgen.emulator.files import THIRTY_DAYS, FileStore
from batchgen.emulator.fsutil import naming, write_all
from batchgen.emulator.usage import UsageStore, batch_records, tally
from batchgen.emulator.validate import DEPLOYMENT_KEY, operation

BLOCK = 256
CHUNKS_IN_FLIGHT = 4  # a concurrent executor gets at most this many times its concurrency per chunk
OUTPUT_PART = "output.part"
ERRORS_PART = "errors.part"
INPUT_LINK = "input.jsonl"
CONTENT_KEY = "input_sha256"  # in Run.extra: the digest of the input file, set when the batch starts
USAGE_KEY = "usage_by_model"  # in Run.extra: tokens, requests and cost of the answered lines, per model
TAIL_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


def read_block(path: Path, offset: int) -> tuple[list[bytes], int]:
    """Up to BLOCK non-blank lines from `offset`, and the offset after them."""
    lines: list[bytes] = []
    with open(path, "rb") as handle:
        handle.seek(offset)
        while len(lines) < BLOCK:
            raw = handle.readline()
            if not raw:
                break
            offset += len(raw)
            if raw.strip():
                lines.append(raw)
    return lines, offset


def block_order(seed: int, batch_id: str, block: int, size: int) -> list[int]:
    order = list(range(size))
    random.Random(int.from_bytes(ids.digest(seed, "order", batch_id, block, size=8), "big")).shuffle(order)
    return order


def _append(path: Path, data: bytes | bytearray) -> None:
    with naming(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def _truncate(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size != size:
        with open(path, "r+b") as handle:
            handle.truncate(size)
            os.fsync(handle.fileno())


@dataclass
class Answers:
    """Lines `start`..`stop` (positions in the shuffled order) of a batch's current block, executed, not recorded."""

    start: int
    stop: int
    requests: list[LineRequest]
    results: list[LineResult]


class Runner:
    """Executes, records and finalizes the lines of batches."""

    def __init__(self, files: FileStore, executor: Executor, seed: Callable[[], int],
                 save: Callable[[BatchRecord], None], now: Callable[[], float],
                 usage: UsageStore | None = None, cost: Callable[[str, int, int, int, bool], Decimal] | None = None,
                 ) -> None:
        self.files = files
        self.usage = usage
        self._cost = cost or (lambda *_: Decimal(0))
        self.executor = executor
        self._seed = seed
        self._save = save
        self._now = now
        self._block_cache: dict[str, tuple[int, list[bytes], int, list[int]]] = {}
        self._halted = threading.Event()

    def halt(self) -> None:
        """The emulator stops: lines still in flight are dropped unrecorded (they run again on the next start)."""
        self._halted.set()

    def recover(self, record: BatchRecord) -> None:
        """Cut the part files back to what the record says is committed."""
        run = record.run
        _truncate(record.part(OUTPUT_PART), run.out_bytes)
        _truncate(record.part(ERRORS_PART), run.err_bytes)

    def _block(self, record: BatchRecord) -> tuple[list[bytes], int, list[int]]:
        run = record.run
        cached = self._block_cache.get(record.id)
        if cached is not None and cached[0] == run.block_offset:
            return cached[1], cached[2], cached[3]
        lines, next_offset = read_block(record.part(INPUT_LINK), run.block_offset)
        order = block_order(self._seed(), record.id, run.block, len(lines))
        if not prepare_lines(self.executor, record.id, run.block_first_line, lines):
            prepare_lines(self.executor, record.id, 0, self._lines_before(record) + lines)
        self._block_cache[record.id] = (run.block_offset, lines, next_offset, order)
        return lines, next_offset, order

    def _lines_before(self, record: BatchRecord) -> list[bytes]:
        """The input lines of the blocks before the current one (run before this process started)."""
        lines: list[bytes] = []
        offset = 0
        while offset < record.run.block_offset:
            block, offset = read_block(record.part(INPUT_LINK), offset)
            if not block:
                break
            lines.extend(block)
        return lines

    def answer(self, record: BatchRecord, limit: int) -> Answers | None:
        """Execute up to `limit` lines (never past the current block); None if the emulator stopped meanwhile."""
        run = record.run
        lines, _, order = self._block(record)
        stop = min(len(order), run.pos + max(1, limit))
        width = concurrency(self.executor)
        if width > 1:
            stop = min(stop, run.pos + CHUNKS_IN_FLIGHT * width)
        requests = [self._request(record, lines[order[position]], run.block_first_line + order[position])
                    for position in range(run.pos, stop)]
        try:
            results = self._results(requests, width)
        except Interrupted:
            return None
        return Answers(run.pos, stop, requests, results)

    def record(self, record: BatchRecord, answers: Answers) -> int:
        """Write answered lines in their order, commit them, and return how many there were."""
        run = record.run
        if answers.start != run.pos:
            raise RuntimeError(f"{record.id}: answers for position {answers.start}, the batch is at {run.pos}")
        _, next_offset, order = self._block(record)
        out, err = bytearray(), bytearray()
        for request, result in zip(answers.requests, answers.results, strict=True):
            row, ok = self._row(record, request, result)
            (out if ok else err).extend(row)
        done = answers.stop - answers.start
        self._commit(record, out, err, done)
        run.pos = answers.stop
        if run.pos >= len(order):
            run.block += 1
            run.block_offset = next_offset
            run.block_first_line += len(order)
            run.pos = 0
            self._block_cache.pop(record.id, None)
        self._save(record)
        return done

    def _request(self, record: BatchRecord, raw: bytes, index: int) -> LineRequest:
        item = orjson.loads(raw)
        # A batch started by an emulator older than the content key falls back on its id, as it was seeded then.
        content = str(record.run.extra.get(CONTENT_KEY) or record.id)
        body = item["body"]
        if DEPLOYMENT_KEY in record.run.extra:  # an Azure line names its deployment; it runs on the model behind it
            body = {**body, "model": record.batch["model"]}
        return LineRequest(operation(record.batch["endpoint"]), body, item["custom_id"], index, record.id,
                           int(self._now()), content)

    def _results(self, requests: list[LineRequest], width: int) -> list[LineResult]:
        if width > 1:
            try:
                return list(self.executor.execute_many(requests, self._halted))  # type: ignore[attr-defined]
            except Interrupted:
                raise
            except Exception as error:  # an executor bug must not stop the batch: the lines get 500 rows
                return [_executor_failed(error) for _ in requests]
        results = []
        for request in requests:
            try:
                results.append(self.executor.execute(request))
            except Exception as error:  # an executor bug must not stop the batch: the line gets a 500 row
                results.append(_executor_failed(error))
        return results

    def _row(self, record: BatchRecord, request: LineRequest, result: LineResult) -> tuple[bytes, bool]:
        ok = 200 <= result.status_code < 300
        row_id, request_id = ids.row_ids(record.id, request.index)
        row = {"id": row_id, "custom_id": request.custom_id,
               "response": {"status_code": result.status_code, "request_id": request_id, "body": result.body},
               "error": None}
        if ok:
            _add_usage(record.batch, result.body)
            model = request.body.get("model")
            tally(record.run.extra.setdefault(USAGE_KEY, {}), model if isinstance(model, str) else "-",
                  result.body, self._cost)
        counts = record.batch["request_counts"]
        counts["completed" if ok else "failed"] += 1
        return orjson.dumps(row) + b"\n", ok

    def _commit(self, record: BatchRecord, out: bytes | bytearray, err: bytes | bytearray, lines: int) -> None:
        if out:
            _append(record.part(OUTPUT_PART), out)
        if err:
            _append(record.part(ERRORS_PART), err)
        record.run.out_bytes += len(out)
        record.run.err_bytes += len(err)
        record.run.lines_done += lines

    def write_tail(self, record: BatchRecord, code: str) -> None:
        """Rows with `response: null` for every line not executed (batch_expired / batch_cancelled)."""
        run = record.run
        if run.tail_written or run.total == 0:
            return
        path = record.part(ERRORS_PART)
        with naming(path):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                chunk = bytearray()
                error = {"code": code, "message": TAIL_MESSAGES[code]}
                for index, custom_id in self._remaining(record):
                    chunk += orjson.dumps({"id": ids.batch_request_id(record.id, index), "custom_id": custom_id,
                                           "response": None, "error": error}) + b"\n"
                    if len(chunk) > 1 << 20:
                        write_all(fd, chunk)
                        run.err_bytes += len(chunk)
                        chunk = bytearray()
                write_all(fd, chunk)
                run.err_bytes += len(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
        run.tail_written = True
        self._save(record)

    def _remaining(self, record: BatchRecord) -> Iterator[tuple[int, str]]:
        run = record.run
        offset, block, position, first = run.block_offset, run.block, run.pos, run.block_first_line
        while True:
            lines, next_offset = read_block(record.part(INPUT_LINK), offset)
            if not lines:
                return
            order = block_order(self._seed(), record.id, block, len(lines))
            for index in order[position:]:
                yield first + index, str(orjson.loads(lines[index])["custom_id"])
            offset, block, position, first = next_offset, block + 1, 0, first + len(lines)

    def finalize(self, record: BatchRecord, now: int) -> None:
        """Publish the committed part files as `batch_output` files (an empty one gets no file)."""
        expires = record.run.extra.get("output_expires_seconds", THIRTY_DAYS)
        for part, kind, size, key in ((OUTPUT_PART, "output", record.run.out_bytes, "output_file_id"),
                                      (ERRORS_PART, "error", record.run.err_bytes, "error_file_id")):
            if size == 0:
                record.batch[key] = None
                continue
            _truncate(record.part(part), size)
            meta = self.files.add(ids.derived_file_id(record.id, kind), record.part(part),
                                  filename=f"{record.id}_{kind}.jsonl", purpose="batch_output", created_at=now,
                                  expires_at=now + int(expires), keep_source=True)
            record.batch[key] = meta["id"]
        self._block_cache.pop(record.id, None)
        forget_batch(self.executor, record.id)
        if self.usage is not None:  # the batch's lines enter the organization's usage when it ends (once)
            self.usage.add(batch_records(record.id, now, record.run.extra.get(USAGE_KEY)))

    @staticmethod
    def cleanup(record: BatchRecord) -> None:
        """Remove the working files of a terminal batch."""
        for name in (OUTPUT_PART, ERRORS_PART, INPUT_LINK):
            record.part(name).unlink(missing_ok=True)


def _executor_failed(error: Exception) -> LineResult:
    return LineResult(500, error_body(f"The executor failed: {type(error).__name__}", "server_error"))


def _add_usage(batch: dict[str, Any], body: Any) -> None:
    usage = body.get("usage") if isinstance(body, dict) else None
    total = batch.get("usage")
    if not isinstance(usage, dict) or not isinstance(total, dict):
        return
    prompt = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
    completion = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0) or 0
    total["input_tokens"] += prompt
    total["output_tokens"] += completion
    total["total_tokens"] += prompt + completion
    total["input_tokens_details"]["cached_tokens"] += int(cached)
    total["output_tokens_details"]["reasoning_tokens"] += int(reasoning)
