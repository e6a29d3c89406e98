"""`batchgen ledger reconcile`: the ledger compared with what the provider (the embedded emulator) says."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.cli import cli
from batchgen.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]
TASK_API = ROOT / "jobs" / "task_api"
FAST = {"line_seconds": 0, "validation_seconds": 0, "finalizing_seconds": 0}


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def workspace_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config: object) -> Path:
    workspace = tmp_path / ".batchgen"
    (workspace / "emulator").mkdir(parents=True)
    (workspace / "emulator" / "config.json").write_text(json.dumps({**FAST, **config}), encoding="utf-8")
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    return workspace


def reconcile(*args: str) -> tuple[int, dict]:
    result = invoke("ledger", "reconcile", *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def test_a_run_with_line_errors_malformed_answers_and_an_expired_batch_agrees(tmp_path, monkeypatch):
    workspace = workspace_with(tmp_path, monkeypatch, error_rate=0.1, malformed_rate=0.1, expire_after_fraction=0.5,
                               seed=4)
    assert invoke("submit", str(TASK_API)).exit_code == 0
    for _ in range(100):  # the first batch expires half done
        invoke("collect", "task_api")
        with Ledger.open(workspace / "ledger.db") as ledger:
            if ledger.scalar("SELECT count(*) FROM batches WHERE collected = 1"):
                break
    config = {**FAST, "error_rate": 0.1, "malformed_rate": 0.1, "seed": 4}  # the retries may finish
    (workspace / "emulator" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    # Done, or ended short (3) when the faults leave a cell below its share after the top-ups: how far the first
    # batch got before it expired depends on timing. Either way the ledger must agree with the provider.
    assert invoke("run", str(TASK_API), "--quiet").exit_code in (0, 3)
    code, report = reconcile()
    assert code == 0 and report["clean"], report
    statuses = {b["ledger_status"] for b in report["batches"]}
    assert "expired" in statuses and "completed" in statuses
    for batch in report["batches"]:
        assert batch["verdict"] == "agrees" and batch["ledger_tokens"] == batch["provider_tokens"]
        assert Decimal(batch["ledger_usd"]) == Decimal(batch["provider_usd"])
    table = invoke("ledger", "reconcile", "task_api")
    assert table.exit_code == 0 and table.stdout.strip().endswith("batch(es) agree with the provider")


def test_a_token_count_changed_in_the_ledger_is_found(tmp_path, monkeypatch):
    workspace = workspace_with(tmp_path, monkeypatch)
    assert invoke("run", str(TASK_API), "--quiet").exit_code == 0
    with Ledger.open(workspace / "ledger.db") as ledger, ledger.transaction():
        ledger.db.execute("UPDATE results SET completion_tokens = completion_tokens + 7 WHERE rowid = 1")
        changed = ledger.scalar("SELECT batch_id FROM results WHERE rowid = 1")
    code, report = reconcile()
    assert code == 1 and not report["clean"]
    assert len(report["batches"]) == 2  # the plan's batch and the top-up's: only the changed one differs
    (batch,) = [batch for batch in report["batches"] if batch["verdict"] != "agrees"]
    assert batch["batch"] == changed and batch["verdict"] == "differs"
    assert batch["problems"] == [f"output tokens: ledger {batch['provider_tokens']['output'] + 7:,}, "
                                 f"provider {batch['provider_tokens']['output']:,}"]


def test_a_batch_the_ledger_did_not_record_is_listed(tmp_path, monkeypatch):
    """A crash after the create and before the record: the provider has the batch, the ledger only its intent."""
    workspace = workspace_with(tmp_path, monkeypatch)
    assert invoke("submit", str(TASK_API)).exit_code == 0
    with Ledger.open(workspace / "ledger.db") as ledger, ledger.transaction():
        batch_id = ledger.scalar("SELECT id FROM batches")
        ledger.db.execute("DELETE FROM batches")
    code, report = reconcile()
    assert code == 1 and report["batches"] == []
    assert report["unrecorded"] == [{"batch": batch_id, "job": "task_api", "status": report["unrecorded"][0]["status"]}]
    assert "not in the ledger: " + batch_id in invoke("ledger", "reconcile").stdout


def test_a_batch_still_running_is_noted_not_compared(tmp_path, monkeypatch):
    workspace_with(tmp_path, monkeypatch, line_seconds=30)
    assert invoke("submit", str(TASK_API)).exit_code == 0
    code, report = reconcile("task_api")
    assert code == 0 and report["clean"]
    (batch,) = report["batches"]
    assert batch["verdict"] == "noted" and batch["ledger_tokens"] is None
    assert batch["notes"][0].startswith("still ")


def test_an_unknown_job_is_one_line(tmp_path, monkeypatch):
    Ledger.open(workspace_with(tmp_path, monkeypatch) / "ledger.db").close()
    result = invoke("ledger", "reconcile", "nope")
    assert result.exit_code == 1 and result.output.startswith("Error: No job 'nope'")
    assert "Traceback" not in result.output


def test_a_price_changed_since_collection_is_noted_and_the_record_stands(tmp_path, monkeypatch):
    workspace = workspace_with(tmp_path, monkeypatch)
    assert invoke("run", str(TASK_API), "--quiet").exit_code == 0
    with Ledger.open(workspace / "ledger.db") as ledger:
        before = ledger.rows("SELECT custom_id, cost_usd, standard_cost_usd, priced_by FROM results ORDER BY 1")
    code, report = reconcile()
    assert code == 0 and all(b["repriced_usd"] is None and b["verdict"] == "agrees" for b in report["batches"])
    prices = tmp_path / "new-prices.toml"
    prices.write_text('[models."gpt-4o-mini"]\ninput = "0.30"\noutput = "1.20"\nsource = "a new price list"\n',
                      encoding="utf-8")
    monkeypatch.setenv("BATCHGEN_PRICES", str(prices))
    code, report = reconcile()
    assert code == 0 and report["clean"]  # a changed price is not a disagreement with the provider
    for batch in report["batches"]:
        recorded = Decimal(batch["ledger_usd"])
        assert Decimal(batch["repriced_usd"]) == recorded * 2  # every rate doubled
        assert batch["verdict"] == "noted"
        (note,) = batch["notes"]
        assert note.startswith("priced $") and "genai-prices" in note and "a new price list" in note
        assert note.endswith("the record stands")
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.rows("SELECT custom_id, cost_usd, standard_cost_usd, priced_by FROM results ORDER BY 1") == before
    assert "today's price gives" in invoke("ledger", "reconcile").stdout
