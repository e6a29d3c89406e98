"""`batchgen ledger reconcile --usage` against the embedded emulator's organization Usage and Costs APIs."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from pathlib import Path

import pytest
from test_ledger_reconcile import TASK_API, invoke
from test_ledger_reconcile import workspace_with as reconcile_workspace

from batchgen.emulator import start_embedded
from batchgen.ledger import Ledger


def workspace_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config: object) -> Path:
    """test_ledger_reconcile's workspace, with an admin key for the Usage and Costs APIs."""
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-reconcile")
    return reconcile_workspace(tmp_path, monkeypatch, **config)


def reconcile_usage(*args: str) -> tuple[int, dict]:
    result = invoke("ledger", "reconcile", "--usage", *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def test_a_run_agrees_with_the_emulated_usage_and_costs_until_the_provider_bills_more(tmp_path, monkeypatch):
    workspace = workspace_with(tmp_path, monkeypatch, error_rate=0.1, seed=3)
    assert invoke("run", str(TASK_API), "--quiet").exit_code in (0, 3)
    with Ledger.open(workspace / "ledger.db") as ledger:
        answered = ledger.scalar("SELECT count(*) FROM results")
    code, report = reconcile_usage()
    assert code == 0 and report["clean"], report
    assert report["tokens"] and report["money"]
    [row] = [r for r in report["tokens"] if r["ledger"]["requests"]]
    assert row["provider"] == row["ledger"] and row["provider"]["requests"] > 0
    assert answered >= row["ledger"]["requests"]
    for money in report["money"]:
        assert Decimal(str(money["provider_usd"])) == Decimal(str(money["ledger_usd"])) > 0
    day, model = row["day"], row["model"]
    with start_embedded(workspace / "emulator") as emulator:  # the provider counts more on that day
        emulator.control.adjust_usage(day, model, input_tokens=row["ledger"]["input"], requests=5,
                                      cost_usd="1.00")
    code, report = reconcile_usage("--since", day, "--until", day)
    assert code == 1 and not report["clean"]
    [row] = [r for r in report["tokens"] if r["day"] == day and r["model"] == model]
    assert row["difference"]["requests"] == 5 and row["difference"]["input"] == row["ledger"]["input"]
    [money] = [m for m in report["money"] if m["day"] == day]
    assert Decimal(str(money["difference_usd"])) == Decimal("1.00")
    assert datetime.date.fromisoformat(day)
