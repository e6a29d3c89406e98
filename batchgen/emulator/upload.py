"""Streaming `multipart/form-data` uploads for `POST /v1/files`.

The body is parsed as it arrives and the file part is written straight to a spool file, so memory does not grow
with the upload. An upload over the size limit is drained (never half-read, so the client sees a clean answer) and
answered 413; a body that ends before its closing boundary is answered 400 and nothing of it is kept. A spool
write the disk refuses (full, over quota, at the file size limit) is drained the same way and raised once the body
has been read, for the route's guard to answer; the spool file goes. A batch file must start with a JSON object
line and be named `.jsonl`, or have no extension at all: the SDK names a part sent as raw bytes or as an unnamed
stream `upload`, and OpenAI takes those; another extension (`.txt`, `.json`) is refused, as OpenAI does.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from batchgen.emulator import ids
from batchgen.emulator.apierror import APIError, bad_request
from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.files import PURPOSES, THIRTY_DAYS, FileStore

_FIELD_LIMIT = 64 * 1024
_SNIFF_LIMIT = 16 * 1024 * 1024


class _Sink:
    """Callbacks of the multipart parser: small fields in memory, the `file` part to the spool."""

    def __init__(self, spool: Path, limit_for: Callable[[str | None], int]) -> None:
        self.spool = spool
        self.limit_for = limit_for
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self.too_big = False
        self.failed: OSError | None = None  # the write the disk refused; nothing more is written
        self.complete = False  # the closing boundary was seen: every part is whole
        self._handle: IO[bytes] | None = None
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self._name: str | None = None
        self._buffer = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers, self._name, self._buffer = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("utf-8", "replace")
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", ""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            raw = options.get(b"filename", b"upload")
            self.filename = os.path.basename(raw.decode("utf-8", "replace")) or "upload"
            try:
                self._handle = open(self.spool, "wb")
            except OSError as error:
                self._refused(error)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self.file_bytes += end - start
            if self.file_bytes > self.limit_for(self.fields.get("purpose")):
                self.too_big = True
                return
            if self._handle is not None:
                try:
                    self._handle.write(data[start:end])
                except OSError as error:
                    self._refused(error)
        elif len(self._buffer) < _FIELD_LIMIT:
            self._buffer += data[start:end]

    def _part_end(self) -> None:
        if self._name == "file":
            if self._handle is not None:
                try:
                    self._handle.flush()
                    os.fsync(self._handle.fileno())
                except OSError as error:
                    self._refused(error)
            self.close()
        elif self._name:
            self.fields[self._name] = self._buffer.decode("utf-8", "replace")

    def _end(self) -> None:
        self.complete = True

    def _refused(self, error: OSError) -> None:
        """The disk refused a write to the spool: keep the first reason, and only read the rest of the body."""
        if error.filename is None:
            error.filename = str(self.spool)
        self.failed = self.failed or error
        self.close()

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()  # flushes what is still buffered, which a full disk refuses too
            except OSError as error:
                self._refused(error)


async def receive_upload(request: Request, store: FileStore, config: EmulatorConfig, now: int) -> dict[str, Any]:
    """Parse the upload, check it and store it; returns the new `file` object or raises APIError."""
    kind, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        await _drain(request)
        raise bad_request("Uploads must be multipart/form-data with a 'file' and a 'purpose' field.")
    spool = store.upload_path(secrets.token_hex(8))

    def limit_for(purpose: str | None) -> int:
        return config.max_batch_upload_bytes if purpose == "batch" else config.max_upload_bytes

    sink = _Sink(spool, limit_for)
    try:
        await _feed(request, MultipartParser(boundary, sink.callbacks()), sink)  # type: ignore[arg-type]
        sink.close()
        if sink.too_big or sink.file_bytes > limit_for(sink.fields.get("purpose")):
            limit = limit_for(sink.fields.get("purpose"))
            raise APIError(413, f"File is too large: the limit for this purpose is {limit} bytes.",
                           param="file", code="file_too_large")
        if sink.failed is not None:
            raise sink.failed
        purpose, expires_at = _check_fields(sink, spool, now)
        return store.add(ids.new_file_id(), spool, filename=sink.filename or "upload", purpose=purpose,
                         created_at=now, expires_at=expires_at)
    finally:
        sink.close()
        spool.unlink(missing_ok=True)


async def _feed(request: Request, parser: MultipartParser, sink: _Sink) -> None:
    broken = False
    async for chunk in request.stream():
        if sink.too_big or broken or not chunk:
            continue
        try:
            parser.write(chunk)
        except MultipartParseError:
            broken = True
    if broken:
        raise bad_request("The multipart body could not be parsed.")
    if not sink.too_big:
        try:
            parser.finalize()
        except MultipartParseError as error:
            raise bad_request("The multipart body could not be parsed.") from error
        if not sink.complete:  # cut short: the last part may be missing bytes, so nothing is stored
            raise bad_request("The multipart body ended before its closing boundary.")


async def _drain(request: Request) -> None:
    async for _ in request.stream():
        pass


def _check_fields(sink: _Sink, spool: Path, now: int) -> tuple[str, int | None]:
    purpose = sink.fields.get("purpose")
    if not purpose:
        raise bad_request("Missing required parameter: 'purpose'.", param="purpose",
                          code="missing_required_parameter")
    if purpose not in PURPOSES:
        raise bad_request(f"Invalid value for 'purpose': '{purpose}'. Expected one of {', '.join(PURPOSES)}.",
                          param="purpose", code="invalid_value")
    if sink.filename is None or not spool.exists():
        raise bad_request("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    expires_at = _expiry(sink.fields, now, purpose)
    if purpose == "batch":
        _sniff_jsonl(sink.filename, spool)
    return purpose, expires_at


def _expiry(fields: dict[str, str], now: int, purpose: str) -> int | None:
    seconds = fields.get("expires_after[seconds]")
    if seconds is None:
        return now + THIRTY_DAYS if purpose == "batch" else None
    if fields.get("expires_after[anchor]", "created_at") != "created_at":
        raise bad_request("expires_after[anchor] must be 'created_at'.", param="expires_after[anchor]")
    try:
        value = int(seconds)
    except ValueError:
        value = -1
    if not 3600 <= value <= 2_592_000:
        raise bad_request("expires_after[seconds] must be between 3600 and 2592000.", param="expires_after[seconds]")
    return now + value


def _sniff_jsonl(filename: str, spool: Path) -> None:
    if not filename.lower().endswith(".jsonl") and os.path.splitext(filename)[1]:
        raise bad_request("Invalid file format for Batch API. Must be .jsonl", param="file",
                          code="invalid_file_format")
    with open(spool, "rb") as handle:
        first = handle.readline(_SNIFF_LIMIT).strip()
    if not first:
        return
    try:
        value = orjson.loads(first)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise bad_request(f"The file '{filename}' is not valid JSONL: its first line is not a JSON object.",
                          param="file", code="invalid_file_format")
