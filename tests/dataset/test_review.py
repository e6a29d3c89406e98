"""`batchgen review`: a stratified sample for a domain expert, and the verdicts read back, through the CLI in real
processes on the embedded emulator."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from workspaces import EVOL, TASK_API, batchgen, fresh_workspace

from batchgen.dataset.review_file import ReviewFileError, defuse, read_review_file, undefuse, write_review_file
from batchgen.ledger import Ledger


def run_job(parent: Path, job: Path) -> Path:
    workspace = fresh_workspace(parent)
    batchgen(workspace, "run", str(job), "--quiet", check=True)
    return workspace


@pytest.fixture(scope="module")
def task_api(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the Task API job (500 examples, 40 cells of one stage)."""
    return run_job(tmp_path_factory.mktemp("task_api"), TASK_API)


@pytest.fixture(scope="module")
def evol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the Evol-Instruct job (four stages)."""
    return run_job(tmp_path_factory.mktemp("evol"), EVOL)


@pytest.fixture
def reviewed(task_api: Path, tmp_path: Path) -> Path:
    """A copy of the finished Task API workspace of its own, for a test that imports verdicts."""
    workspace = tmp_path / ".batchgen"
    shutil.copytree(task_api, workspace)
    return workspace


def strata(workspace: Path, job: str) -> set[tuple[str, str]]:
    """(stage, cell) of every valid example, read from the ledger: what a sample can be stratified by."""
    with Ledger.open(workspace / "ledger.db") as ledger:
        rows = ledger.rows("SELECT DISTINCT e.stage, r.cell_json FROM examples e JOIN requests r "
                           "ON r.custom_id = e.custom_id WHERE e.job = ? AND e.valid = 1", [job])
    return {(row["stage"], cell_text(json.loads(row["cell_json"]))) for row in rows}


def cell_text(cell: dict) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in cell.items())


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def sample(workspace: Path, path: Path, *args: str, job: str = "task_api") -> list[dict[str, str]]:
    batchgen(workspace, "review", job, "-o", str(path), *args, check=True)
    return read_rows(path)


def dataset_keys(workspace: Path, job: str = "task_api") -> list[str]:
    return keys_of(workspace / "datasets" / f"{job}.sharegpt.jsonl")


def keys_of(dataset: Path) -> list[str]:
    """The example key of every line of a dataset, from its provenance."""
    lines = dataset.read_text(encoding="utf-8").splitlines()
    return [f"{p['custom_id']}#{p['position']}" for p in (json.loads(line)["_provenance"] for line in lines)]


def ledger_state(workspace: Path) -> dict:
    with Ledger.open(workspace / "ledger.db") as ledger:
        return {"reviews": ledger.rows("SELECT * FROM reviews ORDER BY custom_id, position"),
                "events": ledger.rows("SELECT kind, detail_json FROM events ORDER BY id"),
                "dataset": ledger.dataset("task_api")}


# -- the sample ------------------------------------------------------------------------------------------------


def test_every_stage_and_cell_appears_once_n_allows(evol: Path, tmp_path: Path) -> None:
    found = strata(evol, "evol_task_api")
    assert {stage for stage, _ in found} == {"simple", "moderate", "complex", "edge_case"}
    rows = sample(evol, tmp_path / "all.csv", "-n", str(len(found)), job="evol_task_api")
    assert len(rows) == len(found)
    assert {(row["stage"], row["cell"]) for row in rows} == found  # one example from each stratum
    fewer = sample(evol, tmp_path / "fewer.csv", "-n", "8", job="evol_task_api")
    assert len({(row["stage"], row["cell"]) for row in fewer}) == 8  # no stratum twice before every one once
    assert {row["stage"] for row in fewer} == {"simple", "moderate", "complex", "edge_case"}  # the stages take turns


def test_a_sample_of_one_stage_covers_its_cells(task_api: Path, tmp_path: Path) -> None:
    cells = strata(task_api, "task_api")
    assert len(cells) == 40
    rows = sample(task_api, tmp_path / "r.csv", "-n", "45")
    assert {(row["stage"], row["cell"]) for row in rows} == cells
    assert len({row["example"] for row in rows}) == 45
    assert all(row["verdict"] == "" and row["note"] == "" for row in rows)
    first = rows[0]["conversation"]
    assert first.startswith("user: ") and "\n\nassistant: " in first


def test_the_sample_is_the_same_for_the_same_seed_and_grows_with_n(task_api: Path, tmp_path: Path) -> None:
    batchgen(task_api, "review", "task_api", "-o", str(tmp_path / "a.csv"), check=True)
    batchgen(task_api, "review", "task_api", "-n", "25", "-o", str(tmp_path / "b.csv"), check=True)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    small = {row["example"] for row in read_rows(tmp_path / "a.csv")}
    larger = {row["example"] for row in sample(task_api, tmp_path / "c.csv", "-n", "60")}
    assert len(small) == 25 and small < larger
    other = {row["example"] for row in sample(task_api, tmp_path / "d.csv", "--seed", "7")}
    assert len(other) == 25 and other != small


def test_an_existing_review_file_is_kept_unless_forced(task_api: Path, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("my verdicts\n", encoding="utf-8")
    done = batchgen(task_api, "review", "task_api", "-o", str(path))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith("Error: ")
    assert str(path) in done.stderr and path.read_text(encoding="utf-8") == "my verdicts\n"
    batchgen(task_api, "review", "task_api", "-o", str(path), "--force", check=True)
    assert len(read_rows(path)) == 25


def test_the_default_file_and_json(task_api: Path) -> None:
    done = batchgen(task_api, "review", "task_api", "-n", "3", "--json", "--force", check=True)
    written = json.loads(done.stdout)
    assert written["path"] == str(task_api / "reviews" / "task_api.review.csv")
    assert written["examples"] == 3 and written["stages"] == {"main": {"examples": 3, "cells": 3, "cells_total": 40}}
    assert len(read_rows(Path(written["path"]))) == 3


# -- the verdicts ----------------------------------------------------------------------------------------------


def fill(rows: list[dict[str, str]], rejected: set[str]) -> list[dict[str, str]]:
    for row in rows:
        row["verdict"] = "reject" if row["example"] in rejected else "accept"
        row["note"] = "wrong due date" if row["example"] in rejected else ""
    return rows


def test_importing_twice_changes_nothing(reviewed: Path, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    rows = sample(reviewed, path)
    write_rows(path, fill(rows, {rows[0]["example"], rows[1]["example"]}))
    first = batchgen(reviewed, "review", "task_api", "--import", str(path), "--json", check=True)
    assert json.loads(first.stdout)["new"] == 25
    state, data = ledger_state(reviewed), (reviewed / "datasets" / "task_api.sharegpt.jsonl").read_bytes()
    assert len(state["reviews"]) == 25
    again = batchgen(reviewed, "review", "task_api", "--import", str(path), "--json", check=True)
    report = json.loads(again.stdout)
    assert (report["new"], report["changed"], report["unchanged"]) == (0, 0, 25)
    assert report["review"]["accepted"] == 23 and report["review"]["rejected"] == 2
    assert ledger_state(reviewed) == state
    assert (reviewed / "datasets" / "task_api.sharegpt.jsonl").read_bytes() == data
    # The verdicts come back in a review file written again, so that it can be imported again as it is.
    rewritten = sample(reviewed, tmp_path / "again.csv")
    assert [(r["example"], r["verdict"], r["note"]) for r in rewritten] == [
        (r["example"], r["verdict"], r["note"]) for r in rows]


def test_a_rejected_example_leaves_the_export(reviewed: Path, tmp_path: Path) -> None:
    before = dataset_keys(reviewed)
    path = tmp_path / "r.csv"
    rows = sample(reviewed, path)
    shipped = [row["example"] for row in rows if row["example"] in before]
    rejected = set(shipped[:3])
    assert len(rejected) == 3
    write_rows(path, fill(rows, rejected))
    done = batchgen(reviewed, "review", "task_api", "--import", str(path), check=True)
    assert "Review: 22/25 accepted (88.0%), 3 rejected" in done.stdout
    after = dataset_keys(reviewed)
    assert not rejected & set(after)
    assert len(after) == 500  # the stage had valid examples beyond its target: the next ones took their places
    kept = [key for key in before if key not in rejected]
    # Every other example stays, in its order; three others (the next of their cells, or of the stage) come in.
    assert [key for key in after if key in set(kept)] == kept
    assert len(set(after) - set(before)) == 3
    exported = tmp_path / "out.jsonl"
    batchgen(reviewed, "export", "task_api", "-o", str(exported), check=True)
    assert not rejected & set(keys_of(exported))
    shown = json.loads(batchgen(reviewed, "show", "task_api", "--json", check=True).stdout)
    assert shown["review"] == {"reviewed": 25, "accepted": 22, "rejected": 3, "pass_rate": 0.88,
                               "stages": {"main": {"reviewed": 25, "accepted": 22, "rejected": 3, "pass_rate": 0.88}}}
    assert shown["dataset"]["examples"] == 500
    # A changed mind: accepting them again brings them back.
    write_rows(path, fill(rows, set()))
    report = json.loads(batchgen(reviewed, "review", "task_api", "--import", str(path), "--json", check=True).stdout)
    assert (report["new"], report["changed"], report["unchanged"]) == (0, 3, 22)
    assert dataset_keys(reviewed) == before


def test_rows_left_empty_are_not_reviewed_yet(reviewed: Path, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    rows = fill(sample(reviewed, path), set())
    for row in rows[10:]:
        row["verdict"] = ""
    rows[0]["verdict"] = " Reject "  # as a spreadsheet user may type it
    write_rows(path, rows)
    report = json.loads(batchgen(reviewed, "review", "task_api", "--import", str(path), "--json", check=True).stdout)
    assert (report["accept"], report["reject"], report["blank"]) == (9, 1, 15)
    assert [row["verdict"] for row in ledger_state(reviewed)["reviews"]].count("reject") == 1


def bad_files(rows: list[dict[str, str]]) -> list[tuple[str, list[dict[str, str]], int, str]]:
    """(name, rows, the line named, what the message says) of review files that must be refused whole; the bad
    row comes after good ones, so that importing them would show."""
    unknown = [dict(row) for row in rows]
    unknown[3]["example"] = "task_api-00000000-main-9999-a1#0"
    verdict = [dict(row) for row in rows]
    verdict[3]["verdict"] = "maybe"
    twice = [dict(row) for row in rows]
    twice[3]["example"] = twice[0]["example"]
    key = [dict(row) for row in rows]
    key[3]["example"] = "not a key"
    return [("unknown example", unknown, 3, "no example task_api-00000000-main-9999-a1#0 in job task_api"),
            ("bad verdict", verdict, 3, "verdict 'maybe' is neither accept nor reject"),
            ("twice", twice, 3, "is already on line"),
            ("bad key", key, 3, "names no example")]


@pytest.mark.parametrize("case", range(4), ids=["unknown example", "bad verdict", "twice", "bad key"])
def test_a_bad_file_is_one_error_line_naming_file_and_line(reviewed: Path, tmp_path: Path, case: int) -> None:
    path = tmp_path / "r.csv"
    rows = fill(sample(reviewed, path), set())
    _, bad, row, message = bad_files(rows)[case]
    write_rows(path, bad)
    line = 2 + sum(1 + read_cell_lines(r) for r in bad[:row])  # the line the row starts on (the header is line 1)
    before = ledger_state(reviewed)
    done = batchgen(reviewed, "review", "task_api", "--import", str(path))
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith(f"Error: {path} line {line}: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert ledger_state(reviewed) == before and before["reviews"] == []


def read_cell_lines(row: dict[str, str]) -> int:
    """How many line breaks a row's fields hold (a conversation spans several lines of the file)."""
    return sum(value.count("\n") for value in row.values())


def test_other_bad_files(reviewed: Path, tmp_path: Path) -> None:
    cases = {"no-header.csv": (b"", "line 1: no header line"),
             "columns.csv": (b"id,decision\nx,accept\n", "line 1: the header names no 'example' and 'verdict'"),
             "latin1.csv": ("example,verdict,note\nx,accept,caf\u00e9\n".encode("latin-1"), "line 2: not UTF-8"),
             "wide.csv": (b"example,verdict,note\nx,accept,too,many\n", "line 2: 4 fields, more than the header's 3")}
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        done = batchgen(reviewed, "review", "task_api", "--import", str(path))
        assert done.returncode == 1 and done.stderr.startswith(f"Error: {path} {message}"), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    missing = batchgen(reviewed, "review", "task_api", "--import", str(tmp_path / "none.csv"))
    assert missing.returncode == 1 and missing.stderr.startswith(f"Error: No review file {tmp_path / 'none.csv'}")
    unknown_job = batchgen(reviewed, "review", "nope")
    assert unknown_job.returncode == 1 and unknown_job.stderr.startswith("Error: No job 'nope'")
    assert ledger_state(reviewed)["reviews"] == []


# -- the file format -------------------------------------------------------------------------------------------


def test_a_field_a_spreadsheet_would_run_is_written_as_text_and_read_back_as_typed(tmp_path: Path) -> None:
    for text in ("=HYPERLINK(\"http://x\")", "+1", "-1", "@SUM(A1)", "\tx", "plain", "'quoted"):
        assert undefuse(defuse(text)) == text
        assert not defuse(text).startswith(("=", "+", "-", "@", "\t"))
    path = tmp_path / "r.csv"
    write_review_file(path, [["job-1#0", "reject", "=1+1", "main", "", "user: =cmd|' /C calc'!A0"]])
    raw = path.read_text(encoding="utf-8-sig")
    assert "'=1+1" in raw and "\n=" not in raw and ",=" not in raw
    assert read_review_file(path)[0].note == "=1+1"


def test_a_file_saved_by_a_spreadsheet_with_semicolons_reads(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("Example;Verdict;Note;stage\r\njob-1#0;accept;fine; main\r\njob-1#1;;;main\r\n",
                    encoding="utf-8")
    found = read_review_file(path)
    assert [(v.line, v.example, v.verdict, v.note) for v in found] == [(2, "job-1#0", "accept", "fine"),
                                                                      (3, "job-1#1", None, "")]
    path.write_text('example,verdict,note\nx,accept,"unclosed\n', encoding="utf-8")
    with pytest.raises(ReviewFileError, match="line 2: not CSV"):
        read_review_file(path)
