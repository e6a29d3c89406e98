"""Persistent file objects: `files/<id>.data` holds the bytes, `files/<id>.json` the `file` object.

The data is renamed into place before its metadata is written, and the metadata write is atomic: a file exists
exactly when its `.json` does. Data without metadata (a crash in between) is ignored and removed at startup; a
metadata write the disk refuses removes the data at once, so the file is simply not there.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from batchgen.emulator.apierror import bad_request, not_found
from batchgen.emulator.fsutil import fsync_dir, read_json, write_json

THIRTY_DAYS = 30 * 86400
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


class FileStore:
    """File objects and their bytes under `<state>/files/`."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "files"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._files: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        for meta_path in self.root.glob("file-*.json"):
            try:
                meta = read_json(meta_path)
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and (self.root / f"{meta['id']}.data").exists():
                self._files[meta["id"]] = meta
        for leftover in self.root.iterdir():
            name = leftover.name
            if name.startswith(".upload-") or (name.endswith(".data") and name[:-5] not in self._files):
                leftover.unlink(missing_ok=True)

    def upload_path(self, token: str) -> Path:
        """Where an upload in progress is spooled."""
        return self.root / f".upload-{token}"

    def data_path(self, file_id: str) -> Path:
        return self.root / f"{file_id}.data"

    def add(self, file_id: str, source: Path, *, filename: str, purpose: str, created_at: int,
            expires_at: int | None, keep_source: bool = False) -> dict[str, Any]:
        """Move (or hard-link, with keep_source) `source`, already fsynced, into the store; idempotent per id."""
        with self._lock:
            if file_id in self._files:
                if not keep_source:
                    source.unlink(missing_ok=True)
                return self._files[file_id]
            size = source.stat().st_size
            target = self.data_path(file_id)
            if keep_source:
                target.unlink(missing_ok=True)
                os.link(source, target)
            else:
                os.replace(source, target)
            meta: dict[str, Any] = {
                "id": file_id, "object": "file", "bytes": size, "created_at": created_at,
                "expires_at": expires_at, "filename": filename, "purpose": purpose,
                "status": "processed", "status_details": None,
            }
            meta_path = self.root / f"{file_id}.json"
            try:
                fsync_dir(self.root)
                write_json(meta_path, meta)
            except BaseException:
                meta_path.unlink(missing_ok=True)
                target.unlink(missing_ok=True)
                raise
            self._files[file_id] = meta
            return meta

    def find(self, file_id: str) -> dict[str, Any] | None:
        return self._files.get(file_id)

    def get(self, file_id: str) -> dict[str, Any]:
        meta = self._files.get(file_id)
        if meta is None:
            raise not_found("file", file_id)
        return meta

    def delete(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            self.get(file_id)
            (self.root / f"{file_id}.json").unlink(missing_ok=True)
            self.data_path(file_id).unlink(missing_ok=True)
            del self._files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}

    def list(self, *, purpose: str | None, limit: int, order: str, after: str | None) -> dict[str, Any]:
        """A `list` page, ordered by created_at (then id), `after` being the last id of the previous page."""
        if not 1 <= limit <= 10_000:
            raise bad_request("limit must be between 1 and 10000", param="limit")
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'", param="order")
        items = [m for m in self._files.values() if purpose is None or m["purpose"] == purpose]
        items.sort(key=lambda m: (m["created_at"], m["id"]), reverse=order == "desc")
        if after is not None:
            ids = [m["id"] for m in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}
