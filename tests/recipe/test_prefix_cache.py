"""The plan's prompt-cache estimate: each request's prefix shared with an earlier one, 1,024 tokens and up in steps
of 128, priced at the cached rate in the expected cost and never in the worst case."""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

from batchgen.recipe.compile import iter_requests
from batchgen.recipe.loader import load_spec
from batchgen.recipe.plan import plan_job, summary_rows
from batchgen.recipe.prefix import PrefixCache, cached_tokens
from batchgen.recipe.pricing import get_price
from batchgen.recipe.render import request_response_format
from batchgen.recipe.tokens import REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, count_text, response_format_tokens

ROOT = Path(__file__).resolve().parents[2]
TASK_API = ROOT / "jobs" / "task_api"
# Instructions that never change, about 1,500 tokens: the shared part of every prompt.
INSTRUCTIONS = "".join(f"Rule {i}: every task has a title, a due date, a priority and an owner; keep the JSON "
                       f"exact, the dates ISO-8601 and the priorities one of low, normal or high (rule {i}).\n"
                       for i in range(40))
TEMPLATE = INSTRUCTIONS + "Write {{ count }} NEW examples about {{ operation }}, {{ style }}. Request {{ index }}."


def cached_job(tmp_path: Path, model: str = "gpt-4o-mini", target: int = 500, template: str = TEMPLATE) -> Path:
    job = tmp_path / "cached"
    shutil.copytree(TASK_API, job)
    (job / "prompt.j2").write_text(template, encoding="utf-8")
    toml = job / "job.toml"
    text = toml.read_text(encoding="utf-8").replace('model = "gpt-4o-mini"', f'model = "{model}"')
    toml.write_text(text.replace("target = 500 ", f"target = {target} "), encoding="utf-8")
    return job


def test_cached_tokens_come_in_steps_from_1024() -> None:
    assert [cached_tokens(n) for n in (0, 1023, 1024, 1151, 1152, 1300, 5000)] == [0, 0, 1024, 1024, 1152, 1280,
                                                                                     4992]


def test_each_request_after_the_first_is_expected_to_hit_its_shared_prefix(tmp_path: Path) -> None:
    spec = load_spec(cached_job(tmp_path))
    stage = spec.stage()
    shared = (response_format_tokens(request_response_format(spec, stage), spec.model)
              + TOKENS_PER_MESSAGE + count_text("system", spec.model) + count_text(stage.system, spec.model)
              + TOKENS_PER_MESSAGE + count_text("user", spec.model) + count_text(INSTRUCTIONS, spec.model))
    assert shared > 1300
    plan = plan_job(spec)
    assert plan.requests == 55
    assert plan.cached_input_tokens == plan.stages[0].cached_input_tokens == 54 * cached_tokens(shared)
    requests = list(iter_requests(spec, stage, prefixes=True))
    assert all(r.prefix is not None and sum(n for _, n in r.prefix) == r.input_tokens for r in requests)
    assert requests[0].prefix is not None and requests[0].prefix[-1][1] == REPLY_PRIMING_TOKENS
    cache = PrefixCache()
    assert [cache.add(r.prefix or ()) for r in requests[:3]] == [0, cached_tokens(shared), cached_tokens(shared)]


def test_cached_input_is_priced_at_the_cached_rate_in_the_expected_cost_only(tmp_path: Path) -> None:
    """gpt-5-nano has a batch cached rate (10 % of the batch input rate); gpt-4o-mini has none, so its cache hits
    save nothing at batch price (they do at standard price, which has a cached rate)."""
    nano = plan_job(load_spec(cached_job(tmp_path / "nano", "gpt-5-nano")))
    price = get_price("gpt-5-nano")
    cached = nano.cached_input_tokens
    uncached_expected = (nano.input_tokens * price.batch.input + nano.expected_output_tokens * price.batch.output)
    assert nano.cost.batch_expected == (uncached_expected - cached * (price.batch.input - price.batch.cached_input)
                                        ) / 1_000_000
    assert nano.cost.batch_worst == (nano.input_tokens * price.batch.input
                                     + nano.worst_output_tokens * price.batch.output) / 1_000_000
    mini = plan_job(load_spec(cached_job(tmp_path / "mini")))
    rates = get_price("gpt-4o-mini")
    assert mini.cached_input_tokens == cached > 0
    assert mini.cost.batch_expected == (mini.input_tokens * rates.batch.input
                                        + mini.expected_output_tokens * rates.batch.output) / 1_000_000
    assert mini.cost.standard_expected < 2 * mini.cost.batch_expected
    data = nano.to_dict()
    assert data["cached_input_tokens"] == data["stages"][0]["cached_input_tokens"] == cached
    row = dict(summary_rows(nano))["cached input"]
    assert row.startswith(f"{cached:,} of the input tokens expected from the prompt cache")
    assert "the worst case assumes none" in row


def test_prompts_that_vary_first_share_nothing(tmp_path: Path) -> None:
    """The varying line first: no request shares 1,024 tokens with another, and the plan says so."""
    varying = "Write {{ count }} NEW examples about {{ operation }}. Request {{ index }}.\n" + INSTRUCTIONS
    plan = plan_job(load_spec(cached_job(tmp_path, template=varying)))
    assert plan.cached_input_tokens == 0
    assert dict(summary_rows(plan))["cached input"].startswith("none expected")


def test_a_sampled_plan_scales_its_sample_and_never_claims_more(tmp_path: Path) -> None:
    """Beyond 20,000 requests the sample's hits stand for their strata: here every request but the first stratum's
    shares the instructions, as in the exact plan."""
    spec = load_spec(cached_job(tmp_path, target=200_000))
    sampled, exact = plan_job(spec), plan_job(spec, exact=True)
    assert sampled.sampled and not exact.sampled
    step = exact.cached_input_tokens // (exact.requests - 1)
    first_stratum = sampled.requests // 2000
    assert sampled.cached_input_tokens == (sampled.requests - first_stratum) * step
    assert sampled.cached_input_tokens <= exact.cached_input_tokens
    assert Decimal(sampled.cached_input_tokens) / exact.cached_input_tokens > Decimal("0.999")


def test_an_embeddings_plan_expects_no_cache() -> None:
    assert plan_job(load_spec(ROOT / "jobs" / "task_api_embeddings")).cached_input_tokens == 0
