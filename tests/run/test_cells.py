"""Coverage and top-up by cell, in real `batchgen` processes on the embedded emulator: the simulator's answers follow
the cell their prompt names, a cell whose answers are forced invalid is topped up (and no other), and a cell that
stays below its share is named with its reason.

The shipped job tops up the cells that near-duplicate detection and its date check leave below their share; the
tests of the forced cell run a copy without either (`one_batch_job`), in which every other cell reaches its share in
the plan's 55 requests, so that the forced cell is the only one short."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from workspaces import FAST, TASK_API, batchgen, fresh_workspace, one_batch_job

from batchgen.ledger import Ledger

CELL = {"include_errors": False, "operation": "update", "style": "casual"}
NEEDLE = "- Operation: update\n- Phrasing style: casual\n- Error cases: no"  # what the prompt of that cell says
FORCED = json.dumps({**json.loads(FAST), "malformed_when_prompt_contains": [NEEDLE]})
SHORT_LINE = ("Short: cell include_errors=false, operation=update, style=casual of stage main has 0 of its {share} "
              "examples")
OPERATIONS = {"Created task:": "create", "Updated task:": "update", "Completed task:": "complete",
              "Deleted task:": "delete", "tasks found": "list"}


def dataset(workspace: Path) -> list[dict]:
    path = workspace / "datasets" / "task_api.sharegpt.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def operation(answer: str) -> str | None:
    return next((op for marker, op in OPERATIONS.items() if marker in answer), None)


def show(workspace: Path) -> dict:
    return json.loads(batchgen(workspace, "show", "task_api", "--json", check=True).stdout)


def the_cell(summary: dict) -> dict:
    (row,) = [row for row in summary["coverage"] if row["cell"] == CELL]
    return row


def top_up_cells(workspace: Path) -> list[dict]:
    """The cell of every request past the plan's 55."""
    with Ledger.open(workspace / "ledger.db") as ledger:
        return [json.loads(cell) for (cell,) in ledger.db.execute(
            "SELECT cell_json FROM requests WHERE variant >= 55 ORDER BY variant")]


def test_the_simulated_answers_follow_the_cell_their_prompt_names(tmp_path):
    """The Task API job offline: an answer's operation is its cell's, the cells without error cases hold none, the
    cells with them about a third, and every cell reaches its share."""
    workspace = fresh_workspace(tmp_path)
    done = batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    assert "Cells: stage main: 40 of 40 at their share" in done.stdout
    lines = dataset(workspace)
    named = [(line["_provenance"]["cell"], operation(line["conversations"][1]["value"])) for line in lines]
    matching = sum(cell["operation"] == found for cell, found in named if found is not None)
    assert matching / sum(found is not None for _, found in named) >= 0.9
    errors = Counter(cell["include_errors"] for cell, found in named if found is None)
    assert errors[False] == 0
    with_errors = sum(line["_provenance"]["cell"]["include_errors"] for line in lines)
    assert 0.2 <= errors[True] / with_errors <= 0.45
    questions = [line["conversations"][0]["value"] for line in lines
                 if line["_provenance"]["cell"]["style"] == "question"]
    assert questions and all(q.endswith("?") for q in questions)
    summary = show(workspace)
    assert summary["cells"] == {"main": {"cells": 40, "at_share": 40}} and summary["short_cells"] == []
    assert len(summary["coverage"]) == 40 and all(row["missing"] == 0 for row in summary["coverage"])
    # the plan's 55 and the top-up's 12 for the cells that near-duplicates and the date check left below their share
    assert sum(row["requests"] for row in summary["coverage"]) == 67
    assert {row["share"] for row in summary["coverage"]} == {500 // 55, 1000 // 55}


def test_a_cell_whose_answers_were_forced_invalid_is_topped_up_and_no_other(tmp_path):
    """One cell's answers come back malformed (fault injection by prompt content); the stage still has more than
    its 500 examples, but that cell has none: the top-up asks for that cell alone, and once the fault is gone it
    fills the cell, and the dataset holds the cell's share."""
    workspace = fresh_workspace(tmp_path, FORCED)
    job = one_batch_job(tmp_path, retry_invalid="false")  # no retries: what fills the cell is the top-up
    batchgen(workspace, "submit", str(job), check=True)
    collected = batchgen(workspace, "collect", "task_api", "--json")
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)[0]["pending_shards"] == 1  # the top-up, compiled and waiting
    before = show(workspace)
    assert the_cell(before)["valid"] == 0 and the_cell(before)["short"] is None
    assert [row["cell"] for row in before["coverage"] if row["missing"]] == [CELL]
    assert before["quality"]["valid"] >= 500
    asked = top_up_cells(workspace)
    assert asked and all(cell == CELL for cell in asked)

    (workspace / "emulator" / "config.json").write_text(FAST, encoding="utf-8")
    done = batchgen(workspace, "run", str(job), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["short_cells"] == [] and summary["short"] == []
    assert summary["cells"] == {"main": {"cells": 40, "at_share": 40}}
    row = the_cell(summary)
    assert row["valid"] >= row["share"] > 0 and row["requests"] == 1 + len(asked)
    assert all(cell == CELL for cell in top_up_cells(workspace))  # no other cell was asked again
    lines = dataset(workspace)
    assert len(lines) == 500
    assert sum(line["_provenance"]["cell"] == CELL for line in lines) == row["share"]
    assert batchgen(workspace, "ledger", "check").returncode == 0


def test_a_cell_that_stays_below_its_share_is_named_with_why(tmp_path):
    """The fault stays: the one top-up round allowed brings nothing; the job ends short (exit status 3) and says
    which cell and why, in run's summary, in show and in --json. The other 39 cells are complete."""
    workspace = fresh_workspace(tmp_path, FORCED)
    job = one_batch_job(tmp_path, retry_invalid="false", max_top_ups="1")
    done = batchgen(workspace, "run", str(job), "--quiet", "--no-learn")  # the prior yield: one request a cell
    assert done.returncode == 3, done.stderr
    summary = show(workspace)
    (short,) = summary["short_cells"]
    assert short["cell"] == CELL and short["valid"] == 0 and short["reason"] == "max_top_ups"
    assert short["top_ups"] == 1 and short["requests"] == the_cell(summary)["requests"] == 2
    assert the_cell(summary)["short"] == "max_top_ups" and summary["short"] == []  # the stage has its 500
    line = SHORT_LINE.format(share=short["share"]) + " (after 1 top-up round(s), the most max_top_ups allows)"
    for text in (done.stdout, batchgen(workspace, "show", "task_api").stdout):
        assert line in text and "Cells: stage main: 39 of 40 at their share" in text
    assert all(cell == CELL for cell in top_up_cells(workspace))
    assert not any(line["_provenance"]["cell"] == CELL for line in dataset(workspace))
    again = batchgen(workspace, "collect", "task_api", "--json")
    assert again.returncode == 3 and json.loads(again.stdout)[0]["short_cells"] == 1


def test_a_cell_the_budget_cannot_top_up_says_so(tmp_path):
    """The budget covers the plan's expected cost and no more: the cell's top-up does not fit, and the job says it
    stayed short for the budget, having spent nothing past it."""
    workspace = fresh_workspace(tmp_path, FORCED)
    job = one_batch_job(tmp_path, retry_invalid="false", budget_usd='"0.0131"')
    done = batchgen(workspace, "run", str(job), "--quiet", "--budget-mode", "expected")
    assert done.returncode == 3, done.stderr
    (short,) = show(workspace)["short_cells"]
    assert short["cell"] == CELL and short["reason"] == "budget" and short["top_ups"] == 0
    assert SHORT_LINE.format(share=short["share"]) + " (the budget has no room for a top-up)" in done.stdout
    assert top_up_cells(workspace) == []
