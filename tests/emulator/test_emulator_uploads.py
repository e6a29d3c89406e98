"""Batch input files in every form the official SDK's `files.create(file=...)` takes (openai/_files.py): a path, an
open file, raw bytes, name/content tuples and a stream of unknown length. Raw bytes and unnamed streams reach the
server as a part named `upload`, without an extension, which OpenAI accepts; each form must give a working batch."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from emulator_fixtures import chat_line, create, jsonl, rows, running, wait

LINES = [chat_line(i) for i in range(3)]
BODY = jsonl(LINES)


class _Stream(io.RawIOBase):
    """A body handed out in small pieces, with no name, no length and no seek: the client cannot know its size
    before the end, so it sends the upload chunked."""

    def __init__(self, data: bytes, piece: int = 7) -> None:
        self._data = data
        self._piece = piece
        self._sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data[self._sent:self._sent + min(len(buffer), self._piece)]
        buffer[:len(chunk)] = chunk
        self._sent += len(chunk)
        return len(chunk)


def _written(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(BODY)
    return path


FORMS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "path": (lambda tmp: _written(tmp, "requests.jsonl"), "requests.jsonl"),
    "path without extension": (lambda tmp: _written(tmp, "requests"), "requests"),
    "open file": (lambda tmp: _written(tmp, "open.jsonl").open("rb"), "open.jsonl"),
    "raw bytes": (lambda tmp: BODY, "upload"),
    "bytes io": (lambda tmp: io.BytesIO(BODY), "upload"),
    "name and bytes": (lambda tmp: ("named.jsonl", BODY), "named.jsonl"),
    "no name and bytes": (lambda tmp: (None, BODY), "upload"),
    "name, file and content type": (lambda tmp: ("typed.jsonl", io.BytesIO(BODY), "application/jsonl"),
                                    "typed.jsonl"),
    "name, file, content type and headers": (
        lambda tmp: ("headed.jsonl", io.BytesIO(BODY), "application/octet-stream", {"X-Part": "1"}),
        "headed.jsonl"),
    "stream": (lambda tmp: io.BufferedReader(_Stream(BODY)), "upload"),
    "named stream": (lambda tmp: ("streamed.jsonl", io.BufferedReader(_Stream(BODY))), "streamed.jsonl"),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_sdk_file_form_makes_a_working_batch(tmp_path, form):
    make, filename = FORMS[form]
    file = make(tmp_path)
    with running(tmp_path / "emu") as emu:
        try:
            uploaded = emu.client.files.create(file=file, purpose="batch")
        finally:
            if isinstance(file, io.IOBase):
                file.close()
        assert uploaded.filename == filename and uploaded.bytes == len(BODY) and uploaded.purpose == "batch"
        assert emu.client.files.content(uploaded.id).content == BODY
        batch = wait(emu, create(emu.client, uploaded.id).id)
        assert batch.status == "completed", batch.errors
        assert batch.request_counts is not None and batch.request_counts.completed == len(LINES)
        assert sorted(row["custom_id"] for row in rows(emu.client, batch.output_file_id)) == \
            sorted(line["custom_id"] for line in LINES)


@pytest.mark.parametrize(("file", "why"), [
    (b"this is not json\n", "not JSONL"),
    (b"[1, 2, 3]\n", "not a JSON object"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
    (("requests.txt", BODY), "another extension"),
    (("requests.json", BODY), "another extension"),
])
def test_a_batch_file_without_jsonl_content_or_with_another_extension_gets_400(tmp_path, file, why):
    with running(tmp_path / "emu") as emu:
        with pytest.raises(openai.BadRequestError) as info:
            emu.client.files.create(file=file, purpose="batch")
        error = info.value.response.json()["error"]
        assert error["param"] == "file" and error["code"] == "invalid_file_format", why
        assert emu.client.files.list().data == []


def test_other_purposes_take_any_name(tmp_path):
    with running(tmp_path / "emu") as emu:
        uploaded = emu.client.files.create(file=b"plain text, no extension", purpose="user_data")
        assert uploaded.filename == "upload"
        assert emu.client.files.content(uploaded.id).content == b"plain text, no extension"
