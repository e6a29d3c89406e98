"""The main job end to end, on the embedded emulator over real HTTP, through the CLI as a user runs it."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from workspaces import batchgen

from batchgen.cli import cli
from batchgen.dataset import result_lines as judge
from batchgen.dataset.validate import validate_example
from batchgen.ledger import Ledger
from batchgen.recipe import pricing
from batchgen.recipe.formats import parse_example
from batchgen.recipe.loader import load_spec
from batchgen.run.collect import rules_for

ROOT = Path(__file__).resolve().parents[2]
TASK_API = ROOT / "jobs" / "task_api"


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def dataset_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ledger_snapshot(workspace: Path) -> dict:
    with Ledger.open(workspace / "ledger.db") as ledger:
        return {
            "requests": ledger.rows("SELECT custom_id, status FROM requests ORDER BY custom_id"),
            "results": ledger.rows("SELECT custom_id, source, status_code, prompt_tokens, completion_tokens, "
                                   "cost_usd FROM results ORDER BY custom_id"),
            "examples": ledger.rows("SELECT custom_id, position, valid, category, content_hash FROM examples "
                                    "ORDER BY custom_id, position"),
        }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One `batchgen run jobs/task_api` from an empty workspace (shared by the tests that read its results)."""
    workspace = tmp_path_factory.mktemp("run") / ".batchgen"
    done = batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    return workspace, done


def test_run_finishes_and_prints_the_lessons_summary(finished_run):
    workspace, done = finished_run
    assert "Job task_api: done" in done.stdout
    assert "Valid: " in done.stdout and "Invalid reasons: " in done.stdout
    assert "Dataset: " in done.stdout


def test_every_exported_line_passes_the_validator(finished_run):
    workspace, _ = finished_run
    spec = load_spec(TASK_API)
    rules = rules_for(spec)
    lines = dataset_lines(workspace / "datasets" / "task_api.sharegpt.jsonl")
    assert 0 < len(lines) <= spec.target
    hashes = set()
    for line in lines:
        provenance = line.pop("_provenance")
        assert provenance["job"] == "task_api" and provenance["batch_id"].startswith("batch_")
        assert provenance["model"] == "gpt-4o-mini" and set(provenance["cell"]) == {"operation", "style",
                                                                                    "include_errors"}
        parse_example(line, "sharegpt")
        verdict = validate_example(line, "sharegpt", rules)
        assert verdict.valid, verdict.reason
        hashes.add(verdict.content_hash)
    assert len(hashes) == len(lines), "the dataset holds duplicates"


def test_running_again_submits_nothing_new(finished_run):
    workspace, _ = finished_run
    before = ledger_snapshot(workspace)
    with Ledger.open(workspace / "ledger.db") as ledger:
        batches = ledger.scalar("SELECT count(*) FROM batches")
    again = batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    assert "Job task_api: done" in again.stdout
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM batches") == batches
    assert ledger_snapshot(workspace) == before


def test_costs_add_up_to_the_micro_dollar(finished_run):
    workspace, _ = finished_run
    price = pricing.get_price("gpt-4o-mini")
    with Ledger.open(workspace / "ledger.db") as ledger:
        per_request = sum((Decimal(r["cost_usd"]) for r in ledger.rows("SELECT cost_usd FROM results")), Decimal(0))
        per_batch = sum((Decimal(r["actual_cost_usd"]) for r in ledger.rows("SELECT actual_cost_usd FROM batches")),
                        Decimal(0))
        from_usage = Decimal(0)
        for row in ledger.rows("SELECT batch_json FROM batches"):
            usage = json.loads(row["batch_json"])["usage"]
            cached = usage["input_tokens_details"]["cached_tokens"]
            from_usage += price.cost(usage["input_tokens"], cached, usage["output_tokens"])
    assert per_request == per_batch == from_usage > 0
    assert price.batch.input == Decimal("0.075") and price.batch.output == Decimal("0.30")


def test_compile_estimates_the_prompt_tokens_the_emulator_bills(finished_run):
    """Messages and the json_schema response format, request by request."""
    workspace, _ = finished_run
    with Ledger.open(workspace / "ledger.db") as ledger:
        pairs = ledger.db.execute("SELECT r.input_tokens, s.prompt_tokens FROM requests r JOIN results s "
                               "USING (custom_id) WHERE s.source = 'output'").fetchall()
    assert len(pairs) == 67 and all(estimated == billed for estimated, billed in pairs)


def test_submit_status_collect_in_new_processes_equals_run(finished_run, tmp_path):
    run_workspace, _ = finished_run
    workspace = tmp_path / ".batchgen"
    submitted = batchgen(workspace, "submit", str(TASK_API), check=True)
    assert "Submitted" in submitted.stdout
    status = batchgen(workspace, "status", "task_api", "--json", check=True)
    assert all(row["job"] == "task_api" for row in json.loads(status.stdout))
    for _ in range(100):
        collected = batchgen(workspace, "collect", "task_api", check=True)
        if "done" in collected.stdout.split(";")[-1] or "dataset" in collected.stdout:
            break
        if "to submit" in collected.stdout:  # a top-up for the cells below their share, as collect says
            batchgen(workspace, "submit", str(TASK_API), check=True)
    assert "dataset" in collected.stdout
    assert ledger_snapshot(workspace) == ledger_snapshot(run_workspace)
    ours = (workspace / "datasets" / "task_api.sharegpt.jsonl").read_bytes()
    theirs = (run_workspace / "datasets" / "task_api.sharegpt.jsonl").read_bytes()
    strip = lambda data: [  # noqa: E731 - batch ids differ between two emulators; the examples must not
        {k: v for k, v in json.loads(line).items() if k != "_provenance"} for line in data.splitlines()]
    assert strip(ours) == strip(theirs)


def test_judging_in_a_worker_process_records_the_same(finished_run, tmp_path, monkeypatch):
    """Every result file judged by the worker that large files get: the same ledger and dataset as `run`."""
    run_workspace, _ = finished_run
    workspace = tmp_path / ".batchgen"
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    monkeypatch.setattr(judge, "PARALLEL_BYTES", 0)
    assert "Valid: 601/670" in invoke("run", str(TASK_API), "--quiet").stdout
    assert ledger_snapshot(workspace) == ledger_snapshot(run_workspace)


def test_show_status_export_and_ledger_commands(finished_run, tmp_path, monkeypatch):
    workspace, _ = finished_run
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    show = invoke("show", "task_api", "--json")
    summary = json.loads(show.stdout)
    assert summary["status"] == "done" and summary["quality"]["valid"] > 0
    assert Decimal(summary["spent_usd"]) <= Decimal("0.15")
    out = tmp_path / "train.jsonl"
    exported = invoke("export", "task_api", "--format", "chatml", "-o", str(out), "--provenance", "sidecar")
    assert exported.exit_code == 0, exported.output
    for line in dataset_lines(out):
        assert set(line) == {"messages"} and line["messages"][0]["role"] in ("system", "user")
    assert len(dataset_lines(out)) == len(dataset_lines(Path(str(out) + ".provenance.jsonl"))) > 0
    jobs = json.loads(invoke("jobs", "list", "--json").stdout)
    assert [j["name"] for j in jobs] == ["task_api"]
    status = json.loads(invoke("ledger", "status", "--json").stdout)
    assert status["pending"] == [] and status["rows"]["results"] > 0
    assert invoke("ledger", "path").stdout.strip() == str(workspace / "ledger.db")
    backup = invoke("ledger", "backup", str(tmp_path / "copy.db"))
    assert backup.exit_code == 0 and (tmp_path / "copy.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "No job 'nope'"),
        (["cancel", "batch_nope"], "No job or batch 'batch_nope'"),
        (["export", "nope"], "No job 'nope'"),
    ],
)
def test_unknown_job_or_batch_is_one_line(args, message):
    Ledger.open(Path(os.environ["BATCHGEN_WORKSPACE"]) / "ledger.db").close()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output and "Traceback" not in result.output


def test_missing_key_with_backend_openai(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY")
    result = CliRunner().invoke(cli, ["run", str(TASK_API), "--backend", "openai", "--workspace", str(tmp_path)])
    assert result.exit_code == 1 and "OPENAI_API_KEY is not set" in result.output


def test_unreachable_base_url(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    result = CliRunner().invoke(cli, ["run", str(TASK_API), "--backend", "openai", "--workspace", str(tmp_path)])
    assert result.exit_code == 1 and "cannot reach http://127.0.0.1:9/v1" in result.output
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM batches") == 0


def test_workspace_that_cannot_be_written(tmp_path):
    """A workspace below a regular file cannot be created, whoever runs the test (root ignores permissions)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = CliRunner().invoke(cli, ["run", str(TASK_API), "--workspace", str(blocker / "ws")])
    assert result.exit_code == 1 and "is not writable" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("worker", [False, True], ids=["judged-here", "judged-by-worker"])
def test_corrupt_result_file_leaves_the_ledger_untouched(tmp_path, monkeypatch, worker):
    """A downloaded file that is not JSONL: one line, nothing recorded, and the next collect succeeds."""
    if worker:
        monkeypatch.setattr(judge, "PARALLEL_BYTES", 0)
    workspace = tmp_path / ".batchgen"
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    assert invoke("submit", str(TASK_API)).exit_code == 0
    with Ledger.open(workspace / "ledger.db") as ledger:
        batch_id = ledger.scalar("SELECT id FROM batches LIMIT 1")
    results = workspace / "results" / "task_api"
    results.mkdir(parents=True)
    (results / f"{batch_id}.output.jsonl").write_text('{"custom_id": "x", "response": \n', encoding="utf-8")
    failed = None
    for _ in range(200):
        failed = CliRunner().invoke(cli, ["collect", "task_api"])
        if failed.exit_code == 1:
            break
    assert failed.exit_code == 1 and "is corrupt at line 1" in failed.output
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM results WHERE batch_id = ?", [batch_id]) == 0
    assert not (results / f"{batch_id}.output.jsonl").exists()
    for _ in range(200):
        collected = invoke("collect", "task_api").stdout
        if "dataset" in collected:
            break
        if "to submit" in collected:  # the top-up for the cells below their share
            assert invoke("submit", str(TASK_API)).exit_code == 0
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM results") == ledger.scalar("SELECT count(*) FROM requests")


def test_a_50000_line_batch_has_exactly_one_result_per_custom_id(tmp_path):
    """One shard at the Batch API's line limit, through the emulator and back."""
    workspace = tmp_path / ".batchgen"
    (workspace / "emulator").mkdir(parents=True)
    (workspace / "emulator" / "config.json").write_text(json.dumps({"line_seconds": 0}), encoding="utf-8")
    done = batchgen(workspace, "run", str(ROOT / "tests" / "fixtures" / "jobs" / "big"), "--quiet", check=True)
    assert "Job big: done" in done.stdout
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM batches") == 1
        assert ledger.scalar("SELECT lines FROM shards") == 50_000
        assert ledger.scalar("SELECT count(*) FROM requests") == 50_000
        assert ledger.scalar("SELECT count(*) FROM results") == 50_000
        assert ledger.scalar("SELECT count(*) FROM requests r LEFT JOIN results s USING (custom_id) "
                             "WHERE s.custom_id IS NULL") == 0
        assert ledger.scalar("SELECT count(DISTINCT custom_id) FROM results") == 50_000
        counts = json.loads(ledger.scalar("SELECT batch_json FROM batches"))["request_counts"]
        assert counts == {"total": 50_000, "completed": 50_000, "failed": 0}
