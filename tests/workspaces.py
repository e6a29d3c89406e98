"""Helpers for tests that run `python -m batchgen` in real processes on a fast embedded emulator."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import openai

from batchgen.emulator import start_embedded
from batchgen.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
TASK_API = ROOT / "jobs" / "task_api"
EVOL = ROOT / "jobs" / "evol_task_api"
EVOL_STAGES = ["simple", "moderate", "complex", "edge_case"]
FAST = '{"line_seconds": 0, "validation_seconds": 0, "finalizing_seconds": 0}'
_BATCH_ID = re.compile(rb'"batch_id":"batch_[0-9a-f]+"')


def fresh_workspace(parent: Path, config: str = FAST) -> Path:
    """An empty workspace whose embedded emulator answers at once."""
    workspace = parent / ".batchgen"
    (workspace / "emulator").mkdir(parents=True)
    (workspace / "emulator" / "config.json").write_text(config, encoding="utf-8")
    return workspace


def ran_evol(parent: Path) -> Path:
    """A workspace under `parent` where jobs/evol_task_api has run through its four stages (`EVOL_STAGES`)."""
    workspace = fresh_workspace(parent)
    batchgen(workspace, "run", str(EVOL), "--quiet", check=True)
    return workspace


def multi_shard_job(parent: Path) -> Path:
    """A copy of the Evol-Instruct job under `parent/jobs/` with at most 4 requests a shard: four stages of several
    shards each."""
    job = parent / "jobs" / "evol_task_api"
    shutil.copytree(EVOL, job)
    toml = job / "job.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("[prompt]", "[limits]\nmax_lines = 4\n\n[prompt]"),
                    encoding="utf-8")
    return job


def one_batch_job(parent: Path, **settings: str) -> Path:
    """A copy of jobs/task_api as `parent/task_api` without near-duplicate detection and without its date check
    (`[validate] near_dedupe = false`, no `checks`): every cell reaches its share in the plan's 55 requests, so the
    job ends in one batch and a cell left short is short for the test's reason alone. `settings`: top-level
    job.toml settings replaced or added (TOML literals)."""
    job = parent / "task_api"
    shutil.copytree(TASK_API, job)
    toml = job / "job.toml"
    head, _, rest = toml.read_text(encoding="utf-8").partition("\n[")
    for key, value in settings.items():
        head, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", head)
        head += "" if count else f"\n{key} = {value}"
    rest, checks = re.subn(r"(?m)^checks = .*\n", "", rest)
    rest, validate = re.subn(r"(?m)^\[validate\]$", "[validate]\nnear_dedupe = false", rest)
    assert checks == validate == 1, "jobs/task_api/job.toml no longer has one [validate] section with its checks"
    toml.write_text(head + "\n[" + rest, encoding="utf-8")
    return job


JUDGE_STAGES = """
[[stages]]
name = "main"

[[stages]]
name = "judge"
kind = "judge"
from = "main"
template = "judge.j2"
examples_per_request = 10
threshold = {threshold}
"""


def judged_job(parent: Path, threshold: int = 7, **settings: str) -> Path:
    """`one_batch_job` with the Task API judge (jobs/task_api/judge.j2) scoring its examples, 10 a request: stages
    "main" and "judge"."""
    job = one_batch_job(parent, **settings)
    toml = job / "job.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + JUDGE_STAGES.format(threshold=threshold), encoding="utf-8")
    return job


def env_for(workspace: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BATCHGEN_CRASH_AT"}
    return {**env, "BATCHGEN_WORKSPACE": str(workspace), **extra}


def batchgen(workspace: Path, *args: str, timeout: float = 300, check: bool = False,
             **extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m batchgen ARGS` in a new process on the workspace, as cron or a second terminal would run it
    (extra: more environment variables; check: assert that it exits 0)."""
    done = subprocess.run([sys.executable, "-m", "batchgen", *args], capture_output=True, text=True,
                          env=env_for(workspace, **extra), cwd=ROOT, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def spawn(workspace: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batchgen", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for(workspace, **extra), cwd=ROOT)


def dataset(workspace: Path, job: str = "task_api") -> bytes:
    """The job's dataset, byte for byte, except `_provenance.batch_id` (batch ids differ between emulators)."""
    data = (workspace / "datasets" / f"{job}.sharegpt.jsonl").read_bytes()
    return _BATCH_ID.sub(b'"batch_id":"-"', data)


def remote_state(workspace: Path) -> tuple[list[Any], list[Any]]:
    """Every batch and every batch input file on the workspace's emulator, read through the openai SDK."""
    with start_embedded(workspace / "emulator") as emulator:
        with openai.OpenAI(base_url=emulator.base_url, api_key="test-key") as client:
            return list(client.batches.list(limit=100)), list(client.files.list(purpose="batch"))


def assert_no_duplicate_batches(workspace: Path) -> list[Any]:
    batches, files = remote_state(workspace)
    keys = Counter((b.metadata or {}).get("batchgen_key") for b in batches)
    assert None not in keys, "a batch without an idempotency key"
    assert max(keys.values(), default=0) <= 1, f"a shard was submitted twice: {keys}"
    used = {b.input_file_id for b in batches}
    assert [f.filename for f in files if f.id not in used] == [], "an orphaned input file was left behind"
    return batches


def assert_one_final_outcome_each(workspace: Path) -> None:
    with Ledger.open(workspace / "ledger.db") as ledger:
        requests = ledger.scalar("SELECT count(*) FROM requests")
        per_request = ledger.rows("SELECT r.custom_id, count(s.custom_id) AS n FROM requests r LEFT JOIN results s "
                                  "ON s.custom_id = r.custom_id GROUP BY r.custom_id HAVING n != 1")
        per_variant = ledger.rows("SELECT r.job, r.stage, r.variant, count(*) AS n FROM requests r JOIN results s "
                                  "ON s.custom_id = r.custom_id WHERE r.status != 'retried' "
                                  "GROUP BY r.job, r.stage, r.variant HAVING n != 1")
    assert requests > 0
    assert per_request == [] and per_variant == []


def events(workspace: Path, kind: str) -> list[dict[str, Any]]:
    with Ledger.open(workspace / "ledger.db") as ledger:
        return ledger.rows("SELECT * FROM events WHERE kind = ?", [kind])
