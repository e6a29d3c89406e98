"""`batchgen run --backend azure` end to end against `batchgen serve`, in Azure's two shapes: the SDK's AzureOpenAI
(`/openai/...?api-version=`, `api-key`) and the v1 shape (`/openai/v1/`). What reaches the server is what Azure
takes: lines with the url `/chat/completions` and the deployment as model, a batch for `/chat/completions`; the
job's files, plan and spec hash stay those of an OpenAI job."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from loopback import free_port, serve
from workspaces import batchgen, fresh_workspace, one_batch_job

from batchgen.ledger import Ledger

TOKEN = "azure-run-key"


@pytest.fixture
def azure_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    server = serve(tmp_path / "state", port, "--token", TOKEN, "--deployment", "batch-mini=gpt-4o-mini",
                   "--validation-seconds", "0", "--line-seconds", "0", "--finalizing-seconds", "0")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.communicate(timeout=15)


def uploaded_lines(endpoint: str) -> tuple[list[dict[str, str]], list[dict[str, object]]]:
    """The batches on the server (endpoint, model) and the lines of their input files, read back over the v1 shape."""
    client = openai.OpenAI(base_url=f"{endpoint}/openai/v1/", api_key=TOKEN, max_retries=0, timeout=30)
    with client:
        batches = list(client.batches.list())
        lines = [json.loads(line) for batch in batches
                 for line in client.files.content(batch.input_file_id).text.splitlines()]
        return [{"endpoint": b.endpoint, "model": b.model or ""} for b in batches], lines


@pytest.mark.parametrize("version", ["2025-03-01-preview", None], ids=["api-version", "v1"])
def test_a_job_runs_to_its_target_on_azure(tmp_path: Path, azure_server: str, version: str | None) -> None:
    workspace, job = fresh_workspace(tmp_path), one_batch_job(tmp_path, deployment='"batch-mini"')
    env = {"AZURE_OPENAI_ENDPOINT": azure_server, "AZURE_OPENAI_API_KEY": TOKEN}
    env |= {"OPENAI_API_VERSION": version} if version else {}
    batchgen(workspace, "submit", str(job), "--backend", "azure", check=True, **env)
    batches, lines = uploaded_lines(azure_server)  # before collect deletes the input files
    assert batches and {b["endpoint"] for b in batches} == {"/chat/completions"}
    assert {b["model"].split("-2")[0] for b in batches} == {"gpt-4o-mini"}  # the deployment's model ran
    assert lines and {line["url"] for line in lines} == {"/chat/completions"}
    assert {line["body"]["model"] for line in lines} == {"batch-mini"}  # type: ignore[index]
    done = batchgen(workspace, "run", str(job), "--backend", "azure", "--quiet", "--json", check=True, **env)
    summary = json.loads(done.stdout)
    assert summary["status"] == "done" and summary["dataset"]["examples"] >= 50, summary
    with Ledger.open(workspace / "ledger.db") as ledger:
        backends = {row["backend"] for row in ledger.rows("SELECT backend FROM batches")}
    assert backends and all(b.startswith("azure:") and TOKEN not in b for b in backends)
    shards = [path for path in (workspace / "shards").rglob("shard-*.jsonl") if "manifest" not in path.name]
    compiled = [json.loads(line) for path in shards for line in path.read_text(encoding="utf-8").splitlines()]
    assert {line["url"] for line in compiled} == {"/v1/chat/completions"}  # the shard stays OpenAI's
    assert {line["body"]["model"] for line in compiled} == {"gpt-4o-mini"}


def test_the_environment_names_the_deployment(tmp_path: Path, azure_server: str) -> None:
    """$AZURE_OPENAI_DEPLOYMENT wins over the job's `deployment`; a deployment the server lacks fails the batch."""
    workspace, job = fresh_workspace(tmp_path), one_batch_job(tmp_path, deployment='"batch-mini"')
    env = {"AZURE_OPENAI_ENDPOINT": azure_server, "AZURE_OPENAI_API_KEY": TOKEN,
           "AZURE_OPENAI_DEPLOYMENT": "no-such-deployment"}
    batchgen(workspace, "submit", str(job), "--backend", "azure", check=True, **env)
    _, lines = uploaded_lines(azure_server)
    assert {line["body"]["model"] for line in lines} == {"no-such-deployment"}  # type: ignore[index]
    done = batchgen(workspace, "run", str(job), "--backend", "azure", "--quiet", **env)
    assert done.returncode != 0
    assert "no-such-deployment" in done.stdout + done.stderr


def test_missing_azure_settings_are_one_error_line(tmp_path: Path) -> None:
    workspace, job = fresh_workspace(tmp_path), one_batch_job(tmp_path)
    done = batchgen(workspace, "run", str(job), "--backend", "azure", "--quiet",
                    AZURE_OPENAI_ENDPOINT="", AZURE_OPENAI_API_KEY="")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: The azure backend needs AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY set in the environment"]


def test_the_deployment_does_not_change_the_spec_hash(tmp_path: Path) -> None:
    plain = one_batch_job(tmp_path / "a")
    named = one_batch_job(tmp_path / "b", deployment='"batch-mini"')
    workspace = fresh_workspace(tmp_path)
    hashes = [json.loads(batchgen(workspace, "plan", str(job), "--json", check=True).stdout)["spec_hash"]
              for job in (plain, named)]
    assert hashes[0] == hashes[1]
