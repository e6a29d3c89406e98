"""The cost plan: `batchgen plan` for the lesson's job, its JSON, the budget verdict and `batchgen init`."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.cli import cli
from batchgen.recipe.compile import compile_stage
from batchgen.recipe.loader import load_spec
from batchgen.recipe.plan import expected_output_tokens, plan_job
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
        "(messages exact; 109 a request estimated for the schema)",
        "worst case",
        "batch cost",
        "standard cost",
        "batch saves",
        "within budget",
        "shard",
        "0.21",
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
