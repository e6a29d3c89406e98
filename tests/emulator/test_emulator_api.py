"""The emulator's HTTP API through the official openai SDK over real loopback HTTP: the happy path against the
OpenAPI schemas, files, listing, and every kind of bad input with its status and error envelope."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import openai
import pytest
from emulator_fixtures import chat_line, create, rows, running, upload, validate, wait

from batchgen.recipe.tokens import count_messages


def test_three_line_happy_path_matches_the_schemas(tmp_path):
    with running(tmp_path / "emu") as emu:
        lines = [chat_line(i) for i in range(3)]
        uploaded = upload(emu.client, lines)
        assert isinstance(uploaded, openai.types.FileObject)
        assert uploaded.id.startswith("file-") and len(uploaded.id) == 27
        assert uploaded.purpose == "batch" and uploaded.bytes > 0 and uploaded.status == "processed"
        validate("OpenAIFile", emu.client.files.with_raw_response.retrieve(uploaded.id).http_response.json())

        batch = create(emu.client, uploaded.id, metadata={"job": "demo"})
        assert batch.status == "validating" and batch.model is None
        assert batch.expires_at == batch.created_at + 86400
        assert batch.id.startswith("batch_") and len(batch.id) == 38
        assert batch.request_counts.total == 0

        done = wait(emu, batch.id)
        raw = emu.client.batches.with_raw_response.retrieve(batch.id).http_response.json()
        validate("Batch", raw)
        assert isinstance(done, openai.types.Batch)
        assert done.status == "completed" and done.error_file_id is None and done.model == "gpt-4o-mini"
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 3, 0)
        assert done.in_progress_at is not None and done.finalizing_at is not None
        assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
        assert done.metadata == {"job": "demo"}

        output = emu.client.files.retrieve(done.output_file_id)
        assert output.purpose == "batch_output" and output.expires_at == output.created_at + 30 * 86400
        results = rows(emu.client, done.output_file_id)
        assert sorted(r["custom_id"] for r in results) == ["req-0", "req-1", "req-2"]
        for row in results:
            validate("BatchRequestOutput", row)
            assert row["id"].startswith("batch_req_") and row["error"] is None
            assert row["response"]["status_code"] == 200 and row["response"]["request_id"].startswith("req_")
            body = row["response"]["body"]
            assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
            line = lines[int(row["custom_id"].split("-")[1])]
            assert body["usage"]["prompt_tokens"] == count_messages(line["body"]["messages"], "gpt-4o-mini")
        usage = done.usage
        assert usage.input_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in results)
        assert usage.output_tokens == sum(r["response"]["body"]["usage"]["completion_tokens"] for r in results)
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_files_list_delete_and_content(tmp_path):
    with running(tmp_path / "emu") as emu:
        ids = [upload(emu.client, [chat_line(i)], name=f"f{i}.jsonl").id for i in range(3)]
        page = emu.client.files.list(purpose="batch")
        assert {f.id for f in page.data} == set(ids)
        validate("ListFilesResponse", emu.client.files.with_raw_response.list().http_response.json())
        assert json.loads(emu.client.files.content(ids[0]).text)["custom_id"] == "req-0"
        deleted = emu.client.files.delete(ids[0])
        assert deleted.deleted is True and deleted.id == ids[0]
        with pytest.raises(openai.NotFoundError):
            emu.client.files.retrieve(ids[0])
        assert {f.id for f in emu.client.files.list().data} == set(ids[1:])


def test_batches_list_pages_newest_first(tmp_path):
    with running(tmp_path / "emu") as emu:
        file_id = upload(emu.client, [chat_line(0)]).id
        created = [create(emu.client, file_id).id for _ in range(5)]
        first = emu.client.batches.list(limit=2)
        assert [b.id for b in first.data] == created[::-1][:2] and first.has_more
        raw = emu.client.batches.with_raw_response.list(limit=2).http_response.json()
        validate("ListBatchesResponse", raw)
        assert raw["first_id"] == created[-1] and raw["last_id"] == created[-2]
        assert [b.id for b in emu.client.batches.list(limit=2)] == created[::-1]  # SDK auto-pagination
        last = emu.client.batches.list(limit=2, after=created[1])
        assert [b.id for b in last.data] == [created[0]] and not last.has_more


def _status_and_error(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return info.value.status_code, body["error"]


class _Generated(io.RawIOBase):
    """A large JSONL body produced on the fly, so a big upload needs no big file."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.line = (json.dumps(chat_line(0)) + "\n").encode()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.sent)
        if n <= 0:
            return 0
        chunk = (self.line * (n // len(self.line) + 1))[:n]
        buffer[:n] = chunk
        self.sent += n
        return n


def test_a_250_mb_upload_gets_413(tmp_path):
    with running(tmp_path / "emu") as emu:
        body = _Generated(250 * 1024 * 1024)
        status, error = _status_and_error(lambda: emu.client.files.create(file=("big.jsonl", body),
                                                                         purpose="batch"))
        assert status == 413 and error["code"] == "file_too_large"
        assert emu.client.files.list().data == []
        assert list((tmp_path / "emu" / "files").iterdir()) == []


@pytest.mark.parametrize(("name", "content", "param"), [
    ("notes.txt", b'{"a": 1}\n', "file"),
    ("data.jsonl", b"this is not json\n", "file"),
    ("data.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", "file"),
])
def test_an_upload_that_is_not_jsonl_gets_400(tmp_path, name, content, param):
    with running(tmp_path / "emu") as emu:
        status, error = _status_and_error(lambda: emu.client.files.create(file=(name, content), purpose="batch"))
        assert status == 400 and error["param"] == param and error["type"] == "invalid_request_error"


def test_unknown_ids_get_404(tmp_path):
    with running(tmp_path / "emu") as emu:
        calls = [lambda: emu.client.files.retrieve("file-nope"), lambda: emu.client.files.content("file-nope"),
                 lambda: emu.client.files.delete("file-nope"), lambda: emu.client.batches.retrieve("batch_nope"),
                 lambda: emu.client.batches.cancel("batch_nope")]
        for call in calls:
            status, error = _status_and_error(call)
            assert status == 404 and "nope" in error["message"]


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"endpoint": "/v1/nonsense"}, "endpoint"),
    ({"completion_window": "1h"}, "completion_window"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
])
def test_bad_batch_requests_get_400(tmp_path, kwargs, param):
    with running(tmp_path / "emu") as emu:
        file_id = upload(emu.client, [chat_line(0)]).id
        args = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **kwargs}
        status, error = _status_and_error(lambda: emu.client.batches.create(**args))
        assert status == 400 and error["param"] == param
        assert emu.client.batches.list().data == []


def test_bearer_token_is_enforced(tmp_path):
    with running(tmp_path / "emu", token="s3cret", api_key="s3cret") as emu:
        assert emu.client.batches.list().data == []
        for key in ("wrong", ""):
            client = openai.OpenAI(base_url=emu.base_url, api_key=key or "x", max_retries=0,
                                   default_headers={"Authorization": ""} if not key else None)
            with client:
                status, error = _status_and_error(lambda c=client: c.batches.list())
                assert status == 401
                status, _ = _status_and_error(lambda c=client: c.files.create(file=("a.jsonl", b"{}\n"),
                                                                              purpose="batch"))
                assert status == 401
        request = urllib.request.Request(emu.base_url.replace("/v1", "/_emulator/state"))
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        with info.value:
            assert info.value.code == 401
        assert emu.control.state()["executor"] == "simulate"


def test_unknown_path_and_method_get_the_envelope(tmp_path):
    with running(tmp_path / "emu") as emu:
        for method, path in (("GET", "/v1/nothing"), ("PUT", "/v1/batches")):
            request = urllib.request.Request(emu.base_url[:-3] + path, method=method)
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=5)
            with info.value:
                assert info.value.code in (404, 405)
                assert set(json.loads(info.value.read())["error"]) == {"message", "type", "param", "code"}


def test_malformed_json_body_gets_400(tmp_path):
    with running(tmp_path / "emu") as emu:
        request = urllib.request.Request(emu.base_url + "/batches", data=b"{not json", method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        with info.value:
            assert info.value.code == 400


def test_control_api_is_off_unless_enabled(tmp_path):
    with running(tmp_path / "emu", control=False) as emu:
        with pytest.raises(Exception, match="404"):
            emu.control.state()
