"""Azure OpenAI's data plane through the SDK's own clients: `AzureOpenAI` on the classic
`{endpoint}/openai/...?api-version=` paths with the `api-key` header, and `OpenAI` on the newer `/openai/v1/` shape.
Azure's batch lines (url `/chat/completions`, a deployment name as model) run on the model behind the deployment;
auth and path errors answer in Azure's words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from emulator_fixtures import TERMINAL, jsonl, rows, running

TOKEN = "azure-test-key"
VERSION = "2025-03-01-preview"


def azure_line(i: int, model: str, url: str = "/chat/completions") -> dict[str, Any]:
    """A line as Azure's documentation writes one: no /v1 in the url, the deployment as model."""
    return {"custom_id": f"task-{i}", "method": "POST", "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": f"Say something about {i}."}]}}


def endpoint(emu: Any) -> str:
    """The resource endpoint Azure clients are given: the server's root, without /v1."""
    return str(emu.base_url).removesuffix("/v1")


def azure_client(emu: Any, **options: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=endpoint(emu), api_key=TOKEN, api_version=VERSION, max_retries=0,
                              timeout=30, **options)


def finish(emu: Any, client: Any, batch_id: str) -> Any:
    emu.control.wait_for(batch_id, TERMINAL, 20.0)
    return client.batches.retrieve(batch_id)


def test_azure_client_flow_upload_create_poll_download(tmp_path: Path) -> None:
    """Upload, create, retrieve, list, download the output, with a mapped deployment: the lines name the
    deployment, the model behind it runs, and Azure's shape of every object comes back."""
    with running(tmp_path / "emu", token=TOKEN, deployments={"batch-mini": "gpt-4o-mini"}) as emu:
        client = azure_client(emu)
        uploaded = client.files.create(file=("test.jsonl", jsonl([azure_line(i, "batch-mini") for i in range(3)])),
                                       purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes > 0
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions",
                                      completion_window="24h")
        assert batch.endpoint == "/chat/completions"
        done = finish(emu, client, batch.id)
        assert done.status == "completed", done.errors
        assert done.request_counts is not None and done.request_counts.completed == 3
        assert batch.id in [b.id for b in client.batches.list()]
        output = rows(client, done.output_file_id)  # type: ignore[arg-type]
        assert sorted(row["custom_id"] for row in output) == ["task-0", "task-1", "task-2"]
        assert {row["response"]["body"]["model"].startswith("gpt-4o-mini") for row in output} == {True}
        assert {row["response"]["status_code"] for row in output} == {200}


def test_azure_cancel(tmp_path: Path) -> None:
    with running(tmp_path / "emu", token=TOKEN, line_seconds=5) as emu:
        client = azure_client(emu)
        uploaded = client.files.create(file=("slow.jsonl", jsonl([azure_line(i, "gpt-4o-mini") for i in range(20)])),
                                       purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions",
                                      completion_window="24h")
        emu.control.wait_for(batch.id, ("in_progress",), 20.0)
        assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        assert finish(emu, client, batch.id).status == "cancelled"


def test_any_deployment_name_runs_its_own_model_when_none_is_mapped(tmp_path: Path) -> None:
    with running(tmp_path / "emu", token=TOKEN) as emu:
        client = azure_client(emu)
        uploaded = client.files.create(file=("a.jsonl", jsonl([azure_line(0, "gpt-4o-mini"),
                                                               azure_line(1, "gpt-4o-mini", "/v1/chat/completions")])),
                                       purpose="batch")
        done = finish(emu, client, client.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions",
                                                         completion_window="24h").id)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == 2


def test_an_unmapped_deployment_fails_the_batch_and_the_synchronous_call(tmp_path: Path) -> None:
    with running(tmp_path / "emu", token=TOKEN, deployments={"batch-mini": "gpt-4o-mini"}) as emu:
        client = azure_client(emu)
        uploaded = client.files.create(file=("b.jsonl", jsonl([azure_line(0, "nowhere")])), purpose="batch")
        done = finish(emu, client, client.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions",
                                                         completion_window="24h").id)
        assert done.status == "failed" and done.errors is not None and done.errors.data
        assert done.errors.data[0].code == "model_not_found" and "nowhere" in (done.errors.data[0].message or "")
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="nowhere", messages=[{"role": "user", "content": "hi"}])
        assert "DeploymentNotFound" in str(caught.value.body)
        answer = client.chat.completions.create(model="batch-mini", messages=[{"role": "user", "content": "hi"}])
        assert answer.model.startswith("gpt-4o-mini") and answer.choices[0].message.content


def test_openai_lines_on_the_plain_path_still_need_a_v1_url(tmp_path: Path) -> None:
    """Azure's relaxed lines are for Azure's paths: on /v1 a line without /v1 is refused as before."""
    with running(tmp_path / "emu", token=TOKEN) as emu:
        uploaded = emu.client.with_options(api_key=TOKEN).files.create(
            file=("c.jsonl", jsonl([azure_line(0, "gpt-4o-mini")])), purpose="batch")
        with pytest.raises(openai.BadRequestError):
            emu.client.with_options(api_key=TOKEN).batches.create(
                input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h")


def test_v1_shape_with_the_openai_client(tmp_path: Path) -> None:
    """Azure's newer shape: `OpenAI(base_url=f"{endpoint}/openai/v1/")`, no api-version, key as a bearer token."""
    with running(tmp_path / "emu", token=TOKEN, deployments={"batch-mini": "gpt-4o-mini"}) as emu:
        client = openai.OpenAI(base_url=f"{endpoint(emu)}/openai/v1/", api_key=TOKEN, max_retries=0, timeout=30)
        uploaded = client.files.create(file=("v1.jsonl", jsonl([azure_line(i, "batch-mini") for i in range(2)])),
                                       purpose="batch")
        done = finish(emu, client, client.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions",
                                                         completion_window="24h").id)
        assert done.status == "completed", done.errors
        assert len(rows(client, done.output_file_id)) == 2  # type: ignore[arg-type]
        assert client.models.list().data


def test_azure_paths_answer_as_azure_does(tmp_path: Path) -> None:
    """No api-version: 404 Resource not found; an unknown one: 400; no key or a wrong one: Azure's 401 texts;
    `api-key` opens the plain /v1 paths too."""
    with running(tmp_path / "emu", token=TOKEN) as emu:
        base = endpoint(emu)
        with httpx2.Client(timeout=10) as http:
            missing = http.get(f"{base}/openai/files", headers={"api-key": TOKEN})
            assert missing.status_code == 404 and missing.json()["error"]["message"] == "Resource not found"
            assert missing.headers.get("x-request-id")
            bad = http.get(f"{base}/openai/files", params={"api-version": "someday"}, headers={"api-key": TOKEN})
            assert bad.status_code == 400 and "API version not supported" in bad.text
            nokey = http.get(f"{base}/openai/files", params={"api-version": VERSION})
            assert nokey.status_code == 401 and "missing subscription key" in nokey.json()["error"]["message"]
            wrong = http.get(f"{base}/openai/files", params={"api-version": VERSION}, headers={"api-key": "nope"})
            assert wrong.status_code == 401 and "invalid subscription key" in wrong.json()["error"]["message"]
            assert http.get(f"{base}/openai/files", params={"api-version": VERSION},
                            headers={"api-key": TOKEN}).status_code == 200
            assert http.get(f"{base}/v1/files", headers={"api-key": TOKEN}).status_code == 200
            unknown = http.get(f"{base}/openai/assistants", params={"api-version": VERSION},
                               headers={"api-key": TOKEN})
            assert unknown.status_code == 404
        with pytest.raises(openai.AuthenticationError):
            openai.AzureOpenAI(azure_endpoint=base, api_key="nope", api_version=VERSION,
                               max_retries=0).files.list()


def test_downloaded_error_file_of_an_azure_batch_is_json_lines(tmp_path: Path) -> None:
    """A line the model refuses lands in the error file, downloadable through the Azure client."""
    with running(tmp_path / "emu", token=TOKEN, error_rate=1.0) as emu:
        client = azure_client(emu)
        uploaded = client.files.create(file=("e.jsonl", jsonl([azure_line(0, "gpt-4o-mini")])), purpose="batch")
        done = finish(emu, client, client.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions",
                                                         completion_window="24h").id)
        assert done.error_file_id is not None
        errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
        assert errors[0]["custom_id"] == "task-0" and errors[0]["response"]["status_code"] >= 400
