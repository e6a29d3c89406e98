"""Failures an overnight job meets, on the embedded emulator's fault injection: expiry, line errors, malformed
output, transient HTTP errors, the queued-token limit and the budget. Nothing is lost and nothing is paid twice."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from workspaces import batchgen, one_batch_job

from batchgen.emulator import EmulatorControl
from batchgen.ledger import Ledger
from batchgen.ledger.workspace import Workspace
from batchgen.run.session import Session
from batchgen.run.tick import advance, register_job
from batchgen.run.verbs import run_job

ROOT = Path(__file__).resolve().parents[2]


def job_copy(tmp_path: Path, job: str = "task_api", **settings: str) -> Path:
    """jobs/<job> with top-level job.toml settings replaced or added (values are TOML literals)."""
    target = tmp_path / job
    shutil.copytree(ROOT / "jobs" / job, target)
    toml = (target / "job.toml").read_text(encoding="utf-8")
    head, _, rest = toml.partition("\n[")
    for key, value in settings.items():
        if key == "limits":
            rest += f"\n[limits]\n{value}\n"
            continue
        head, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", head)
        if not count:
            head += f"\n{key} = {value}"
    (target / "job.toml").write_text(head + "\n[" + rest, encoding="utf-8")
    return target


def emulator_config(workspace: Path, **config: object) -> None:
    (workspace / "emulator").mkdir(parents=True, exist_ok=True)
    (workspace / "emulator" / "config.json").write_text(json.dumps(config), encoding="utf-8")


def one_outcome_per_request_and_costs_once(ledger: Ledger) -> None:
    assert ledger.scalar("SELECT count(*) FROM requests r LEFT JOIN results s USING (custom_id) "
                         "WHERE s.custom_id IS NULL") == 0
    per_result = sum((Decimal(r[0]) for r in ledger.db.execute("SELECT cost_usd FROM results")), Decimal(0))
    per_batch = sum((Decimal(r[0]) for r in ledger.db.execute("SELECT actual_cost_usd FROM batches")), Decimal(0))
    assert per_result == per_batch


def dataset(workspace: Path) -> list[dict]:
    path = workspace / "datasets" / "task_api.sharegpt.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_batch_that_expires_half_done_keeps_its_partial_output(tmp_path):
    """The plan's batch expires half done: what it answered is kept and only the rest is asked again. The job copy
    without near-duplicate detection and date check needs no top-up, so its batches are the plan's and the retry's."""
    workspace = tmp_path / ".batchgen"
    emulator_config(workspace, expire_after_fraction=0.5)
    space = Workspace(workspace).ensure()
    with Ledger.open(space.ledger_path) as ledger:
        session = Session(ledger, space)
        try:
            spec = register_job(session, one_batch_job(tmp_path))
            deadline = time.monotonic() + 60
            while not ledger.scalar("SELECT count(*) FROM batches WHERE collected = 1"):
                assert time.monotonic() < deadline
                advance(session, spec)
                time.sleep(0.1)
            first = ledger.one("SELECT * FROM batches")
            assert first["status"] == "expired"
            EmulatorControl(session.client("embedded").base_url).configure(expire_after_fraction=None)
            run_job(session, spec, sleep=lambda s: time.sleep(min(s, 0.1)))
            kept = ledger.scalar("SELECT count(*) FROM results WHERE batch_id = ? AND source = 'output'",
                                 [first["id"]])
            expired = ledger.scalar("SELECT count(*) FROM results WHERE batch_id = ? AND error_code = "
                                    "'batch_expired'", [first["id"]])
            assert kept > 0 and expired > 0 and kept + expired == 55
            assert ledger.scalar("SELECT count(*) FROM requests WHERE status = 'retried'") == expired
            assert ledger.scalar("SELECT count(*) FROM batches") == 2
            assert ledger.scalar("SELECT count(*) FROM requests WHERE status = 'succeeded'") == 55
            assert ledger.scalar("SELECT max(attempt) FROM requests") == 2
            one_outcome_per_request_and_costs_once(ledger)
        finally:
            session.close()
    assert len(dataset(workspace)) == 500


def test_line_errors_malformed_output_and_http_faults_still_reach_the_target(tmp_path):
    workspace = tmp_path / ".batchgen"
    emulator_config(workspace, http_error_rate=0.05, error_rate=0.1, malformed_rate=0.1, seed=3)
    done = batchgen(workspace, "run", str(ROOT / "jobs" / "task_api"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert len(dataset(workspace)) == 500
    summary = json.loads(batchgen(workspace, "show", "task_api", "--json").stdout)
    assert summary["failures"], summary            # line errors, by code
    assert summary["quality"]["categories"]        # malformed output, by reason
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM requests WHERE status = 'retried'") > 0
        one_outcome_per_request_and_costs_once(ledger)


def test_a_queued_token_cap_smaller_than_the_job_lets_shards_through_one_after_another(tmp_path):
    workspace = tmp_path / ".batchgen"
    emulator_config(workspace, queued_token_limits={"gpt-4o-mini": 12_000})
    done = batchgen(workspace, "run", str(ROOT / "jobs" / "task_api"), "--quiet", "--queue-limit", "12000")
    assert done.returncode == 0, done.stderr
    with Ledger.open(workspace / "ledger.db") as ledger:
        shards = ledger.rows("SELECT input_tokens FROM shards")
        assert len(shards) > 3 and all(s["input_tokens"] <= 12_000 for s in shards)
        assert ledger.scalar("SELECT count(*) FROM batches WHERE status != 'completed'") == 0
        assert ledger.scalar("SELECT count(*) FROM requests WHERE status != 'succeeded'") == 0
    assert len(dataset(workspace)) == 500


def test_token_limit_exceeded_requeues_the_shard_until_the_queue_drains(tmp_path):
    """No cap on our side: the emulator refuses what does not fit and the shard goes back to the queue."""
    workspace = tmp_path / ".batchgen"
    emulator_config(workspace, queued_token_limits={"gpt-4o-mini": 12_000}, line_seconds=0.1)
    job = job_copy(tmp_path, limits="max_lines = 10")
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode == 0, done.stderr
    with Ledger.open(workspace / "ledger.db") as ledger:
        refused = ledger.scalar("SELECT count(*) FROM batches WHERE status = 'failed'")
        assert refused > 0, "the emulator never refused a batch: the test does not test anything"
        assert ledger.scalar("SELECT count(*) FROM shards WHERE status = 'requeued'") == refused
        assert ledger.scalar("SELECT count(*) FROM requests WHERE status != 'succeeded'") == 0
        one_outcome_per_request_and_costs_once(ledger)
    assert len(dataset(workspace)) == 500


def test_a_budget_smaller_than_the_job_stops_at_the_budget(tmp_path):
    workspace = tmp_path / ".batchgen"
    job = job_copy(tmp_path, budget_usd="0.01", limits="max_lines = 10")
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: Budget $0.01 of job 'task_api' reached") and "left" in done.stderr
    assert "Traceback" not in done.stderr
    with Ledger.open(workspace / "ledger.db") as ledger:
        spent = sum((Decimal(r[0]) for r in ledger.db.execute("SELECT cost_usd FROM results")), Decimal(0))
        submitted = ledger.scalar("SELECT count(*) FROM batches")
        assert 0 < submitted < ledger.scalar("SELECT count(*) FROM shards")
        next_worst = Decimal(ledger.scalar("SELECT max_cost_usd FROM shards WHERE status = 'pending' ORDER BY id"))
    assert 0 < spent <= Decimal("0.01") < spent + next_worst
    with_more = job_copy(tmp_path / "more", budget_usd="0.15", limits="max_lines = 10")
    assert batchgen(workspace, "run", str(with_more), "--quiet").returncode == 0
    assert len(dataset(workspace)) == 500


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(state: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "serve", "--port", str(port), "--state", str(state),
         "--line-seconds", "0.1", "--validation-seconds", "0.2", "--finalizing-seconds", "0.2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import urllib.request

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/batches?limit=1", timeout=1).close()
            return server
        except OSError:
            assert server.poll() is None, "the emulator exited at start"
            time.sleep(0.1)
    raise AssertionError("the emulator did not start")


def test_an_outage_in_the_middle_of_a_run_is_waited_out(tmp_path):
    """`run` against a server that goes away for a few seconds and comes back on the same state."""
    state, workspace, port = tmp_path / "server", tmp_path / ".batchgen", free_port()
    server = start_server(state, port)
    env = {**os.environ, "BATCHGEN_WORKSPACE": str(workspace), "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
           "OPENAI_API_KEY": "local"}
    run = subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(ROOT / "jobs" / "task_api"), "--backend",
                            "openai", "--poll-interval", "0.3", "--quiet"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (workspace / "ledger.db").exists() or not _batches(workspace):
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.2)
        server.terminate()
        server.wait(timeout=20)
        time.sleep(4)                               # the outage: every poll meanwhile fails to connect
        assert run.poll() is None, run.communicate()
        server = start_server(state, port)
        out, err = run.communicate(timeout=180)
    finally:
        for process in (run, server):
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert run.returncode == 0, err
    assert "Job task_api: done" in out
    with Ledger.open(workspace / "ledger.db") as ledger:
        # the plan's shard and its top-up's (the cells near-duplicates and the date check left short), each once
        shards = ledger.rows("SELECT s.id, count(b.id) AS batches FROM shards s LEFT JOIN batches b "
                             "ON b.shard_id = s.id GROUP BY s.id")
        assert len(shards) == 2 and all(shard["batches"] == 1 for shard in shards), shards
        assert ledger.scalar("SELECT count(*) FROM batches") == 2
        assert ledger.scalar("SELECT count(*) FROM events WHERE kind = 'poll_error'") > 0
        one_outcome_per_request_and_costs_once(ledger)
    assert len(dataset(workspace)) == 500
    check = batchgen(workspace, "ledger", "check")
    assert check.returncode == 0, check.stdout


def _batches(workspace: Path) -> int:
    with Ledger.open(workspace / "ledger.db") as ledger:
        return int(ledger.scalar("SELECT count(*) FROM batches"))


def test_cancelling_a_job_keeps_finished_work_and_submits_nothing_more(tmp_path):
    workspace = tmp_path / ".batchgen"
    emulator_config(workspace, line_seconds=0.2)
    assert batchgen(workspace, "submit", str(ROOT / "jobs" / "task_api")).returncode == 0
    cancelled = batchgen(workspace, "cancel", "task_api")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith("batch_") and "cancelling" in cancelled.stdout
    deadline = time.monotonic() + 60
    while "done" not in (collected := batchgen(workspace, "collect", "task_api")).stdout:
        assert collected.returncode == 0, collected.stderr
        assert time.monotonic() < deadline
        time.sleep(0.3)
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.job("task_api")["status"] == "cancelled"
        assert ledger.scalar("SELECT count(*) FROM batches") == 1
        assert ledger.scalar("SELECT status FROM batches") == "cancelled"
        assert ledger.scalar("SELECT count(*) FROM requests WHERE status = 'cancelled'") > 0
        assert ledger.scalar("SELECT count(*) FROM requests WHERE status = 'retried'") == 0
        one_outcome_per_request_and_costs_once(ledger)
    tick = batchgen(workspace, "tick")
    assert tick.returncode == 0 and tick.stdout == "tick: no active jobs\n"
    check = batchgen(workspace, "ledger", "check")
    assert check.returncode == 0, check.stdout


def top_up_requests(workspace: Path) -> list[int]:
    with Ledger.open(workspace / "ledger.db") as ledger:
        one_outcome_per_request_and_costs_once(ledger)
        return [r[0] for r in ledger.db.execute("SELECT variant FROM requests WHERE variant >= 50 ORDER BY variant")]


def shortfalls(workspace: Path) -> list[dict]:
    return json.loads(batchgen(workspace, "show", "task_api", "--json").stdout)["short"]


def test_a_stage_that_ends_short_of_its_target_is_topped_up(tmp_path):
    """No retries of invalid answers and a third of them malformed: the stage asks for what it lacks with variants
    after the plan (those of the cells below their share), round after round, until the target is met; without
    top-ups it ends short and says so."""
    faults = {"malformed_rate": 0.3, "seed": 5, "line_seconds": 0, "validation_seconds": 0, "finalizing_seconds": 0}
    settings = {"max_attempts": "1", "retry_invalid": "false", "overgeneration": "1"}  # 50 requests planned

    topped = tmp_path / "topped" / ".batchgen"
    emulator_config(topped, **faults)
    done = batchgen(topped, "run", str(job_copy(tmp_path / "topped", max_top_ups="10", **settings)), "--quiet")
    assert done.returncode == 0, done.stderr
    assert len(dataset(topped)) == 500
    extra = top_up_requests(topped)
    assert extra and extra == sorted(set(extra)) and extra[0] >= 50  # variants after the plan, each once
    assert shortfalls(topped) == []
    with Ledger.open(topped / "ledger.db") as ledger:
        rounds = [json.loads(d) for (d,) in ledger.db.execute("SELECT detail_json FROM events WHERE kind = 'top_up'")]
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
    assert rounds[0]["first_variant"] == 50 and sum(r["requests"] for r in rounds) == len(extra)

    plain = tmp_path / "plain" / ".batchgen"
    emulator_config(plain, **faults)
    done = batchgen(plain, "run", str(job_copy(tmp_path / "plain", max_top_ups="0", **settings)), "--json")
    assert done.returncode == 3, done.stderr  # ended short of its target: not the status of success
    assert json.loads(done.stdout)["short"][0]["stage"] == "main"
    assert top_up_requests(plain) == []
    again = batchgen(plain, "collect", "task_api", "--json")
    assert again.returncode == 3 and json.loads(again.stdout)[0]["ended_short"] is True
    (short,) = shortfalls(plain)
    assert short["reason"] == "max_top_ups" and short["target"] == 500
    assert len(dataset(plain)) == 500 - short["missing"] < 500
    assert f"Short: stage main has {500 - short['missing']} of its 500 examples" in \
        batchgen(plain, "show", "task_api").stdout


def test_a_top_up_never_goes_past_the_budget(tmp_path):
    """The budget admits the plan (expected case) but not many more requests at their worst case: the top-ups
    take what fits and the job ends short, done, not stopped at the budget guard."""
    workspace = tmp_path / ".batchgen"
    emulator_config(workspace, malformed_rate=0.3, seed=5, line_seconds=0, validation_seconds=0,
                    finalizing_seconds=0)
    job = job_copy(tmp_path, max_attempts="1", retry_invalid="false", overgeneration="1", max_top_ups="10",
                   budget_usd='"0.0129"')
    done = batchgen(workspace, "run", str(job), "--quiet", "--budget-mode", "expected")
    assert done.returncode == 3, done.stderr
    (short,) = shortfalls(workspace)
    assert short["reason"] == "budget"
    with Ledger.open(workspace / "ledger.db") as ledger:
        spent = sum((Decimal(r[0]) for r in ledger.db.execute("SELECT cost_usd FROM results")), Decimal(0))
    assert spent <= Decimal("0.0129")
    assert "the budget has no room for a top-up" in batchgen(workspace, "show", "task_api").stdout


def test_top_ups_leave_the_later_stages_their_budget(tmp_path):
    """Evol-Instruct: top-ups of the early stages must not spend what the later stages' planned shards need
    (without the reservation, the early stages' top-ups left the last stage's shard over the budget)."""
    budget = "0.034"
    workspace = tmp_path / ".batchgen"
    emulator_config(workspace, malformed_rate=0.4, seed=5, line_seconds=0, validation_seconds=0,
                    finalizing_seconds=0)
    job = job_copy(tmp_path, "evol_task_api", max_attempts="1", retry_invalid="false", max_top_ups="10",
                   budget_usd=f'"{budget}"')
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode == 3, done.stderr  # a later stage ends short: the budget kept for it was all it had
    assert "Short: stage" in done.stdout
    with Ledger.open(workspace / "ledger.db") as ledger:
        assert ledger.scalar("SELECT count(*) FROM events WHERE kind = 'top_up'") > 0
        assert ledger.scalar("SELECT count(DISTINCT stage) FROM requests") == 4
        spent = sum((Decimal(r[0]) for r in ledger.db.execute("SELECT cost_usd FROM results")), Decimal(0))
        one_outcome_per_request_and_costs_once(ledger)
    assert spent <= Decimal(budget)


def test_batches_that_always_expire_do_not_loop_for_ever(tmp_path):
    """Every batch expires half done: expired lines go back for free while batches make progress, but a batch that
    ran nothing (one line, half of it rounds to none) uses up an attempt, and rounds that yield nothing are a dead
    end, so the job ends, blocked."""
    workspace = tmp_path / ".batchgen"
    emulator_config(workspace, expire_after_fraction=0.5, line_seconds=0, validation_seconds=0,
                    finalizing_seconds=0)
    job = job_copy(tmp_path, max_top_ups="0")
    done = subprocess.run([sys.executable, "-m", "batchgen", "run", str(job), "--quiet"], capture_output=True,
                          text=True, env={**os.environ, "BATCHGEN_WORKSPACE": str(workspace)}, cwd=ROOT, timeout=120)
    assert done.returncode == 3 and "Blocked: stage main: round" in done.stdout, done.stderr
    with Ledger.open(workspace / "ledger.db") as ledger:
        stuck = ledger.scalar("SELECT count(*) FROM requests WHERE status = 'expired'")
        attempts = ledger.scalar("SELECT max(attempt) FROM requests")
        one_outcome_per_request_and_costs_once(ledger)
    assert stuck >= 1 and attempts < 12


def test_collect_says_when_retries_or_top_ups_wait_to_be_submitted(tmp_path):
    """submit at night, collect in the morning: collect does not submit, so it says what waits and how to send it."""
    workspace = tmp_path / ".batchgen"
    emulator_config(workspace, malformed_rate=0.3, seed=5, line_seconds=0, validation_seconds=0,
                    finalizing_seconds=0)
    job = job_copy(tmp_path, max_attempts="1", retry_invalid="false", overgeneration="1")
    assert batchgen(workspace, "submit", str(job)).returncode == 0
    for _ in range(100):
        collected = batchgen(workspace, "collect", "task_api").stdout
        if "collected 1 batch(es)" in collected:
            break
    assert "shard(s) to submit: batchgen submit task_api" in collected
    for _ in range(10):
        assert batchgen(workspace, "submit", str(job)).returncode == 0
        collected = "".join(batchgen(workspace, "collect", "task_api").stdout for _ in range(3))
        if "dataset" in collected:
            break
    last = collected.strip().splitlines()[-1]
    assert "done; dataset" in last and "to submit" not in last
