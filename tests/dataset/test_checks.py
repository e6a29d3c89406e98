"""Rule hooks: a job's own Python checks run on every structurally valid example, in collect (also in the judging
worker), and their rejections are reasons like any other; a check that raises stops the collection with one line."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from workspaces import TASK_API, batchgen, fresh_workspace

from batchgen.cli import cli
from batchgen.dataset import result_lines
from batchgen.dataset.checks import CheckError, CheckRef, Example, run_checks
from batchgen.dataset.validate import Rules, judge_examples
from batchgen.ledger import Ledger

TODAY = dt.date(2025, 1, 15)  # a Wednesday, the reference date of jobs/task_api


def task_api_check():
    spec = importlib.util.spec_from_file_location("task_api_checks", TASK_API / "checks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.due_dates


def answer(text: str, today: dt.date | None = TODAY) -> Example:
    return Example((("user", "Add a task"), ("assistant", text)), {}, "r#0", {}, today)


@pytest.mark.parametrize(("text", "wrong"), [
    ("Created task: 'Team meeting' | Priority: high | Due: 2025-01-16 (tomorrow)", False),
    ("Created task: 'Team meeting' | Priority: high | Due: 2025-01-20 (tomorrow)", True),
    ("Created task: 'Budget' | Priority: medium | Due: 2025-01-17 (Friday)", False),
    ("Created task: 'Budget' | Priority: medium | Due: 2025-01-18 (Friday)", True),   # a Saturday
    ("Created task: 'Budget' | Priority: medium | Due: 2025-02-21 (Friday)", True),   # five weeks on
    ("Updated task: 'Dentist' | Due: changed to 2025-01-20 (next Monday)", False),
    ("Updated task: 'Dentist' | Due: changed to 2025-02-24 (next Monday)", True),
    ("Created task: 'Plan' | Priority: low | Due: 2025-13-26", True),
    ("Created task: 'Plan' | Priority: low | Due: 2025-02-30", True),
    ("Created task: 'Grant' | Priority: high | Due: 2025-03-03", False),
    ("3 tasks found: 'A' (high, due 2025-01-16) | 'B' (low, due 2025-01-17)", False),
    ("Error: February 30 is not a valid date. Please give a date such as 2025-02-28.", False),
])
def test_the_task_api_date_check(text: str, wrong: bool) -> None:
    reason = task_api_check()(answer(text))
    assert bool(reason) == wrong, reason


def test_a_relative_date_needs_the_reference_date_but_an_impossible_one_never_passes() -> None:
    check = task_api_check()
    assert check(answer("Created task: 'X' | Priority: low | Due: 2025-01-20 (tomorrow)", today=None)) is None
    impossible = answer("Created task: 'X' | Priority: low | Due: 2025-13-26", today=None)
    assert check(impossible) == "2025-13-26 is not a date"


def write_check(directory: Path, body: str) -> CheckRef:
    (directory / "checks.py").write_text(body, encoding="utf-8")
    return CheckRef.parse("checks.py:check", directory)


EXAMPLE = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Error: none"}]}


def test_judge_examples_runs_the_checks_on_valid_examples_only(tmp_path: Path) -> None:
    ref = write_check(tmp_path, "def check(example):\n"
                                "    return 'too short' if len(example.assistant_texts[0]) < 20 else None\n")
    rules = Rules.from_values(patterns=["Error:"], checks=[ref], cells={"r1": {"operation": "list"}})
    broken = {"conversations": [{"from": "human", "value": "hi"}]}
    judged = judge_examples([EXAMPLE, broken], "sharegpt", rules, "r1")
    assert judged[0][2:] == (False, "check", "Check check: too short")
    assert judged[1][2] is False and judged[1][3] == "turn_count"  # the structure failed first: not checked


def test_a_check_sees_turns_key_cell_and_reference_date(tmp_path: Path) -> None:
    ref = write_check(tmp_path, "def check(example):\n"
                                "    return f'{example.key} {example.cell} {example.reference_date} {example.turns}'\n")
    rules = Rules.from_values(checks=[ref], cells={"r1": {"operation": "list"}}, reference_date=TODAY)
    judged = judge_examples([EXAMPLE, EXAMPLE], "sharegpt", rules, "r1")
    assert judged[1][4] == ("Check check: r1#1 {'operation': 'list'} 2025-01-15 "
                            "(('user', 'hi'), ('assistant', 'Error: none'))")


@pytest.mark.parametrize(("body", "message"), [
    ("def check(example):\n    return 1 / 0\n",
     "Check checks.py:check raised ZeroDivisionError on example r1#0: division by zero"),
    ("def check(example):\n    return True\n",
     "Check checks.py:check returned bool True on example r1#0; a check returns a reason (a string) or None"),
    ("def other(example):\n    return None\n", "Check checks.py:check: checks.py defines no function 'check'"),
    ("def check(example)\n", "Check checks.py:check: importing checks.py failed: SyntaxError:"),
])
def test_a_broken_check_is_one_error_naming_the_check_and_the_example(tmp_path: Path, body: str,
                                                                       message: str) -> None:
    ref = write_check(tmp_path, body)
    with pytest.raises(CheckError) as raised:
        run_checks([ref], Example((("user", "hi"), ("assistant", "x")), {}, "r1#0"))
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(("setting", "message"), [
    ('checks = ["checks"]', "is not FILE.py:FUNCTION"),
    ('checks = ["missing.py:due_dates"]', "validate.checks = 'missing.py': file"),
    ('checks = ["../elsewhere.py:due_dates"]', "names a file outside the job directory"),
])
def test_a_bad_checks_setting_is_one_error_line(tmp_path: Path, setting: str, message: str) -> None:
    job = tmp_path / "task_api"
    shutil.copytree(TASK_API, job)
    shutil.copy(TASK_API / "checks.py", tmp_path / "elsewhere.py")
    toml = (job / "job.toml").read_text(encoding="utf-8")
    (job / "job.toml").write_text(toml.replace('checks = ["checks.py:due_dates"]', setting), encoding="utf-8")
    result = CliRunner().invoke(cli, ["plan", str(job)])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


# -- through the pipeline -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_api(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = fresh_workspace(tmp_path_factory.mktemp("checks"))
    batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    return workspace


def test_the_task_api_job_rejects_its_wrong_relative_dates(task_api: Path) -> None:
    with Ledger.open(task_api / "ledger.db") as ledger:
        rejected = ledger.rows("SELECT reason FROM examples WHERE category = 'check'")
    assert rejected and all(r["reason"].startswith("Check due_dates: ") for r in rejected)
    assert any("tomorrow is 2025-01-16" in r["reason"] for r in rejected)
    check = task_api_check()
    lines = (task_api / "datasets" / "task_api.sharegpt.jsonl").read_text(encoding="utf-8").splitlines()
    exported = [json.loads(line) for line in lines]
    assert len(exported) == 500
    for line in exported:
        turns = tuple(("user" if t["from"] == "human" else "assistant", t["value"]) for t in line["conversations"])
        assert check(Example(turns, line, "", {}, TODAY)) is None
    shown = json.loads(batchgen(task_api, "show", "task_api", "--json", check=True).stdout)
    assert shown["quality"]["reasons"]["Check due_dates"] == len(rejected)


@pytest.mark.parametrize("worker", [False, True], ids=["judged-here", "judged-by-worker"])
def test_a_check_that_raises_stops_collect_and_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               worker: bool) -> None:
    if worker:
        monkeypatch.setattr(result_lines, "PARALLEL_BYTES", 0)
    job = tmp_path / "task_api"
    shutil.copytree(TASK_API, job)
    good = (job / "checks.py").read_text(encoding="utf-8")
    (job / "checks.py").write_text(good + "\n\ndef due_dates(example):\n    raise ValueError('no calendar')\n",
                                   encoding="utf-8")
    workspace = tmp_path / ".batchgen"
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    assert CliRunner().invoke(cli, ["submit", str(job)]).exit_code == 0
    failed = None
    for _ in range(200):
        failed = CliRunner().invoke(cli, ["collect", "task_api"])
        if failed.exit_code != 0:
            break
    assert failed is not None and failed.exit_code == 1 and "Traceback" not in failed.output
    line = failed.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "Check checks.py:due_dates raised ValueError on example task_api-" in line
    assert line.endswith("no calendar")
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM results") == 0
        assert ledger.scalar("SELECT count(*) FROM examples") == 0
    (job / "checks.py").write_text(good, encoding="utf-8")  # the check mended: the same batch is collected
    collected = CliRunner().invoke(cli, ["collect", "task_api"])
    assert collected.exit_code == 0, collected.output
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM results") == 55
        assert ledger.scalar("SELECT count(*) FROM examples WHERE category = 'check'") > 0


def test_a_job_whose_directory_is_gone_is_still_checked_by_the_hooks_the_ledger_kept(tmp_path: Path) -> None:
    job = tmp_path / "jobs" / "task_api"
    shutil.copytree(TASK_API, job)
    workspace = fresh_workspace(tmp_path)
    batchgen(workspace, "submit", str(job), check=True)
    shutil.rmtree(job)
    for _ in range(100):  # collected without the directory; only the top-up that follows needs it, and says so
        collected = batchgen(workspace, "collect", "task_api")
        if collected.returncode != 0 or "collected 1 batch(es)" in collected.stdout:
            break
    assert "Traceback" not in collected.stderr
    assert collected.returncode == 0 or "topping up stage 'main'" in collected.stderr, collected.stderr
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM results") == 55
        assert ledger.scalar("SELECT count(*) FROM examples WHERE category = 'check'") > 0
