"""Persistent batch records: `batches/<id>/batch.json` holds the public `batch` object and the run state.

The run state is the engine's private progress (positions, committed byte sizes of the partial result files,
counters). Every change is written atomically and fsynced before the engine relies on it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.emulator.apierror import bad_request, not_found
from batchgen.emulator.fsutil import read_json, write_json

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
        for path in self.root.glob("batch_*/batch.json"):
            try:
                data = read_json(path)
                record = BatchRecord(data["batch"], Run(**data["run"]), path.parent)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            self._records[record.id] = record

    def add(self, batch: dict[str, Any], run: Run) -> BatchRecord:
        directory = self.root / batch["id"]
        directory.mkdir(parents=True, exist_ok=True)
        record = BatchRecord(batch, run, directory)
        with self.lock:
            self.save(record)
            self._records[record.id] = record
        return record

    def save(self, record: BatchRecord) -> None:
        write_json(record.directory / "batch.json", {"batch": record.batch, "run": record.run.__dict__})

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
