"""What a script or cron reads: the exit status of run, collect and tick, and the --json of the verbs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from workspaces import TASK_API, batchgen, fresh_workspace


def test_the_verbs_speak_json_and_exit_0_when_all_is_well(tmp_path: Path) -> None:
    workspace = fresh_workspace(tmp_path)
    submitted = batchgen(workspace, "submit", str(TASK_API), "--json", check=True)
    assert json.loads(submitted.stdout) == {"job": "task_api", "submitted": 1, "waiting": None}
    ticks = []  # cron's ticks until the job is done: the plan's batch, then the top-up's
    while not (ticks and ticks[-1]["done"]):
        assert len(ticks) < 20, ticks
        (job,) = json.loads(batchgen(workspace, "tick", "--json", check=True).stdout)["jobs"]
        assert job["job"] == "task_api" and job["error"] is None and job["ended_short"] is False
        ticks.append(job)
    assert ticks[0]["collected_now"] == 1 and ticks[0]["pending_shards"] == 1  # the top-up, compiled
    assert sum(tick["submitted_now"] for tick in ticks) == 1 and sum(tick["collected_now"] for tick in ticks) == 2
    job = ticks[-1]
    assert job["batches"] == {"completed": 2} and job["requests"] == job["finished"] == 67
    assert job["dataset"].endswith("task_api.sharegpt.jsonl") and job["valid_examples"] >= 500
    out = tmp_path / "train.jsonl"
    exported = batchgen(workspace, "export", "task_api", "--format", "chatml", "-o", str(out), "--json", check=True)
    report = json.loads(exported.stdout)
    assert report["written"] == 500 == out.read_text().count("\n") and len(report["sha256"]) == 64
    assert json.loads(batchgen(workspace, "cancel", "task_api", "--json", check=True).stdout) == []
    assert batchgen(workspace, "collect", "task_api", check=True).stdout.startswith("task_api: collected 0")


def test_a_job_that_meets_an_error_in_a_tick_exits_1(tmp_path: Path) -> None:
    workspace, job = fresh_workspace(tmp_path), tmp_path / "jobs" / "task_api"
    shutil.copytree(TASK_API, job)
    batchgen(workspace, "submit", str(job), check=True)
    (job / "prompt.j2").write_text("changed", encoding="utf-8")  # the ledger's job no longer matches its files
    ticked = batchgen(workspace, "tick", "--json")
    assert ticked.returncode == 1, ticked.stderr
    assert "different job.toml, templates or seeds" in json.loads(ticked.stdout)["jobs"][0]["error"]
