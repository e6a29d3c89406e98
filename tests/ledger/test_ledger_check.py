"""`batchgen ledger check` passes on a finished job and names each kind of tampering."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal

import pytest
from click.testing import CliRunner
from workspaces import TASK_API, batchgen, fresh_workspace

from batchgen.cli import cli
from batchgen.ledger import Ledger


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workspace = fresh_workspace(tmp_path_factory.mktemp("finished"))
    done = batchgen(workspace, "run", str(TASK_API), "--quiet")
    assert done.returncode == 0, done.stderr
    return workspace


@pytest.fixture
def workspace(finished, tmp_path, monkeypatch):
    """A copy of the finished workspace (its ledger records paths relative to the workspace, so the copy's are its
    own files)."""
    copy = tmp_path / ".batchgen"
    shutil.copytree(finished, copy)
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(copy))
    return copy


def check(*args: str):
    return CliRunner().invoke(cli, ["ledger", "check", *args], catch_exceptions=False)


def tamper(workspace, sql: str, params=()):
    with Ledger.open(workspace / "ledger.db") as ledger, ledger.transaction():
        ledger.db.execute(sql, params)


def test_a_finished_job_is_clean(workspace):
    result = check()
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Ledger {workspace / 'ledger.db'} is clean: 67 requests, 67 results, 2 batches")
    data = json.loads(check("--json").stdout)
    assert data["clean"] is True and data["problems"] == [] and data["checked"]["results"] == 67


def first_result(workspace) -> dict:
    with Ledger.open(workspace / "ledger.db") as ledger:
        row = ledger.one("SELECT * FROM results WHERE source = 'output' ORDER BY custom_id LIMIT 1")
    assert row is not None
    return row


def test_an_edited_cost(workspace):
    row = first_result(workspace)
    tamper(workspace, "UPDATE results SET cost_usd = ? WHERE custom_id = ?",
           [str(Decimal(row["cost_usd"]) + Decimal("0.000001")), row["custom_id"]])
    result = check()
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("result_cost: request " + row["custom_id"]) for line in lines)
    assert any(line.startswith(f"batch_cost: batch {row['batch_id']}") for line in lines)
    assert lines[-1].startswith(f"Ledger {workspace / 'ledger.db'}: 2 problem(s)")


def test_an_edited_standard_cost(workspace):
    row = first_result(workspace)
    tamper(workspace, "UPDATE results SET standard_cost_usd = '1' WHERE custom_id = ?", [row["custom_id"]])
    result = check()
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("result_cost:")] == [
        f"result_cost: request {row['custom_id']} records $1 at standard price but its usage prices at "
        f"${Decimal(row['standard_cost_usd'])}"]


def test_a_deleted_result(workspace):
    row = first_result(workspace)
    tamper(workspace, "DELETE FROM results WHERE custom_id = ?", [row["custom_id"]])
    kinds = {p["kind"] for p in json.loads(check("--json").stdout)["problems"]}
    assert {"missing_result", "outcome_without_result", "batch_cost"} <= kinds
    assert check().exit_code == 1


def test_a_removed_shard_file_and_result_file(workspace):
    with Ledger.open(workspace / "ledger.db") as ledger:
        shard = ledger.one("SELECT path FROM shards")
        batch = ledger.one("SELECT id FROM batches")
    assert shard is not None and batch is not None
    (workspace / "results" / "task_api" / f"{batch['id']}.output.jsonl").unlink()
    result = check()
    assert result.exit_code == 1
    assert f"missing_file: batch {batch['id']}: output file" in result.stdout
    shutil.rmtree(workspace / "shards")
    assert f"input file {workspace / shard['path']} does not exist" in check().stdout


def test_a_result_without_its_outcome_and_two_outcomes_for_a_variant(workspace):
    row = first_result(workspace)
    tamper(workspace, "UPDATE requests SET status = 'submitted' WHERE custom_id = ?", [row["custom_id"]])
    tamper(workspace, "INSERT INTO requests (custom_id, job, stage, variant, cell_json, shard_id, attempt, "
                      "input_tokens, status, batch_id) SELECT custom_id || '-again', job, stage, variant, cell_json, "
                      "shard_id, attempt + 1, input_tokens, 'failed', batch_id FROM requests WHERE custom_id = ?",
           [row["custom_id"]])
    tamper(workspace, "INSERT INTO results (custom_id, batch_id, job, source, cost_usd, collected_utc) "
                      "VALUES (?, ?, 'task_api', 'error', '0', 'now')", [row["custom_id"] + "-again", row["batch_id"]])
    kinds = [p["kind"] for p in json.loads(check("--json").stdout)["problems"]]
    assert sorted(kinds) == ["result_without_outcome", "several_outcomes"]


def test_a_pending_intent_and_a_second_batch_for_one_key(workspace):
    tamper(workspace, "UPDATE intents SET status = 'pending'")
    tamper(workspace, "INSERT INTO batches (id, job, shard_id, backend, status, input_file_id, est_cost_usd, "
                      "batch_json, submitted_utc, updated_utc) SELECT id || 'x', job, shard_id, backend, status, "
                      "input_file_id, est_cost_usd, batch_json, submitted_utc, updated_utc FROM batches")
    problems = json.loads(check("--json").stdout)["problems"]
    kinds = sorted({p["kind"] for p in problems})
    assert kinds == ["duplicate_batch", "pending_intent"]
