"""`batchgen compare`: jobs side by side from the ledger, checked against figures the test reads from the ledger
itself. Two runs of the Task API job on the embedded emulator: as shipped (gpt-4o-mini, temperatures 0.7/0.9/1.0)
and a copy on gpt-4o at temperature 0.5, one of them reviewed."""

from __future__ import annotations

import csv
import json
import re
import shutil
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest
from workspaces import TASK_API, batchgen, fresh_workspace

from batchgen.ledger import Ledger


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("compare")
    workspace = fresh_workspace(parent)
    copy = parent / "jobs" / "task_api_4o"
    shutil.copytree(TASK_API, copy)
    toml = copy / "job.toml"
    text = toml.read_text(encoding="utf-8")
    for old, new in (('name = "task_api"', 'name = "task_api_4o"'), ('model = "gpt-4o-mini"', 'model = "gpt-4o"'),
                     ("budget_usd = 0.15", "budget_usd = 1.0"), ("temperature = [0.7, 0.9, 1.0]", "temperature = 0.5")):
        assert old in text
        text = text.replace(old, new)
    toml.write_text(text, encoding="utf-8")
    batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    batchgen(workspace, "run", str(copy), "--quiet", check=True)
    review = parent / "review.csv"
    batchgen(workspace, "review", "task_api_4o", "-n", "10", "-o", str(review), check=True)
    with open(review, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for i, row in enumerate(rows):
        row["verdict"] = "reject" if i < 3 else "accept"
    with open(review, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    batchgen(workspace, "review", "task_api_4o", "--import", str(review), check=True)
    return workspace


def expected(workspace: Path, job: str) -> dict:
    """The figures of a job as the test reads them from the ledger."""
    with Ledger.open(workspace / "ledger.db") as ledger:
        requests = ledger.scalar("SELECT count(*) FROM results WHERE job = ?", [job])
        found = ledger.scalar("SELECT count(*) FROM examples WHERE job = ? AND position >= 0", [job])
        valid = ledger.scalar("SELECT count(*) FROM examples WHERE job = ? AND valid = 1", [job])
        duplicates = ledger.scalar("SELECT count(*) FROM examples WHERE job = ? AND category = 'duplicate'", [job])
        near = ledger.scalar("SELECT count(*) FROM examples WHERE job = ? AND category IN ('near_duplicate', "
                             "'unchanged_evolution')", [job])
        cost = sum((Decimal(c) for (c,) in ledger.db.execute("SELECT cost_usd FROM results WHERE job = ?", [job])),
                   Decimal(0))
        accepted = ledger.scalar("SELECT count(*) FROM reviews WHERE job = ? AND verdict = 'accept'", [job])
        reviewed = ledger.scalar("SELECT count(*) FROM reviews WHERE job = ?", [job])
    return {"requests": requests, "requested": requests * 10, "found": found, "valid": valid,
            "yield": round(valid / (requests * 10), 4), "duplicates": duplicates,
            "duplicate_rate": round(duplicates / found, 4), "near_duplicate_rate": round(near / found, 4),
            "review_pass_rate": round(accepted / reviewed, 4) if reviewed else None, "reviewed": reviewed,
            "accepted": accepted, "cost_usd": str(cost),
            "cost_per_valid_usd": str((cost / valid).quantize(Decimal("1e-9"), rounding=ROUND_HALF_EVEN))}


def test_compare_shows_each_jobs_figures_from_the_ledger(two_jobs: Path) -> None:
    done = batchgen(two_jobs, "compare", "task_api", "task_api_4o", "--json", check=True)
    mini, big = json.loads(done.stdout)
    assert (mini["job"], mini["model"], big["job"], big["model"]) == ("task_api", "gpt-4o-mini", "task_api_4o",
                                                                      "gpt-4o")
    assert [s["temperatures"] for s in mini["stages"]] == [[0.7, 0.9, 1.0]]
    assert [s["temperatures"] for s in big["stages"]] == [[0.5]]
    for job in (mini, big):
        assert job["status"] == "done"
        assert [(s["name"], s["examples_per_request"], s["seeds_per_request"]) for s in job["stages"]] == [
            ("main", 10, 5)]
        figures = expected(two_jobs, job["job"])
        assert {key: job[key] for key in figures} == figures
        assert {key: job["stages"][0][key] for key in figures} == figures  # one stage: the same figures
    assert (big["reviewed"], big["accepted"], big["review_pass_rate"]) == (10, 7, 0.7)
    assert mini["review_pass_rate"] is None and mini["reviewed"] == 0
    # gpt-4o costs more than gpt-4o-mini for the same requests: the lesson's trade-off, in real figures
    assert Decimal(big["cost_per_valid_usd"]) > 10 * Decimal(mini["cost_per_valid_usd"])


def test_compare_as_a_table_puts_the_jobs_side_by_side(two_jobs: Path) -> None:
    done = batchgen(two_jobs, "compare", "task_api", "task_api_4o", check=True)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["task_api", "task_api_4o"]
    spans = [match.span() for match in re.finditer(r"-+", lines[1])]  # the columns, as the rule under the header
    assert len(spans) == 3
    cells = [[line[start:end].strip() for start, end in spans] for line in lines[2:]]
    table = {row[0]: row[1:] for row in cells}
    mini, big = expected(two_jobs, "task_api"), expected(two_jobs, "task_api_4o")
    assert table["model"] == ["gpt-4o-mini", "gpt-4o"]
    assert table["temperatures"] == ["0.7, 0.9, 1.0", "0.5"]
    assert table["examples per request"] == ["10", "10"] and table["seeds per request"] == ["5", "5"]
    assert table["valid examples"] == [f"{mini['valid']:,}", f"{big['valid']:,}"]
    assert table["yield (valid / requested)"] == [f"{mini['yield'] * 100:.1f}%", f"{big['yield'] * 100:.1f}%"]
    assert table["review pass rate"] == ["-", "70.0% (7/10)"]
    assert table["near-duplicates"] == [f"{mini['near_duplicate_rate'] * 100:.1f}%",
                                        f"{big['near_duplicate_rate'] * 100:.1f}%"]
    assert mini["near_duplicate_rate"] > 0  # the shipped job loses examples to near-dedupe
    assert table["cost at batch price"] == [f"${Decimal(mini['cost_usd']).normalize():f}",
                                            f"${Decimal(big['cost_usd']).normalize():f}"]


def test_compare_of_an_unknown_job_is_one_error_line(two_jobs: Path) -> None:
    done = batchgen(two_jobs, "compare", "task_api", "nope")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("Error: No job 'nope'") and done.stderr.count("\n") == 1
