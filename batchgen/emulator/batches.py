"""Persistent batch records: `batches/<id>/batch.json` holds the public `batch` object and the run state.

The run state is the engine's private progress (positions, committed byte sizes of the partial result files,
counters). Every change is written atomically and fsynced before the engine relies on it. A change whose write
fails (a full disk) is undone in memory as well (`reverting`), so what the API shows and what the engine goes on
from is always what the file says.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchgen.emulator.apierror import bad_request, not_found
from batchgen.emulator.fsutil import json_bytes, write_atomic

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("failed", "completed", "expired", "cancelled")


def empty_usage() -> dict[str, Any]:
    return {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}


@dataclass
class Run:
    """Private progress of one batch."""

    created_t: float
    in_progress_t: float | None = None
    finalizing_t: float | None = None
    cancelling_t: float | None = None
    total: int = 0
    queued_tokens: int = 0
    block: int = 0
    block_offset: int = 0
    block_first_line: int = 0
    pos: int = 0
    lines_done: int = 0
    out_bytes: int = 0
    err_bytes: int = 0
    tail_written: bool = False
    force_expire: bool = False
    stuck_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchRecord:
    """A batch: what the API shows and how far the engine got."""

    batch: dict[str, Any]
    run: Run
    directory: Path

    @property
    def id(self) -> str:
        return str(self.batch["id"])

    @property
    def status(self) -> str:
        return str(self.batch["status"])

    def part(self, name: str) -> Path:
        return self.directory / name


class BatchStore:
    """All batch records, in memory and under `<state>/batches/`."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "batches"
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._records: dict[str, BatchRecord] = {}
        self._saved: dict[str, bytes] = {}  # what each batch.json holds: `revert` goes back to it
        for path in self.root.glob("batch_*/batch.json"):
            try:
                saved = path.read_bytes()
                record = _parsed(saved, path.parent)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            self._records[record.id] = record
            self._saved[record.id] = saved

    def add(self, batch: dict[str, Any], run: Run) -> BatchRecord:
        """Store a new batch; if its file cannot be written the batch does not exist, on disk or here."""
        directory = self.root / batch["id"]
        directory.mkdir(parents=True, exist_ok=True)
        record = BatchRecord(batch, run, directory)
        with self.lock:
            try:
                self.save(record)
            except BaseException:
                (directory / "batch.json").unlink(missing_ok=True)
                with suppress(OSError):
                    directory.rmdir()
                raise
            self._records[record.id] = record
        return record

    def save(self, record: BatchRecord) -> None:
        data = json_bytes({"batch": record.batch, "run": record.run.__dict__})
        write_atomic(record.directory / "batch.json", data)
        self._saved[record.id] = data

    def revert(self, record: BatchRecord) -> None:
        """Make `record` what its file last said: undo changes that were not saved."""
        saved = _parsed(self._saved[record.id], record.directory)
        record.batch, record.run = saved.batch, saved.run

    @contextmanager
    def reverting(self, record: BatchRecord) -> Iterator[None]:
        """Under the lock, a change to `record` that ends with its save: if anything fails before the save is done
        (a full disk), the record is reverted while the lock is still held, so no reader sees the half-made change
        and no other save writes it."""
        with self.lock:
            try:
                yield
            except BaseException:
                self.revert(record)
                raise

    def get(self, batch_id: str) -> BatchRecord:
        record = self._records.get(batch_id)
        if record is None:
            raise not_found("batch", batch_id)
        return record

    def active(self) -> list[BatchRecord]:
        with self.lock:
            return [r for r in self._records.values() if r.status in ACTIVE]

    def all(self) -> list[BatchRecord]:
        with self.lock:
            return list(self._records.values())

    def page(self, *, after: str | None, limit: int) -> dict[str, Any]:
        """`GET /batches`: newest first, `after` is the last id of the previous page."""
        if not 1 <= limit <= 100:
            raise bad_request("limit must be between 1 and 100", param="limit")
        with self.lock:
            items = sorted(self._records.values(), key=lambda r: (r.run.created_t, r.id), reverse=True)
            if after is not None:
                ids = [r.id for r in items]
                items = items[ids.index(after) + 1:] if after in ids else []
            page = [dict(r.batch) for r in items[:limit]]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


def _parsed(saved: bytes, directory: Path) -> BatchRecord:
    data = orjson.loads(saved)
    return BatchRecord(data["batch"], Run(**data["run"]), directory)
