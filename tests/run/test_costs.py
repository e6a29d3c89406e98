"""`batchgen costs`: the ledger's spend by job, model, day, batch, stage and cell, checked against a hand computation
from the output files the provider returned, and against the SQL the README shows."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from workspaces import FAST, ROOT, TASK_API, fresh_workspace, one_batch_job

from batchgen.cli import cli
from batchgen.ledger import Ledger

# gpt-4o-mini, USD per 1M tokens (spec table: batch 0.075 in / 0.30 out, no batch cached rate: the batch input
# rate; standard 0.15 in, 0.075 cached, 0.60 out).
BATCH = (Decimal("0.075"), Decimal("0.075"), Decimal("0.30"))
STANDARD = (Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def costs(*args: str) -> dict:
    result = invoke("costs", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def priced(rates: tuple[Decimal, Decimal, Decimal], prompt: int, cached: int, completion: int) -> Decimal:
    return ((prompt - cached) * rates[0] + cached * rates[1] + completion * rates[2]) / 1_000_000


def by_hand(workspace: Path) -> dict[str, object]:
    """Tokens and money from the downloaded output files alone, each answered line priced by the table above."""
    figures = {"requests": 0, "input": 0, "cached": 0, "output": 0, "cost": Decimal(0), "standard": Decimal(0)}
    for path in sorted((workspace / "results").rglob("*.output.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            usage = json.loads(line)["response"]["body"]["usage"]
            prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            figures["requests"] += 1
            figures["input"] += prompt
            figures["cached"] += cached
            figures["output"] += completion
            figures["cost"] += priced(BATCH, prompt, cached, completion)
            figures["standard"] += priced(STANDARD, prompt, cached, completion)
    return figures


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Task API job run to the end on the embedded emulator, with some lines failing (so some requests cost
    nothing), in a workspace of its own; its path."""
    parent = tmp_path_factory.mktemp("costs")
    workspace = fresh_workspace(parent, json.dumps({**json.loads(FAST), "error_rate": 0.1, "seed": 3}))
    env = {"BATCHGEN_WORKSPACE": str(workspace)}
    result = CliRunner(env=env).invoke(cli, ["run", str(TASK_API), "--quiet"])
    assert result.exit_code == 0, result.output
    return workspace


@pytest.fixture()
def in_ran(ran: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(ran))
    return ran


def test_the_total_is_the_hand_computation_from_the_output_files(in_ran):
    report = costs()
    total, hand = report["total"], by_hand(in_ran)
    errors = [line for line in (in_ran / "results").rglob("*.error.jsonl")]
    assert errors, "the run should have had failed lines, which cost nothing"
    assert Decimal(total["cost_usd"]) == hand["cost"] and Decimal(total["standard_usd"]) == hand["standard"]
    assert (total["input_tokens"], total["cached_tokens"], total["output_tokens"]) == (
        hand["input"], hand["cached"], hand["output"])
    assert Decimal(total["saving_usd"]) == hand["standard"] - hand["cost"]
    with Ledger.open(in_ran / "ledger.db") as ledger:
        answered = ledger.scalar("SELECT count(*) FROM results WHERE source = 'output'")
        outcomes = ledger.scalar("SELECT count(*) FROM results")
        estimated = sum(Decimal(e) for (e,) in ledger.db.execute(
            "SELECT est_cost_usd FROM batches WHERE collected = 1"))
    assert answered == hand["requests"] and total["requests"] == outcomes > answered
    assert Decimal(total["estimated_usd"]) == estimated
    error = (hand["cost"] - estimated) * 100 / estimated
    assert Decimal(total["estimate_error_pct"]) == error.quantize(Decimal("0.01"))
    assert total["sources"] and all(s.startswith("genai-prices") for s in total["sources"])


@pytest.mark.parametrize("by", ["job", "model", "day", "batch", "stage", "cell", "basis", "day,model", "stage,cell",
                                "job,basis"])
def test_every_grouping_adds_up_to_the_same_total(in_ran, by):
    report = costs("--by", by)
    whole = costs()["total"]
    assert report["by"] == by.split(",")
    for name in ("requests", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"):
        assert sum(line[name] for line in report["lines"]) == whole[name]
    for name in ("cost_usd", "standard_usd", "estimated_actual_usd"):
        assert sum(Decimal(line[name]) for line in report["lines"]) == Decimal(whole[name])
    assert abs(sum(Decimal(line["estimated_usd"]) for line in report["lines"])
               - Decimal(whole["estimated_usd"])) < Decimal("0.000000001")
    keys = [tuple(json.dumps(line[k], sort_keys=True) for k in report["by"]) for line in report["lines"]]
    assert len(keys) == len(set(keys)), "each group once"


def test_batches_and_cells_are_the_ledgers(in_ran):
    with Ledger.open(in_ran / "ledger.db") as ledger:
        batches = {b for (b,) in ledger.db.execute("SELECT id FROM batches WHERE collected = 1")}
        cells = {c for (c,) in ledger.db.execute(
            "SELECT DISTINCT q.cell_json FROM results r JOIN requests q ON q.custom_id = r.custom_id")}
    assert {line["batch"] for line in costs("--by", "batch")["lines"]} == batches
    assert {json.dumps(line["cell"], sort_keys=True) for line in costs("--by", "cell")["lines"]} == cells
    per_batch = {line["batch"]: line for line in costs("--by", "batch")["lines"]}
    with Ledger.open(in_ran / "ledger.db") as ledger:
        for batch_id, est, actual in ledger.db.execute("SELECT id, est_cost_usd, actual_cost_usd FROM batches"):
            assert Decimal(per_batch[batch_id]["estimated_usd"]) == Decimal(est)
            assert Decimal(per_batch[batch_id]["cost_usd"]) == Decimal(actual)


def test_days_filter_inclusively(in_ran):
    (day,) = {line["day"] for line in costs("--by", "day")["lines"]}
    assert costs("--since", day, "--until", day)["total"] == costs()["total"]
    assert costs("--since", f"{day}T00:00:00Z")["total"] == costs()["total"]
    later = costs("--since", "2999-01-01")
    assert later["lines"] == [] and later["total"]["requests"] == 0 and later["total"]["cost_usd"] == "0"
    assert costs("--until", "2000-01-01")["lines"] == []


def test_csv_rows_add_up_and_the_table_ends_with_the_total(in_ran):
    result = invoke("costs", "--by", "stage,cell", "--csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and list(rows[0])[:2] == ["stage", "cell"]
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(costs()["total"]["cost_usd"])
    table = invoke("costs", "--by", "stage").stdout.splitlines()
    total = costs()["total"]
    assert table[0].split()[:3] == ["stage", "requests", "input"]
    assert [line for line in table if line.startswith("total")][0].split()[1] == f"{total['requests']:,}"
    assert table[-1].startswith("Prices: genai-prices")


def test_the_readme_sql_gives_the_same_figures(in_ran):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```sql\n", 1)[1].split("```", 1)[0]
    queries = {name: sql.strip() for name, sql in re.findall(r"-- ([a-z-]+):[^\n]*\n(.*?;)", block, re.S)}
    assert set(queries) == {"cost-by-job", "cost-by-model-and-day", "estimate-by-job", "estimate-by-basis",
                            "previews-by-job"}
    db = sqlite3.connect(in_ran / "ledger.db")
    job, model_day, estimate, basis, previews = (db.execute(queries[name]).fetchall() for name in (
        "cost-by-job", "cost-by-model-and-day", "estimate-by-job", "estimate-by-basis", "previews-by-job"))
    total = costs()["total"]
    ((name, requests, prompt, cached, output, reasoning, cost, standard),) = job
    assert (name, requests, prompt, cached, output, reasoning) == (
        "task_api", total["requests"], total["input_tokens"], total["cached_tokens"], total["output_tokens"],
        total["reasoning_tokens"])
    micro = Decimal("0.000001")
    assert Decimal(str(cost)).quantize(micro) == Decimal(total["cost_usd"]).quantize(micro)
    assert Decimal(str(standard)).quantize(micro) == Decimal(total["standard_usd"]).quantize(micro)
    by_model_day = costs("--by", "model,day")["lines"]
    assert [(m, d, n) for m, d, n, _ in model_day] == [(x["model"], x["day"], x["requests"]) for x in by_model_day]
    ((_, estimated, actual),) = estimate
    assert Decimal(str(estimated)).quantize(micro) == Decimal(total["estimated_usd"]).quantize(micro)
    assert Decimal(str(actual)).quantize(micro) == Decimal(total["cost_usd"]).quantize(micro)
    by_basis = costs("--by", "job,basis")["lines"]
    assert [(j, b) for j, b, _, _ in basis] == [(x["job"], x["basis"]) for x in by_basis]
    for (_, _, estimated, actual), line in zip(basis, by_basis, strict=True):
        assert Decimal(str(estimated)).quantize(micro) == Decimal(line["estimated_usd"]).quantize(micro)
        assert Decimal(str(actual)).quantize(micro) == Decimal(line["cost_usd"]).quantize(micro)
    assert previews == []


def test_sqlite_utils_opens_the_ledger(in_ran):
    tool = Path(sys.executable).with_name("sqlite-utils")
    command = [str(tool)] if tool.exists() else [sys.executable, "-m", "sqlite_utils"]
    done = subprocess.run([*command, "query", str(in_ran / "ledger.db"),
                           "SELECT count(*) AS n FROM results"], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [{"n": costs()["total"]["requests"]}]


def test_cost_is_counted_once_however_often_collected_and_after_a_restore(in_ran, tmp_path):
    before = costs("--by", "batch")
    for _ in range(3):
        assert invoke("collect", "task_api").exit_code == 0
        assert invoke("run", str(TASK_API), "--quiet").exit_code == 0
    assert costs("--by", "batch") == before
    copy = tmp_path / "copy.db"
    assert invoke("ledger", "backup", str(copy)).exit_code == 0
    restored = tmp_path / "restored"
    shutil.copytree(in_ran, restored)
    for name in ("ledger.db-wal", "ledger.db-shm"):
        (restored / name).unlink(missing_ok=True)
    shutil.copy(copy, restored / "ledger.db")
    result = CliRunner(env={"BATCHGEN_WORKSPACE": str(restored)}).invoke(cli, ["run", str(TASK_API), "--quiet"])
    assert result.exit_code == 0, result.output
    again = CliRunner(env={"BATCHGEN_WORKSPACE": str(restored)}).invoke(cli, ["costs", "--by", "batch", "--json"])
    assert json.loads(again.stdout) == before


def test_results_without_a_recorded_standard_price_are_priced_now_and_counted(in_ran, tmp_path):
    copy = tmp_path / "old.db"
    assert invoke("ledger", "backup", str(copy)).exit_code == 0
    db = sqlite3.connect(copy)
    db.execute("UPDATE results SET standard_cost_usd = NULL")  # as a ledger of an older batchgen has them
    db.commit()
    db.close()
    old = CliRunner(env={"BATCHGEN_LEDGER": str(copy)}).invoke(cli, ["costs", "--json"])
    assert old.exit_code == 0, old.output
    total, now = json.loads(old.stdout)["total"], costs()["total"]
    assert total["standard_usd"] == now["standard_usd"] and total["repriced"] == by_hand(in_ran)["requests"]
    assert now["repriced"] == 0


def test_bad_options_are_one_line(in_ran):
    for args, message in ((("--by", "week"),  "Error: --by 'week': choose from job, model, day, batch, stage, cell"),
                          (("--since", "yesterday"), "Error: --since 'yesterday': expected a day as YYYY-MM-DD"),
                          (("--job", "nope"), "Error: No job 'nope' in ledger")):
        result = invoke("costs", *args)
        assert result.exit_code == 1 and result.output.startswith(message), result.output
        assert len(result.output.strip().splitlines()) == 1


def test_a_free_job_costs_nothing(tmp_path, monkeypatch):
    workspace = fresh_workspace(tmp_path)
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    job = one_batch_job(tmp_path, free="true", budget_usd="0")
    plan = json.loads(invoke("plan", str(job), "--json").stdout)
    assert Decimal(plan["cost_usd"]["batch_worst"]) == 0 and plan["verdict"] == "within", plan["cost_usd"]
    assert invoke("run", str(job), "--quiet").exit_code == 0
    total = costs()["total"]
    assert total["requests"] > 0 and total["input_tokens"] > 0
    assert Decimal(total["cost_usd"]) == Decimal(total["standard_usd"]) == 0
    assert [s.split(":")[0] for s in total["sources"]] == ["free"]


def test_a_ledger_restored_from_a_backup_taken_mid_job_counts_each_batch_once(tmp_path, monkeypatch):
    """Backed up while the first batch ran; the job then finished. The backup restored over a copy of the finished
    workspace (the provider has every batch) and the job resumed: the same batches, the same money."""
    workspace = fresh_workspace(tmp_path, json.dumps({**json.loads(FAST), "malformed_rate": 0.3, "seed": 5}))
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    assert invoke("submit", str(TASK_API)).exit_code == 0
    backup = tmp_path / "mid.db"
    assert invoke("ledger", "backup", str(backup)).exit_code == 0
    ended = invoke("run", str(TASK_API), "--quiet").exit_code
    assert ended in (0, 3)  # done, or ended with a cell short after its top-ups: the same either way below
    finished = costs("--by", "batch")
    assert len(finished["lines"]) >= 2, "the malformed answers should have needed a second batch"
    restored = tmp_path / "restored"
    shutil.copytree(workspace, restored)
    for name in ("ledger.db-wal", "ledger.db-shm"):
        (restored / name).unlink(missing_ok=True)
    shutil.copy(backup, restored / "ledger.db")
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(restored))
    assert invoke("run", str(TASK_API), "--quiet").exit_code == ended
    assert costs("--by", "batch") == finished
