"""Batches outlive their job directory: what was submitted is still polled, collected, priced (with the job's own
price file, which the ledger keeps) and exported; work that compiles says in one line that it needs the directory,
and the job waits, neither failed nor blocked, until the directory is back.

Real processes on the embedded emulator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from workspaces import batchgen, fresh_workspace, multi_shard_job, one_batch_job

from batchgen.ledger import Ledger

JOB = "evol_task_api"
# A price of the job's own, unlike any table's: results priced without it would show.
PRICES = '[models."gpt-4o-mini"]\ninput = "0.16"\noutput = "0.62"\nsource = "the job\'s own prices"\n'


def job_with_prices(parent: Path) -> Path:
    job = multi_shard_job(parent)
    (job / "prices.toml").write_text(PRICES, encoding="utf-8")
    return job


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(job directory, workspace) of the job run to the end with its directory in place."""
    parent = tmp_path_factory.mktemp("reference")
    workspace, job = fresh_workspace(parent), job_with_prices(parent)
    batchgen(workspace, "run", str(job), "--quiet", check=True)
    return job, workspace


def results(workspace: Path, stage: str) -> list[dict[str, Any]]:
    with Ledger.open(workspace / "ledger.db") as ledger:
        return ledger.rows("SELECT s.custom_id, s.cost_usd, s.priced_by, s.prompt_tokens, s.completion_tokens "
                           "FROM results s JOIN requests r ON r.custom_id = s.custom_id WHERE r.stage = ? "
                           "ORDER BY s.custom_id", [stage])


def dataset_lines(workspace: Path, stage: str | None = None) -> list[dict[str, Any]]:
    """The exported dataset's lines (of one stage), without the batch ids, which differ between emulators."""
    lines = [json.loads(line) for line in (workspace / "datasets" / f"{JOB}.sharegpt.jsonl").read_text().splitlines()]
    for line in lines:
        line["_provenance"].pop("batch_id")
    return [line for line in lines if stage in (None, line["_provenance"]["stage"])]


def only_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def test_submitted_batches_are_collected_and_exported_without_the_job_directory(
        tmp_path: Path, reference: tuple[Path, Path]) -> None:
    reference_job, reference_workspace = reference
    job = reference_job  # the same path, so that its price file names the same source in both ledgers
    workspace = fresh_workspace(tmp_path)
    batchgen(workspace, "submit", str(job), check=True)
    saved = tmp_path / "saved"
    shutil.move(job, saved)  # the job directory is gone
    try:
        gone = f"job directory {job}"
        status = batchgen(workspace, "status", check=True)
        assert f"Missing: job {JOB}: {gone} (submitted batches are still collected" in status.stdout
        assert f"Missing: {gone}" in batchgen(workspace, "show", JOB, check=True).stdout

        ran = batchgen(workspace, "run", str(job), "--quiet")
        assert ran.returncode == 1 and ran.stdout == ""
        assert only_error_line(ran.stderr) == (
            f"Error: Job '{JOB}': compiling stage 'moderate' needs its job directory {job}, which is missing; "
            f"restore it, or name its new place with 'batchgen run DIR' (batches already submitted are still "
            f"collected, and 'batchgen export {JOB}' works without it)")
        with Ledger.open(workspace / "ledger.db") as ledger:
            assert ledger.uncollected_batches(JOB) == 0  # every submitted batch, collected
            row = ledger.job(JOB)
        assert (row["status"], row["stage"], row["blocked_reason"]) == ("active", "moderate", None)
        assert results(workspace, "simple") == results(reference_workspace, "simple")  # priced with the job's file

        collected = batchgen(workspace, "collect", JOB)
        assert collected.returncode == 1 and f"{JOB}: collected 0 batch(es)" in collected.stdout
        assert "compiling stage 'moderate' needs its job directory" in only_error_line(collected.stderr)
        exported = batchgen(workspace, "export", JOB, check=True)
        assert exported.stdout.startswith("Wrote 125 examples to ")
        assert dataset_lines(workspace) == dataset_lines(reference_workspace, "simple")
        checked = batchgen(workspace, "ledger", "check", check=True)
        assert "is clean" in checked.stdout and "not re-priced" not in checked.stdout
    finally:
        shutil.move(saved, job)

    # The directory is back: the job goes on to the dataset of a run that never lost it.
    batchgen(workspace, "run", str(job), "--quiet", check=True)
    assert dataset_lines(workspace) == dataset_lines(reference_workspace)
    assert "Missing" not in batchgen(workspace, "show", JOB, check=True).stdout


def test_a_job_named_by_its_name_runs_from_the_ledger(tmp_path: Path) -> None:
    """`run NAME` finds a job whose directory is gone in the ledger; a job of one stage whose submitted batches bring
    every cell to its share needs nothing more of it. (A top-up is compiled, and needs the directory: the job here
    is the copy without near-duplicate detection and date check, which needs none.)"""
    workspace = fresh_workspace(tmp_path)
    job = one_batch_job(tmp_path / "jobs", name='"lone_task"').rename(tmp_path / "jobs" / "lone_task")
    toml = job / "job.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("[prompt]", "[limits]\nmax_lines = 20\n\n[prompt]"),
                    encoding="utf-8")
    assert "Submitted 3 batch(es)" in batchgen(workspace, "submit", str(job), check=True).stdout
    shutil.rmtree(job)
    ran = batchgen(workspace, "run", "lone_task", "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert "Job lone_task: done" in ran.stdout and f"Missing: job directory {job}" in ran.stdout
    assert (workspace / "datasets" / "lone_task.sharegpt.jsonl").read_text().count("\n") == 500


def test_an_older_ledger_that_kept_nothing_of_the_directory_waits_for_it(tmp_path: Path) -> None:
    """A ledger last written by an older batchgen has no copy of the seeds and prices: collecting needs the
    directory then, and says so; nothing is collected until it is back."""
    workspace, job = fresh_workspace(tmp_path), job_with_prices(tmp_path)
    batchgen(workspace, "submit", str(job), check=True)
    with Ledger.open(workspace / "ledger.db") as ledger, ledger.transaction():
        ledger.db.execute("UPDATE jobs SET job_files_json = NULL")
    saved = tmp_path / "saved"
    shutil.move(job, saved)
    ran = batchgen(workspace, "run", str(job), "--quiet")
    assert ran.returncode == 1
    assert "collecting its batches (this ledger was last written by an older batchgen" in only_error_line(ran.stderr)
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.uncollected_batches(JOB) == 4 and ledger.result_count(JOB) == 0
    shutil.move(saved, job)
    batchgen(workspace, "run", str(job), "--quiet", check=True)
