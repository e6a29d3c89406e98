"""The cost plan: `batchgen plan` for the lesson's job, its JSON, the budget verdict and `batchgen init`."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from workspaces import batchgen

from batchgen.cli import cli
from batchgen.recipe.compile import compile_stage
from batchgen.recipe.estimates import expected_output_tokens
from batchgen.recipe.loader import load_spec
from batchgen.recipe.plan import plan_job
from batchgen.recipe.tokens import count_text

ROOT = Path(__file__).resolve().parents[2]
TASK_API = ROOT / "jobs" / "task_api"


def test_task_api_plan_is_under_budget_and_the_lesson_equation_holds() -> None:
    plan = plan_job(load_spec(TASK_API))
    cost = plan.cost
    assert plan.requests == 55 and plan.target == 500
    assert plan.verdict == "within" and cost.batch_worst <= Decimal("0.15")
    # The lesson: ~200 input tokens and ~150 output tokens per example, 175K tokens, ~$0.075 for 500 examples.
    assert plan.input_tokens <= 100_000 and plan.expected_output_tokens <= 75_000
    assert cost.batch_expected <= Decimal("0.075") and cost.standard_expected <= Decimal("0.075")
    lesson_at_batch = (100_000 * Decimal("0.075") + 75_000 * Decimal("0.30")) / 10**6
    assert lesson_at_batch == Decimal("0.03") and cost.batch_expected <= lesson_at_batch
    assert cost.standard_expected == 2 * cost.batch_expected  # batch is half price


def test_plan_tokens_equal_the_compiled_shards(tmp_path: Path) -> None:
    spec = load_spec(TASK_API)
    plan = plan_job(spec)
    compiled = compile_stage(spec, write=False)
    assert plan.input_tokens == compiled.input_tokens
    assert [(s.lines, s.bytes, s.input_tokens, s.sha256) for s in plan.stages[0].shards] == [
        (s.lines, s.bytes, s.input_tokens, s.sha256) for s in compiled.shards
    ]


def test_expected_output_is_the_mean_seed_as_json() -> None:
    spec = load_spec(TASK_API)
    per_seed = [
        count_text(json.dumps(s, ensure_ascii=False, separators=(",", ":")), spec.model) for s in spec.seeds
    ]
    expected = expected_output_tokens(spec, spec.stage())
    assert 10 * sum(per_seed) / len(per_seed) < expected <= 10 * sum(per_seed) / len(per_seed) + 20


def test_plan_costs_are_exact() -> None:
    plan = plan_job(load_spec(TASK_API))
    cost = plan.cost
    assert (
        cost.batch_expected
        == (plan.input_tokens * Decimal("0.075") + plan.expected_output_tokens * Decimal("0.3")) / 10**6
    )
    assert cost.batch_worst == (plan.input_tokens * Decimal("0.075") + 55 * 2000 * Decimal("0.3")) / 10**6


def test_plan_command_table() -> None:
    result = CliRunner().invoke(cli, ["plan", str(TASK_API)], catch_exceptions=False)
    assert result.exit_code == 0
    out = result.stdout
    for text in (
        "requests       55 for 500 examples",
        "input tokens",
        "(messages exact; 130 a request estimated for the schema)",
        "worst case",
        "batch cost",
        "standard cost",
        "batch saves",
        "within budget",
        "shard",
        "0.22",
    ):
        assert text in out, text


def test_plan_json_parses() -> None:
    result = CliRunner().invoke(cli, ["plan", str(TASK_API), "--json"], catch_exceptions=False)
    data = json.loads(result.stdout)
    assert data["requests"] == 55 and data["verdict"] == "within"
    assert Decimal(data["cost_usd"]["batch_expected"]) < Decimal(data["budget_usd"]) == Decimal("0.15")
    assert data["price"]["batch"] == {
        "input_per_1m": "0.075",
        "cached_input_per_1m": "0.075",
        "output_per_1m": "0.3",
    }
    assert data["stages"][0]["shards"][0]["lines"] == 55


@pytest.mark.parametrize(
    ("budget", "verdict"), [("1", "within"), ("0.02", "expected_within"), ("0.001", "over")]
)
def test_budget_verdicts(tmp_path: Path, budget: str, verdict: str) -> None:
    job = tmp_path / "job"
    shutil.copytree(TASK_API, job)
    toml = job / "job.toml"
    toml.write_text(toml.read_text().replace("budget_usd = 0.15", f'budget_usd = "{budget}"'))
    plan = plan_job(load_spec(job))
    assert plan.verdict == verdict
    assert ("over" in plan.verdict_text) == (verdict != "within")


def test_evol_job_plans_all_four_stages() -> None:
    plan = plan_job(load_spec(ROOT / "jobs" / "evol_task_api"))
    assert [s.name for s in plan.stages] == ["simple", "moderate", "complex", "edge_case"]
    assert [s.source for s in plan.stages] == [None, "simple", "moderate", "complex"]
    assert [s.exact for s in plan.stages] == [True, False, False, False]
    assert plan.target == 500 and plan.cost.batch_worst <= Decimal("0.15")


def test_init_scaffolds_a_job_that_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for fmt in ("sharegpt", "alpaca", "chatml"):
        result = runner.invoke(cli, ["init", f"my_{fmt}", "--format", fmt], catch_exceptions=False)
        assert result.exit_code == 0 and f"jobs/my_{fmt}" in result.stdout
        planned = runner.invoke(cli, ["plan", f"my_{fmt}", "--json"], catch_exceptions=False)
        assert planned.exit_code == 0 and json.loads(planned.stdout)["verdict"] == "within"
    again = runner.invoke(cli, ["init", "my_sharegpt"])
    assert again.exit_code == 1 and "already exists" in again.stderr
    bad = runner.invoke(cli, ["init", "bad name!"])
    assert bad.exit_code == 1 and "Job name" in bad.stderr


def job_with_target(tmp_path: Path, target: int) -> Path:
    job = tmp_path / "task_api"
    shutil.copytree(TASK_API, job)
    toml = job / "job.toml"
    toml.write_text(toml.read_text().replace("target = 500 ", f"target = {target} "))
    return job


def plan_json(tmp_path: Path, job: Path, *args: str) -> dict[str, Any]:
    done = batchgen(tmp_path / ".batchgen", "plan", str(job), "--json", *args, check=True)
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_a_huge_target_is_planned_from_a_sample_and_says_so(tmp_path: Path) -> None:
    job = job_with_target(tmp_path, 11_363_636)  # 1,250,000 requests; every one of them would take minutes
    table = batchgen(tmp_path / ".batchgen", "plan", str(job), check=True).stdout
    assert "requests       1,250,000 for 11,363,636 examples" in table
    assert "counted        estimate: sampled 2,000 of 1,250,000 requests; input tokens within ±" in table
    assert "(estimated from the sample)" in table and "(messages sampled; 130 a request" in table
    data = plan_json(tmp_path, job)
    assert data["counted"]["exact"] is False and data["counted"]["rendered"] == 2_000
    assert data["counted"]["text"].startswith("estimate: sampled 2,000 of 1,250,000 requests")
    stage = data["stages"][0]
    assert stage["sampled"] is True and stage["exact"] is False and stage["shards_estimated"] is True
    assert sum(s["lines"] for s in stage["shards"]) == 1_250_000
    assert sum(s["input_tokens"] for s in stage["shards"]) == data["input_tokens"]
    # Money stays exact in the extrapolation: every sampled request's exact cost times what it stands for.
    expected = (data["input_tokens"] * Decimal("0.075") + data["expected_output_tokens"] * Decimal("0.3")) / 10**6
    assert Decimal(data["cost_usd"]["batch_expected"]) == expected
    assert plan_json(tmp_path, job) == data  # the same spec gives the same sample


def test_a_sampled_plan_is_within_one_percent_of_the_exact_one(tmp_path: Path) -> None:
    """At 27,500 requests both run in seconds: the sample's estimates of tokens, cost and bytes are within 1 % of
    the exact ones (the margin it states too), and the shards come out the same."""
    job = job_with_target(tmp_path, 250_000)
    sampled, exact = plan_json(tmp_path, job), plan_json(tmp_path, job, "--exact")
    assert sampled["counted"]["exact"] is False and exact["counted"] == {
        "exact": True, "rendered": 27_500, "requests": 27_500, "input_tokens_margin": 0,
        "text": "exact: every request rendered and counted"}
    assert sampled["requests"] == exact["requests"] == 27_500
    difference = abs(sampled["input_tokens"] - exact["input_tokens"])
    assert difference <= exact["input_tokens"] / 100
    assert 0 < sampled["counted"]["input_tokens_margin"] <= exact["input_tokens"] / 100
    for key in ("batch_expected", "batch_worst", "standard_expected"):
        assert abs(Decimal(sampled["cost_usd"][key]) / Decimal(exact["cost_usd"][key]) - 1) <= Decimal("0.01"), key
    shards = [stage["shards"] for stage in (sampled["stages"][0], exact["stages"][0])]
    assert [s["lines"] for s in shards[0]] == [s["lines"] for s in shards[1]]
    assert abs(sum(s["bytes"] for s in shards[0]) / sum(s["bytes"] for s in shards[1]) - 1) <= 0.01


def test_a_model_without_a_known_output_limit_is_not_checked(tmp_path: Path) -> None:
    job = tmp_path / "task_api"
    shutil.copytree(TASK_API, job)
    toml = job / "job.toml"
    toml.write_text(toml.read_text().replace('model = "gpt-4o-mini"', 'model = "gpt-6-sol"')
                    .replace("max_tokens = 2000", "max_tokens = 900000"))
    plan = plan_job(load_spec(job))
    assert plan.output_limit is None and plan.to_dict()["output_limit"] is None
    assert plan.max_tokens_text == ("900,000 a request, sent as max_completion_tokens; gpt-6-sol's output limit "
                                    "is not known to batchgen, not checked")
