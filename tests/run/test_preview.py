"""`batchgen preview`: a few requests sent synchronously before a run, judged as collect judges, priced at standard
price and recorded as preview spend, through the CLI as a user runs it (the embedded emulator, and a fake OpenAI
server on 127.0.0.1 for what only a paid backend does: a server on this machine is free, so it is priced by a
price file at OpenAI's rates, as a paid one would be)."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from loopback import loopback_server
from workspaces import EVOL, TASK_API, batchgen, fresh_workspace

from batchgen.dataset import result_lines
from batchgen.ledger import Ledger
from batchgen.money import format_usd
from batchgen.recipe.loader import load_spec
from batchgen.recipe.pricing import LOCAL_SOURCE, get_price
from batchgen.recipe.render import Renderer
from batchgen.recipe.variants import VariantPlan
from batchgen.run.collect import rules_for
from batchgen.run.preview import spread_indices

PRICE = get_price("gpt-4o-mini")


def rows(workspace: Path, sql: str) -> list[dict[str, Any]]:
    with Ledger.open(workspace / "ledger.db") as ledger:
        return ledger.rows(sql)


def copy_job(tmp_path: Path, source: Path = TASK_API, **replace: str) -> Path:
    """A copy of a shipped job with some text of its job.toml replaced."""
    job = tmp_path / "jobs" / source.name
    shutil.copytree(source, job)
    toml = job / "job.toml"
    text = toml.read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    toml.write_text(text, encoding="utf-8")
    return job


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


# -- on the embedded emulator ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def previewed(tmp_path_factory) -> tuple[Path, Any]:
    """One `batchgen preview jobs/task_api` from an empty workspace."""
    workspace = fresh_workspace(tmp_path_factory.mktemp("preview"))
    return workspace, batchgen(workspace, "preview", str(TASK_API), check=True)


def test_preview_prints_five_judged_examples_and_the_yield(previewed):
    _, done = previewed
    heads = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in heads] == ["[1]", "[2]", "[3]", "[4]", "[5]"]
    assert "operation=create style=formal include_errors=false" in heads[0]
    verdicts = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ") and line[4] != " "]
    assert verdicts and set(verdicts) <= {"valid", "invalid"}
    assert "Valid: " in done.stdout and "at this yield the stage's 55 requests give about" in done.stdout
    assert "Invalid reasons: " in done.stdout


def test_the_cost_is_shown_before_it_is_spent_and_recorded_as_preview_spend(previewed):
    workspace, done = previewed
    assert done.stderr.startswith("Preview of task_api, stage main: 5 of its 55 requests to the embedded emulator, "
                                  "which bills nothing, at standard price: $")
    recorded = rows(workspace, "SELECT * FROM previews ORDER BY id")
    assert [r["run"] for r in recorded] == [1] * 5 and {r["backend"] for r in recorded} == {"embedded"}
    for row in recorded:
        standard = PRICE.cost(row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"], batch=False)
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert Decimal(row["cost_usd"]) == standard
        assert standard == 2 * PRICE.cost(row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"])
    spent = sum((Decimal(r["cost_usd"]) for r in recorded), Decimal(0))
    assert f"Spent: {format_usd(spent)} at standard price" in done.stdout
    assert "the embedded emulator bills nothing" in done.stdout


def test_the_emulator_bills_the_tokens_batchgen_counted(previewed):
    workspace, _ = previewed
    spec = load_spec(TASK_API)
    stage = spec.stage()
    plan, renderer = VariantPlan(spec, stage), Renderer(spec, stage)
    for row in rows(workspace, "SELECT variant, prompt_tokens FROM previews ORDER BY id"):
        assert row["prompt_tokens"] == renderer.body(plan.variant(row["variant"]))[1]


def test_a_preview_submits_nothing_and_tick_leaves_the_job_alone(previewed):
    workspace, _ = previewed
    for table in ("shards", "requests", "batches", "results", "examples", "intents"):
        assert rows(workspace, f"SELECT count(*) AS n FROM {table}") == [{"n": 0}], table
    assert rows(workspace, "SELECT status, stage FROM jobs") == [{"status": "previewed", "stage": "main"}]
    assert "task_api  previewed" in batchgen(workspace, "jobs", "list", check=True).stdout
    assert batchgen(workspace, "tick", check=True).stdout.strip() == "tick: no active jobs"
    assert rows(workspace, "SELECT count(*) AS n FROM batches") == [{"n": 0}]


def test_show_reports_the_preview_spend_apart_from_batch_spend(previewed):
    workspace, _ = previewed
    spent = sum((Decimal(r["cost_usd"]) for r in rows(workspace, "SELECT cost_usd FROM previews")), Decimal(0))
    summary = json.loads(batchgen(workspace, "show", "task_api", "--json", check=True).stdout)
    assert Decimal(summary["spent_usd"]) == 0
    assert Decimal(summary["preview"]["cost_usd"]) == spent
    assert summary["preview"]["requests"] >= 5 and summary["preview"]["backends"] == ["embedded"]
    text = batchgen(workspace, "show", "task_api", check=True).stdout
    assert "Cost: $0.00 at batch price" in text
    assert f"Preview: {format_usd(Decimal(summary['preview']['cost_usd']))} at standard price" in text


def test_run_twice_a_preview_sends_again_and_says_what_it_spent(tmp_path):
    workspace = fresh_workspace(tmp_path)
    first = batchgen(workspace, "preview", str(TASK_API), "-n", "2", check=True)
    second = batchgen(workspace, "preview", str(TASK_API), "-n", "2", check=True)
    once = sum((Decimal(r["cost_usd"]) for r in rows(workspace, "SELECT cost_usd FROM previews WHERE run = 1")),
               Decimal(0))
    assert rows(workspace, "SELECT run, count(*) AS n FROM previews GROUP BY run") == [{"run": 1, "n": 2},
                                                                                       {"run": 2, "n": 2}]
    assert "recorded as preview 1 of task_api" in first.stdout
    assert "recorded as preview 2 of task_api" in second.stdout
    assert f"Spent: {format_usd(once)} at standard price" in second.stdout  # the emulator answers alike
    assert f"Previews of task_api have spent {format_usd(2 * once)}" in second.stdout


def test_preview_json_names_every_request_verdict_and_cost(tmp_path):
    workspace = fresh_workspace(tmp_path)
    done = batchgen(workspace, "preview", str(TASK_API), "-n", "3", "--stage", "main", "--json", check=True)
    report = json.loads(done.stdout)
    spec = load_spec(TASK_API)
    assert [r["variant"] for r in report["requests"]] == spread_indices(VariantPlan(spec, spec.stage()), 3)
    assert len({json.dumps(r["cell"], sort_keys=True) for r in report["requests"]}) == 3
    examples = [e for r in report["requests"] for e in r["examples"]]
    assert report["quality"]["total"] == len(examples) and report["quality"]["valid"] == sum(e["valid"] for e in
                                                                                             examples)
    assert all(set(e) == {"content", "valid", "category", "reason"} for e in examples)
    assert Decimal(report["spent_usd"]) == sum((Decimal(r["cost_usd"]) for r in report["requests"]), Decimal(0))
    assert Decimal(report["estimate"]["expected_usd"]) <= Decimal(report["estimate"]["worst_usd"])
    assert report["billed"] is False and report["preview"] == 1 and report["planned_requests"] == 55


def test_the_requests_are_spread_over_the_cells_the_same_every_time():
    spec = load_spec(TASK_API)
    plan = VariantPlan(spec, spec.stage())
    assert spread_indices(plan, 5) == [0, 11, 22, 33, 44] == spread_indices(VariantPlan(spec, spec.stage()), 5)
    every_cell = spread_indices(plan, 40)
    assert len({json.dumps(plan.cells.cell(i), sort_keys=True) for i in every_cell}) == 40
    assert spread_indices(plan, 55) == list(range(55)) and spread_indices(plan, 80) == list(range(55))
    evol = load_spec(EVOL)
    simple = VariantPlan(evol, evol.stage("simple"))  # 5 cells, 15 requests: 8 picks repeat cells, never a request
    picked = spread_indices(simple, 8)
    assert len(set(picked)) == 8 and len({simple.cells.cell(i)["operation"] for i in picked}) == 5


def test_a_broken_prompt_shows_at_once(tmp_path):
    patterns = '"Created task:", "Updated task:", "Completed task:", "Deleted task:", "Error:", "tasks found"'
    job = copy_job(tmp_path, **{patterns: '"Task saved:"'})  # a pattern no answer follows
    workspace = fresh_workspace(tmp_path)
    done = batchgen(workspace, "preview", str(job), "-n", "2", check=True)
    assert ("Valid: 0/20 (0 %) from 2 request(s); at this yield the stage's 55 requests give about 0 valid"
            in done.stdout)
    assert "Invalid reasons: {\"Response doesn't follow format\": 20}" in done.stdout
    assert rows(workspace, "SELECT sum(valid) AS v, sum(examples) AS n FROM previews") == [{"v": 0, "n": 20}]


def test_an_evolved_stage_is_previewed_from_the_seeds_before_its_source_ran(tmp_path):
    workspace = fresh_workspace(tmp_path)
    done = batchgen(workspace, "preview", str(EVOL), "--stage", "moderate", "-n", "2", "--json", check=True)
    assert "the seeds stand in for the examples of stage 'simple', which has none yet" in done.stderr
    report = json.loads(done.stdout)
    assert report["stage"] == "moderate" and report["sources"] == "seeds" and len(report["requests"]) == 2


def test_a_previewed_job_may_change_and_run_starts_it_as_it_is_then(tmp_path):
    job = copy_job(tmp_path)
    workspace = fresh_workspace(tmp_path)
    batchgen(workspace, "preview", str(job), "-n", "1", check=True)
    template = job / "prompt.j2"
    template.write_text(template.read_text(encoding="utf-8") + "Keep every title short.\n", encoding="utf-8")
    batchgen(workspace, "preview", str(job), "-n", "1", check=True)  # a fixed prompt is no conflict
    spec = load_spec(job)
    assert rows(workspace, "SELECT spec_hash, status FROM jobs") == [{"spec_hash": spec.spec_hash,
                                                                       "status": "previewed"}]
    done = batchgen(workspace, "run", str(job), "--quiet", check=True)
    assert "Job task_api: done" in done.stdout
    assert "Preview: " in done.stdout and "in 2 preview(s)" in done.stdout
    template.write_text(template.read_text(encoding="utf-8") + "Be brief.\n", encoding="utf-8")
    changed = batchgen(workspace, "preview", str(job), "-n", "1")  # a started job keeps its files
    assert changed.returncode == 1 and len(error_lines(changed.stderr)) == 1
    assert "was started from a different job.toml" in changed.stderr


def test_a_preview_of_a_finished_job_changes_none_of_its_state(tmp_path):
    workspace = fresh_workspace(tmp_path)
    batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    state = "SELECT (SELECT group_concat(status) FROM jobs) AS job, (SELECT count(*) FROM requests) AS requests, " \
            "(SELECT count(*) FROM batches) AS batches, (SELECT sum(cost_usd) FROM results) AS spent, " \
            "(SELECT dataset_sha256 FROM jobs) AS dataset"
    before = rows(workspace, state)
    batchgen(workspace, "preview", "task_api", "-n", "2", check=True)
    assert rows(workspace, state) == before
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.committed_usd("task_api") == ledger.spent_usd("task_api") + ledger.preview_spent_usd("task_api")
    assert batchgen(workspace, "ledger", "check").returncode == 0


def test_ledger_check_prices_every_preview_request_again(tmp_path):
    workspace = fresh_workspace(tmp_path)
    batchgen(workspace, "preview", str(TASK_API), "-n", "1", check=True)
    assert "1 previews" in batchgen(workspace, "ledger", "check", check=True).stdout
    with Ledger.open(workspace / "ledger.db") as ledger:
        ledger.db.execute("UPDATE previews SET cost_usd = '0.1'")
    check = batchgen(workspace, "ledger", "check")
    assert check.returncode == 1 and "preview_cost: preview request 1 of task_api cost $0.1" in check.stdout


# -- the budget ----------------------------------------------------------------------------------------------

def test_a_preview_that_may_not_fit_the_budget_is_refused_before_anything_is_sent(tmp_path):
    job = copy_job(tmp_path, **{"budget_usd = 0.15": "budget_usd = 0.0017"})
    workspace = fresh_workspace(tmp_path)
    refused = batchgen(workspace, "preview", str(job))
    assert refused.returncode == 1 and error_lines(refused.stderr) == [refused.stderr.strip()]
    assert refused.stderr.startswith("Error: Budget $0.0017 of job 'task_api' has $0.0017 left ($0.00 committed), and "
                                     "this preview of 5 request(s) may cost up to $")
    assert not (workspace / "ledger.db").exists() or rows(workspace, "SELECT count(*) AS n FROM previews") == [
        {"n": 0}]
    batchgen(workspace, "preview", str(job), "-n", "1", check=True)  # one request fits, at its worst case
    with Ledger.open(workspace / "ledger.db") as ledger:
        spent = ledger.preview_spent_usd("task_api")
        assert spent > 0 and ledger.committed_usd("task_api") == spent  # what a run's budget guard counts
    again = batchgen(workspace, "preview", str(job), "-n", "1")  # what the first spent leaves too little
    assert again.returncode == 1 and f"({format_usd(spent)} committed)" in again.stderr


# -- errors --------------------------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("case", ["no key", "unreachable", "4xx"])
def test_errors_are_one_line_and_record_nothing(tmp_path, case):
    config = '{"line_seconds": 0, "models": ["gpt-4o"]}' if case == "4xx" else '{"line_seconds": 0}'
    workspace = fresh_workspace(tmp_path, config)
    args = ["preview", str(TASK_API)] + ([] if case == "4xx" else ["--backend", "openai"])
    env = {"no key": {"OPENAI_API_KEY": ""},
           "unreachable": {"OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1"}, "4xx": {}}[case]
    done = batchgen(workspace, *args, **env)
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert len(error_lines(done.stderr)) == 1 and done.stderr.rstrip().splitlines()[-1].startswith("Error: ")
    expected = {"no key": "OPENAI_API_KEY is not set", "unreachable": "cannot reach http://127.0.0.1:",
                "4xx": "5 of 5 request(s) failed, the first with: POST /v1/chat/completions failed: HTTP 404: The "
                       "model `gpt-4o-mini` does not exist"}[case]
    assert expected in done.stderr
    if (workspace / "ledger.db").exists():
        assert rows(workspace, "SELECT count(*) AS n FROM jobs") == [{"n": 0}]


# -- a paid backend: a fake OpenAI server on 127.0.0.1 --------------------------------------------------------

ANSWER = {"examples": [{"conversations": [
    {"from": "human", "value": "Add a task to water the plants"},
    {"from": "gpt", "value": "Created task: 'Water plants' | Priority: low | Due: not set \x1b[2J\u202e"}]}]}


class FakeOpenAI(BaseHTTPRequestHandler):
    """/v1/chat/completions: one example for each request, a 400 for the ones about listing tasks."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        if "- Operation: list" in prompt:
            self._send(400, {"error": {"message": "Invalid 'messages': refused by this server.",
                                       "type": "invalid_request_error", "param": "messages", "code": None}})
            return
        self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": json.dumps(ANSWER)}}],
                         "usage": {"prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300}})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature http.server gives
        pass


@pytest.fixture
def fake_openai() -> Iterator[str]:
    with loopback_server(FakeOpenAI) as base_url:
        yield base_url


@pytest.fixture
def paid(tmp_path) -> str:
    """A price file naming gpt-4o-mini at OpenAI's rates: the fake on 127.0.0.1 is priced as the paid API."""
    rates = {"input": PRICE.standard.input, "cached_input": PRICE.standard.cached_input,
             "output": PRICE.standard.output, "batch_input": PRICE.batch.input,
             "batch_cached_input": PRICE.batch.cached_input, "batch_output": PRICE.batch.output}
    path = tmp_path / "paid-prices.toml"
    path.write_text('[models."gpt-4o-mini"]\n' + "".join(f'{k} = "{v}"\n' for k, v in rates.items()),
                    encoding="utf-8")
    return str(path)


def test_a_refused_request_is_one_line_after_the_answered_ones_are_recorded(tmp_path, fake_openai, paid):
    workspace = fresh_workspace(tmp_path)
    done = batchgen(workspace, "preview", str(TASK_API), "--backend", "openai", OPENAI_BASE_URL=fake_openai,
                    BATCHGEN_PRICES=paid)
    assert done.returncode == 1 and done.stdout == ""
    assert f"to backend openai at {fake_openai}, at standard price" in done.stderr.splitlines()[0]
    one = PRICE.cost(1000, 0, 300, batch=False)
    assert error_lines(done.stderr) == [
        "Error: Preview of job 'task_api': 1 of 5 request(s) failed, the first with: POST /v1/chat/completions "
        "failed: HTTP 400: Invalid 'messages': refused by this server; the 4 answered are recorded as preview 1 of "
        f"the job ({format_usd(4 * one)} at standard price)"]
    recorded = rows(workspace, "SELECT backend, cost_usd, valid FROM previews ORDER BY id")
    assert [r["valid"] for r in recorded] == [1, 0, 0, 0]  # the same example each time: duplicates of the first
    assert {(r["backend"], r["cost_usd"]) for r in recorded} == {(f"openai:{fake_openai}", str(one))}


def test_model_output_is_printed_escaped(tmp_path, fake_openai, paid):
    workspace = fresh_workspace(tmp_path)
    done = batchgen(workspace, "preview", str(TASK_API), "-n", "3", "--backend", "openai",
                    OPENAI_BASE_URL=fake_openai, BATCHGEN_PRICES=paid,
                    check=True)  # cells create, delete, update: none refused
    assert "\x1b" not in done.stdout and "\u202e" not in done.stdout
    assert "Due: not set \\x1b[2J\\u202e" in done.stdout
    assert "bills nothing" not in done.stdout + done.stderr
    assert f"Previews of task_api have spent {format_usd(3 * PRICE.cost(1000, 0, 300, batch=False))}" in done.stdout


# -- the seam shared with collect ----------------------------------------------------------------------------

def test_a_preview_answer_is_judged_as_an_output_line_is():
    spec = load_spec(TASK_API)
    rules = rules_for(spec)
    response = {"status_code": 200, "request_id": "req_1", "body": {
        "choices": [{"finish_reason": "stop", "message": {"content": json.dumps(ANSWER)}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5}}}
    line = json.dumps({"custom_id": "c1", "response": response, "error": None}).encode()
    assert result_lines.judge_answer("c1", response, spec.format, rules) == result_lines.judge_line(
        line, 1, spec.format, rules)


def test_a_preview_on_a_local_server_is_free_unless_a_price_file_names_the_model(tmp_path, fake_openai):
    workspace = fresh_workspace(tmp_path)
    done = batchgen(workspace, "preview", str(TASK_API), "-n", "3", "--backend", "openai",
                    OPENAI_BASE_URL=fake_openai, check=True)
    assert f"to backend openai at {fake_openai}, free (local server), at standard price: $0.00 expected" in done.stderr
    assert "Previews of task_api have spent $0.00" in done.stdout
    recorded = rows(workspace, "SELECT cost_usd, priced_by, prompt_tokens FROM previews")
    assert {(r["cost_usd"], r["priced_by"]) for r in recorded} == {("0", LOCAL_SOURCE)}
    assert all(r["prompt_tokens"] == 1000 for r in recorded)  # the tokens are kept all the same
    check = batchgen(workspace, "ledger", "check")
    assert check.returncode == 0, check.stdout
