"""Every answer carries one `x-request-id` shaped like OpenAI's (`req_<32 hex>`), a new one each time: successes,
error envelopes, unknown paths, control routes, refusals by the auth middleware and injected faults."""

from __future__ import annotations

import re

import httpx2
import openai
import pytest
from emulator_fixtures import chat_line, jsonl, running

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


def _one_id(response: httpx2.Response) -> str:
    values = response.headers.get_list("x-request-id")
    assert len(values) == 1, (response.request.method, response.request.url, values)
    assert REQUEST_ID.fullmatch(values[0]), values[0]
    return values[0]


def test_every_answer_has_one_request_id(tmp_path):
    with running(tmp_path / "emu", token="s3cret", api_key="s3cret") as emu:
        root = emu.base_url.removesuffix("/v1")
        auth = {"Authorization": "Bearer s3cret"}
        with httpx2.Client(base_url=root, headers=auth, timeout=30) as http:
            upload = http.post("/v1/files", data={"purpose": "batch"},
                               files={"file": ("in.jsonl", jsonl([chat_line(0)]))})
            chat = http.post("/v1/chat/completions", json=chat_line(0)["body"])
            answers = {
                "upload": upload,
                "files list": http.get("/v1/files"),
                "chat": chat,
                "unknown model": http.post("/v1/chat/completions", json={"model": "nope", "messages": []}),
                "bad json": http.post("/v1/batches", content=b"{not json",
                                      headers={"Content-Type": "application/json"}),
                "unknown batch": http.get("/v1/batches/batch_nope"),
                "unknown path": http.get("/v1/nothing"),
                "wrong method": http.put("/v1/batches"),
                "control": http.get("/_emulator/state"),
                "no key": http.get("/v1/files", headers={"Authorization": ""}),
                "wrong key": http.get("/v1/files", headers={"Authorization": "Bearer wrong"}),
                "not an admin key": http.get("/v1/organization/costs", params={"start_time": 0}),
            }
            assert upload.status_code == 200 and chat.status_code == 200
            assert [answers[k].status_code for k in ("unknown model", "bad json", "unknown batch", "unknown path",
                                                     "wrong method", "no key", "wrong key", "not an admin key")] \
                == [404, 400, 404, 404, 405, 401, 401, 403]
            assert answers["control"].status_code == 200
            ids = [_one_id(response) for response in answers.values()]
            assert len(set(ids)) == len(ids)


def test_injected_faults_have_a_request_id_too(tmp_path):
    with running(tmp_path / "emu") as emu:
        emu.control.configure(http_error_rate=1.0, http_retry_after=0)
        with httpx2.Client(base_url=emu.base_url, timeout=30) as http:
            answers = [http.get("/files") for _ in range(5)]
        assert {a.status_code for a in answers} <= {429, 500, 503}
        ids = [_one_id(answer) for answer in answers]
        assert len(set(ids)) == len(ids)


def test_the_sdk_reads_the_request_id(tmp_path):
    with running(tmp_path / "emu") as emu:
        listed = emu.client.files.with_raw_response.list()
        assert REQUEST_ID.fullmatch(listed.request_id or "")
        completion = emu.client.chat.completions.create(**chat_line(0)["body"])
        assert REQUEST_ID.fullmatch(completion._request_id or "")
        with pytest.raises(openai.NotFoundError) as info:
            emu.client.batches.retrieve("batch_nope")
        assert REQUEST_ID.fullmatch(info.value.request_id or "")
