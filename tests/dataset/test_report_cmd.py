"""`batchgen report`: a job's quality per stage and cell, checked against what the test reads from the ledger itself
and from `show`, on shipped jobs run on the embedded emulator; distinct-n and lengths checked on texts counted by
hand."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from workspaces import EVOL, TASK_API, batchgen, fresh_workspace

from batchgen.cli import cli
from batchgen.dataset.quality_report import DistinctN, Lengths, role_texts, stage_texts, tokens
from batchgen.ledger import Ledger
from batchgen.money import format_usd

STAGES = ["simple", "moderate", "complex", "edge_case"]


def run_copy(parent: Path, job: Path) -> Path:
    """A finished run of a copy of the job under `parent/jobs/` (so that a test may move its directory away)."""
    copy = parent / "jobs" / job.name
    shutil.copytree(job, copy)
    workspace = fresh_workspace(parent)
    batchgen(workspace, "run", str(copy), "--quiet", check=True)
    return workspace


@pytest.fixture(scope="module")
def task_api(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_copy(tmp_path_factory.mktemp("task_api"), TASK_API)


@pytest.fixture(scope="module")
def evol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_copy(tmp_path_factory.mktemp("evol"), EVOL)


def report(workspace: Path, job: str) -> dict:
    return json.loads(batchgen(workspace, "report", job, "--json", check=True).stdout)


# -- distinct-n and lengths, by hand ---------------------------------------------------------------------------


def test_tokens_are_lower_cased_words() -> None:
    assert tokens("Don't PANIC: add 'Pay rent', due 2024-05-01!") == ["don't", "panic", "add", "pay", "rent", "due",
                                                                      "2024", "05", "01"]


def test_distinct_n_counted_by_hand() -> None:
    counts = DistinctN()
    counts.add(tokens("The cat sat"))
    counts.add(tokens("the cat ran"))
    counts.add(tokens("Cat"))  # one word: a unigram, no bigram
    # unigrams: the cat sat the cat ran cat = 7, distinct {the, cat, sat, ran} = 4
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) = 4, distinct 3; none crosses from one text to the next
    assert counts.to_dict() == {"distinct_1": round(4 / 7, 4), "distinct_2": 0.75}
    assert DistinctN().to_dict() == {"distinct_1": None, "distinct_2": None}


def test_bigrams_do_not_cross_turns_and_roles_are_apart() -> None:
    example = {"conversations": [{"from": "human", "value": "list my tasks"}, {"from": "gpt", "value": "tasks found"},
                                 {"from": "human", "value": "list my tasks"}, {"from": "gpt", "value": "none"}]}
    found = stage_texts([("main", example)], "sharegpt")["main"].to_dict()
    # human: 6 words, 3 distinct; bigrams (list my) (my tasks) twice: 4, 2 distinct
    assert found["distinct"]["human"] == {"distinct_1": 0.5, "distinct_2": 0.5}
    # assistant: tasks found / none: 3 words, all distinct; one bigram
    assert found["distinct"]["assistant"] == {"distinct_1": 1.0, "distinct_2": 1.0}
    lengths = found["lengths"]
    assert lengths["words_per_example"] == {"count": 1, "min": 9, "p25": 9, "median": 9, "p75": 9, "max": 9,
                                            "mean": 9}
    assert (lengths["words_per_human_turn"]["count"], lengths["words_per_assistant_turn"]["max"]) == (2, 2)


def test_the_turns_of_each_format_by_role() -> None:
    assert role_texts({"instruction": "Add a task", "input": "pay rent", "output": "Created task: pay rent"},
                      "alpaca") == [("user", "Add a task\n\npay rent"), ("assistant", "Created task: pay rent")]
    chatml = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                           {"role": "assistant", "content": "a"}]}
    assert role_texts(chatml, "chatml") == [("system", "s"), ("user", "u"), ("assistant", "a")]
    assert role_texts("not an example", "sharegpt") == []


@pytest.mark.parametrize("values", [[4, 1, 3, 2], [7], [5, 5, 9], list(range(1, 102)), [3, 1, 4, 1, 5, 9, 2, 6]])
def test_lengths_are_the_inclusive_quantiles(values: list[int]) -> None:
    lengths = Lengths()
    for value in values:
        lengths.add(value)
    found = lengths.to_dict()
    assert found is not None
    quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    assert [found["p25"], found["median"], found["p75"]] == [round(q, 1) for q in quartiles]
    assert (found["count"], found["min"], found["max"]) == (len(values), min(values), max(values))
    assert found["mean"] == round(statistics.mean(values), 1)
    assert Lengths().to_dict() is None


# -- the Task API job -----------------------------------------------------------------------------------------


def ledger_figures(workspace: Path, job: str) -> dict:
    with Ledger.open(workspace / "ledger.db") as ledger:
        answered = ledger.scalar("SELECT count(*) FROM results WHERE job = ?", [job])
        cost = sum((Decimal(c) for (c,) in ledger.db.execute("SELECT cost_usd FROM results WHERE job = ?", [job])),
                   Decimal(0))
        found = ledger.scalar("SELECT count(*) FROM examples WHERE job = ? AND position >= 0", [job])
        near = ledger.scalar("SELECT count(*) FROM examples WHERE job = ? AND category IN ('near_duplicate', "
                             "'unchanged_evolution')", [job])
        reasons = {row["category"]: row["n"] for row in ledger.rows(
            "SELECT category, count(*) AS n FROM examples WHERE job = ? AND valid = 0 GROUP BY category", [job])}
        cells = ledger.scalar("SELECT count(DISTINCT cell_json) FROM requests WHERE job = ?", [job])
    return {"answered": answered, "cost": cost, "found": found, "near": near, "reasons": reasons, "cells": cells}


def test_the_json_agrees_with_the_ledger_and_with_show(task_api: Path) -> None:
    found = report(task_api, "task_api")
    shown = json.loads(batchgen(task_api, "show", "task_api", "--json", check=True).stdout)
    ledger = ledger_figures(task_api, "task_api")
    assert (found["job"], found["status"], found["format"]) == ("task_api", "done", "sharegpt")
    [stage] = found["stages"]
    valid = shown["quality"]["valid"]
    assert stage["name"] == "main" and stage["valid"] == valid == found["totals"]["valid"]
    assert len(stage["cells"]) == ledger["cells"] == 40
    assert sum(cell["valid"] for cell in stage["cells"]) == valid
    assert sum(cell["requests"] for cell in stage["cells"]) == stage["requests"] == ledger["answered"]
    assert stage["requested"] == ledger["answered"] * 10 == sum(cell["requested"] for cell in stage["cells"])
    assert stage["yield"] == round(valid / stage["requested"], 4)
    assert all(cell["yield"] == round(cell["valid"] / cell["requested"], 4) for cell in stage["cells"])
    assert stage["reasons"] == ledger["reasons"] == found["totals"]["reasons"] == shown["quality"]["categories"]
    by_cell: dict[str, int] = {}
    for cell in stage["cells"]:
        for category, count in cell["reasons"].items():
            by_cell[category] = by_cell.get(category, 0) + count
    assert by_cell == stage["reasons"]
    assert ledger["near"] > 0 and stage["near_duplicate_rate"] == round(ledger["near"] / ledger["found"], 4)
    cost = Decimal(stage["cost_usd"])
    assert cost == ledger["cost"] == Decimal(shown["spent_usd"]) == Decimal(found["totals"]["cost_usd"])
    assert Decimal(stage["cost_per_valid_usd"]) == (cost / valid).quantize(Decimal("1e-9"), rounding=ROUND_HALF_EVEN)
    assert stage["lineage"] == {**shown["lineage"]["main"], "parent_rate": 1.0, "root_rate": 1.0}
    assert stage["review"] == {"reviewed": 0, "accepted": 0, "rejected": 0, "pass_rate": None}
    lengths = stage["lengths"]
    assert lengths["words_per_example"]["count"] == valid
    assert lengths["words_per_human_turn"]["count"] >= valid and lengths["words_per_assistant_turn"]["count"] >= valid
    for role in ("human", "assistant"):
        distinct = stage["distinct"][role]
        assert 0 < distinct["distinct_1"] < distinct["distinct_2"] <= 1


def test_the_distinct_words_are_those_of_the_valid_examples(task_api: Path) -> None:
    """distinct-1 of the human turns recomputed here from the examples in the ledger, in another way."""
    with Ledger.open(task_api / "ledger.db") as ledger:
        contents = [json.loads(c) for (c,) in ledger.db.execute(
            "SELECT content_json FROM examples WHERE job = 'task_api' AND valid = 1")]
    words = [word for content in contents for turn in content["conversations"] if turn["from"] == "human"
             for word in re.findall(r"\w+(?:'\w+)*", turn["value"].lower())]
    stage = report(task_api, "task_api")["stages"][0]
    assert stage["distinct"]["human"]["distinct_1"] == round(len(set(words)) / len(words), 4)


def test_the_table_says_the_same(task_api: Path) -> None:
    found = report(task_api, "task_api")
    stage, totals = found["stages"][0], found["totals"]
    lines = batchgen(task_api, "report", "task_api", check=True).stdout.splitlines()
    assert lines[0] == "Job task_api: done (gpt-4o-mini, sharegpt, 1 stage)"
    assert lines[2] == (f"Stage main: {stage['requests']} requests, {stage['requested']} examples asked for, "
                        f"{stage['valid']} valid ({stage['yield'] * 100:.1f}%)")
    assert lines[3].split() == ["operation", "style", "include_errors", "requests", "asked", "valid", "yield",
                                "rejected"]
    cells = lines[5:45]
    assert len(cells) == 40 and lines[45] == ""
    first = stage["cells"][0]
    assert cells[0].split()[:7] == [first["cell"]["operation"], first["cell"]["style"],
                                    json.dumps(first["cell"]["include_errors"]), str(first["requests"]),
                                    str(first["requested"]), str(first["valid"]), f"{first['yield'] * 100:.1f}%"]
    assert lines[46].split()[:2] == ["words", "min"]
    median = stage["lengths"]["words_per_example"]["median"]
    assert lines[48].split()[:4] == ["per", "example", str(stage["lengths"]["words_per_example"]["min"]),
                                     str(stage["lengths"]["words_per_example"]["p25"]).removesuffix(".0")]
    assert str(median).removesuffix(".0") == lines[48].split()[4]
    assert f"{stage['distinct']['human']['distinct_1']:.3f}" in lines[49]
    text = "\n".join(lines)
    reasons = stage["reasons"]
    assert f"Rejected: check {reasons['check']}, near_duplicate {reasons['near_duplicate']}" in text
    assert f"Lineage: {stage['valid']}/{stage['valid']} with a parent, {stage['valid']}/{stage['valid']} to a seed" \
        in text
    assert "Review: no verdicts yet" in text
    assert (f"Cost: {format_usd(Decimal(totals['cost_usd']))} at batch price, "
            f"{format_usd(Decimal(totals['cost_per_valid_usd']))} per valid example") == lines[-1]
    # Fits a wide terminal: the longest cell of rejections sets the width.
    assert max(len(line) for line in lines) <= 120


def test_the_review_pass_rate_appears_once_verdicts_are_imported(task_api: Path, tmp_path: Path) -> None:
    workspace = tmp_path / ".batchgen"
    shutil.copytree(task_api, workspace)
    path = tmp_path / "review.csv"
    batchgen(workspace, "review", "task_api", "-n", "20", "-o", str(path), check=True)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for i, row in enumerate(rows):
        row["verdict"] = "reject" if i < 5 else "accept"
    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    batchgen(workspace, "review", "task_api", "--import", str(path), check=True)
    found = report(workspace, "task_api")
    expected = {"reviewed": 20, "accepted": 15, "rejected": 5, "pass_rate": 0.75}
    assert found["stages"][0]["review"] == expected == found["totals"]["review"]
    text = batchgen(workspace, "report", "task_api", check=True).stdout
    assert text.count("Review: 15/20 accepted (75.0%), 5 rejected") == 2  # the stage, and the job


def test_the_report_needs_no_job_directory(task_api: Path) -> None:
    job_dir = task_api.parent / "jobs" / "task_api"
    before = batchgen(task_api, "report", "task_api", "--json", check=True).stdout
    moved = job_dir.with_name("gone")
    job_dir.rename(moved)
    try:
        assert batchgen(task_api, "report", "task_api", "--json", check=True).stdout == before
    finally:
        moved.rename(job_dir)


def test_an_unknown_job_is_one_error_line(task_api: Path) -> None:
    done = batchgen(task_api, "report", "nope")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("Error: No job 'nope'") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_report_help() -> None:
    result = CliRunner().invoke(cli, ["report", "--help"])
    assert result.exit_code == 0
    assert "Usage: cli report [OPTIONS] JOB" in result.output and "--json" in result.output


# -- the Evol-Instruct job ------------------------------------------------------------------------------------


def test_each_evol_stage_grows_and_knows_its_lineage(evol: Path) -> None:
    found = report(evol, "evol_task_api")
    stages = found["stages"]
    assert [stage["name"] for stage in stages] == STAGES
    medians = [stage["lengths"]["words_per_example"]["median"] for stage in stages]
    assert medians == sorted(medians) and medians[0] < medians[-1], medians  # each stage at least the one before
    human = [stage["lengths"]["words_per_human_turn"]["median"] for stage in stages]
    assert human == sorted(human), human  # what the evolution rewrites is the request
    for stage in stages:
        assert stage["valid"] > 0
        assert stage["lineage"]["valid"] == stage["lineage"]["with_parent"] == stage["lineage"]["with_root"] \
            == stage["valid"] == sum(cell["valid"] for cell in stage["cells"])
        assert stage["distinct"]["human"]["distinct_1"] is not None
    assert sum(stage["valid"] for stage in stages) == found["totals"]["valid"]
    assert sum(Decimal(stage["cost_usd"]) for stage in stages) == Decimal(found["totals"]["cost_usd"])
    later = [stage["reasons"].get("unchanged_evolution", 0) for stage in stages[1:]]
    assert all(count > 0 for count in later)  # what the near-duplicate rate of an evolved stage counts
    assert all(stage["near_duplicate_rate"] > 0 for stage in stages[1:])
    text = batchgen(evol, "report", "evol_task_api", check=True).stdout
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("Stage ")] == [
        f"Stage {name}" for name in STAGES]


def test_an_embeddings_job_has_counts_and_cost_but_no_words(tmp_path: Path) -> None:
    workspace = run_copy(tmp_path, TASK_API.with_name("task_api_embeddings"))
    found = report(workspace, "task_api_embeddings")
    [stage] = found["stages"]
    assert stage["valid"] > 0 and stage["yield"] is not None and Decimal(stage["cost_per_valid_usd"]) > 0
    assert "E" not in stage["cost_per_valid_usd"]  # fixed-point text, not 9.4E-8
    assert (stage["distinct"], stage["lengths"], stage["lineage"]) == (None, None, None)
    text = batchgen(workspace, "report", "task_api_embeddings", check=True).stdout
    assert "Distinct-n and lengths: do not apply to an embeddings job" in text
    assert "Lineage: does not apply to an embeddings job" in text
