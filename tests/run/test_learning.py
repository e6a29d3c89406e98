"""Estimates that learn: output tokens and yield per request from the answers the ledger holds, in `plan`, in the
pending shards' expected cost, in the size of a top-up, and in `costs --by basis`."""

from __future__ import annotations

import json
import math
import re
import shutil
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from workspaces import FAST, TASK_API, batchgen, fresh_workspace

from batchgen.ledger import Ledger
from batchgen.recipe.estimates import MIN_ANSWERS, Observed, StageEstimate, choose

# gpt-4o-mini at batch price, USD per 1M tokens (input, output).
BATCH_IN, BATCH_OUT = Decimal("0.075"), Decimal("0.30")
LOW_YIELD = {**json.loads(FAST), "malformed_rate": 0.3, "seed": 9}
TOP_UPS_ONLY = {"max_attempts": "1", "retry_invalid": "false", "overgeneration": "1", "max_top_ups": "10"}


def job_copy(parent: Path, name: str = "task_api", **settings: str) -> Path:
    """jobs/task_api under `parent`, named `name`, with top-level settings replaced or added (TOML literals)."""
    job = parent / name
    shutil.copytree(TASK_API, job)
    head, _, rest = (job / "job.toml").read_text(encoding="utf-8").partition("\n[")
    for key, value in {"name": f'"{name}"', **settings}.items():
        head, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", head)
        head += "" if count else f"\n{key} = {value}"
    (job / "job.toml").write_text(head + "\n[" + rest, encoding="utf-8")
    return job


def plan(workspace: Path, job: Path) -> dict:
    return json.loads(batchgen(workspace, "plan", str(job), "--json", check=True).stdout)


def answered_tokens(workspace: Path) -> list[int]:
    """The completion tokens of every answered line in the downloaded output files."""
    return [json.loads(line)["response"]["body"]["usage"]["completion_tokens"]
            for path in sorted((workspace / "results").rglob("*.output.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines()]


def upper_bound(tokens: list[int]) -> int:
    n = len(tokens)
    mean = Fraction(sum(tokens), n)
    variance = (Fraction(sum(t * t for t in tokens), n) - mean * mean) * n / (n - 1)
    return math.ceil(mean + 1.96 * math.sqrt(variance / n))


def rounds(workspace: Path) -> tuple[int, set[str]]:
    """How many compiles the stage took (first + top-ups), and the bases its shards were priced on."""
    with Ledger.open(workspace / "ledger.db") as ledger:
        attempts = ledger.scalar("SELECT count(DISTINCT attempt) FROM shards")
        bases = {row[0] for row in ledger.db.execute("SELECT DISTINCT estimate_basis FROM shards")}
    return attempts, bases


def test_choose_needs_enough_answers_and_prefers_the_jobs_own():
    prior = StageEstimate("main", 568, Fraction(10), 2000)
    few = Observed(("a",), MIN_ANSWERS - 1, 600 * (MIN_ANSWERS - 1), 360_000 * (MIN_ANSWERS - 1), 100)
    assert choose(prior, "a", {"a": few}).basis == "prior"
    enough = Observed(("b",), 40, 40 * 700, 40 * 700 * 700, 300)
    borrowed = choose(prior, "a", {"a": few, "b": enough})
    assert (borrowed.basis, borrowed.source, borrowed.output_tokens) == ("learned", "job b", 700)
    assert borrowed.yield_ == Fraction(300, 40)
    own = Observed(("a",), 25, 25 * 500, 25 * 500 * 500, 200)
    mine = choose(prior, "a", {"a": own, "b": enough})
    assert (mine.source, mine.output_tokens, mine.yield_) == ("this job", 500, Fraction(8))
    assert mine.requests_for(16, Decimal("1.1")) == math.ceil(Fraction(16) * Fraction("1.1") / 8)
    capped = choose(StageEstimate("main", 568, Fraction(10), 600), "a", {"a": Observed(("a",), 30, 30 * 900,
                                                                                          30 * 810_000, 0)})
    assert capped.output_tokens == 600 and capped.yield_ == Fraction(10)  # a yield of 0 is not learned


def test_plan_learns_from_this_job_and_an_earlier_one_of_the_same_template(tmp_path):
    workspace = fresh_workspace(tmp_path)
    job = job_copy(tmp_path / "jobs")
    before = plan(workspace, job)["stages"][0]["estimate"]
    assert (before["basis"], before["learned"]) == ("prior", None)
    batchgen(workspace, "run", str(job), "--quiet", check=True)
    tokens = answered_tokens(workspace)
    after = plan(workspace, job)
    estimate = after["stages"][0]["estimate"]
    assert (estimate["basis"], estimate["source"], estimate["answers"]) == ("learned", "this job", len(tokens))
    assert estimate["output_tokens_per_request"] == upper_bound(tokens)
    with Ledger.open(workspace / "ledger.db") as ledger:
        valid = ledger.scalar("SELECT count(*) FROM examples WHERE valid = 1")
    assert estimate["yield_per_request"] == round(valid / len(tokens), 2)
    assert after["stages"][0]["expected_output_tokens"] == upper_bound(tokens) * after["stages"][0]["requests"]
    text = batchgen(workspace, "plan", str(job), check=True).stdout
    assert f"learned {upper_bound(tokens):,}" in text and f"(from this job, {len(tokens)} answers)" in text
    # Another job of the same model and template learns from this one; one with another template does not.
    twin = plan(workspace, job_copy(tmp_path / "jobs", "task_api_twin"))["stages"][0]["estimate"]
    assert (twin["basis"], twin["source"]) == ("learned", "job task_api")
    other = job_copy(tmp_path / "jobs", "task_api_other")
    (other / "prompt.j2").write_text("Other words first.\n" + (other / "prompt.j2").read_text(encoding="utf-8"),
                                     encoding="utf-8")
    assert plan(workspace, other)["stages"][0]["estimate"]["basis"] == "prior"


def test_a_low_yield_stage_reaches_its_target_in_fewer_rounds_when_it_learns(tmp_path):
    learned_ws = fresh_workspace(tmp_path / "learned", json.dumps(LOW_YIELD))
    prior_ws = fresh_workspace(tmp_path / "prior", json.dumps(LOW_YIELD))
    batchgen(learned_ws, "run", str(job_copy(tmp_path / "learned", **TOP_UPS_ONLY)), "--quiet", check=True)
    batchgen(prior_ws, "run", str(job_copy(tmp_path / "prior", **TOP_UPS_ONLY)), "--quiet", "--no-learn",
             check=True)
    (learned, learned_bases), (prior, prior_bases) = rounds(learned_ws), rounds(prior_ws)
    assert prior_bases == {"prior"} and learned_bases == {"prior", "learned"}
    assert learned < prior, (learned, prior)
    with Ledger.open(learned_ws / "ledger.db") as ledger:
        top_ups = [json.loads(row[0]) for row in ledger.db.execute(
            "SELECT detail_json FROM events WHERE kind = 'top_up' ORDER BY id")]
    assert top_ups and all(event["basis"] == "learned" for event in top_ups)
    assert all(event["yield_per_request"] < 10 for event in top_ups)  # 30 % of the answers are malformed


def test_learned_shards_are_priced_with_the_learned_output_and_costs_splits_the_error_by_basis(tmp_path):
    """Shards of 25 lines, one in the queue at a time: after the first is collected, the pending ones are priced
    again with what its 25 answers showed; `costs --by basis` then shows the estimate error of each basis."""
    workspace = fresh_workspace(tmp_path)
    job = job_copy(tmp_path / "jobs")
    (job / "job.toml").write_text((job / "job.toml").read_text(encoding="utf-8").replace(
        "[prompt]", "[limits]\nmax_lines = 25\n\n[prompt]"), encoding="utf-8")
    batchgen(workspace, "run", str(job), "--quiet", "--queue-limit", "25000", "--budget-mode", "expected",
             check=True)
    with Ledger.open(workspace / "ledger.db") as ledger:
        shards = ledger.rows("SELECT id, estimate_basis, est_output_tokens, est_cost_usd FROM shards ORDER BY id")
        repriced = ledger.scalar("SELECT count(*) FROM events WHERE kind = 'repriced'")
        for shard in shards:
            inputs = [row[0] for row in ledger.db.execute("SELECT input_tokens FROM requests WHERE shard_id = ?",
                                                          [shard["id"]])]
            by_hand = sum(((tokens * BATCH_IN + shard["est_output_tokens"] * BATCH_OUT) / 1_000_000
                           for tokens in inputs), Decimal(0))
            assert Decimal(shard["est_cost_usd"]) == by_hand, shard["id"]
    assert shards[0]["estimate_basis"] == "prior" and shards[0]["est_output_tokens"] == 568
    learned = [s for s in shards if s["estimate_basis"] == "learned"]
    assert learned and repriced >= 1
    assert all(s["est_output_tokens"] != 568 for s in learned)
    lines = json.loads(batchgen(workspace, "costs", "--by", "basis", "--json", check=True).stdout)["lines"]
    assert [line["basis"] for line in lines] == ["learned", "prior"]
    total = json.loads(batchgen(workspace, "costs", "--json", check=True).stdout)["total"]
    assert sum(Decimal(line["estimated_usd"]) for line in lines) == Decimal(total["estimated_usd"])
    assert sum(Decimal(line["cost_usd"]) for line in lines) == Decimal(total["cost_usd"])
