"""A job whose prompts share a long prefix: the embedded emulator answers with cached tokens, the ledger records
them and `batchgen costs` prices them at the cached rate, exactly."""

from __future__ import annotations

import json
from decimal import Decimal

from click.testing import CliRunner
from workspaces import fresh_workspace, one_batch_job

from batchgen.cli import cli
from batchgen.ledger import Ledger
from batchgen.recipe.pricing import get_price
from batchgen.recipe.tokens import count_text

SYSTEM = " ".join(f"Guideline {i}: every example must read like a real user talking to a task assistant."
                  for i in range(90))


def test_cached_tokens_of_a_shared_system_prompt_are_recorded_and_priced_at_the_cached_rate(tmp_path,
                                                                                            monkeypatch):
    assert count_text(SYSTEM, "gpt-5-mini") >= 1100
    job = one_batch_job(tmp_path, budget_usd="1", model='"gpt-5-mini"')  # a model with a batch cached rate
    toml = job / "job.toml"
    text = toml.read_text(encoding="utf-8")
    assert 'system = "You generate training data in JSON format."' in text
    toml.write_text(text.replace('system = "You generate training data in JSON format."',
                                 f"system = {json.dumps(SYSTEM)}"), encoding="utf-8")
    workspace = fresh_workspace(tmp_path)
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    result = CliRunner().invoke(cli, ["run", str(job), "--quiet"])
    assert result.exit_code in (0, 3), result.output
    with Ledger.open(workspace / "ledger.db") as ledger:
        answered = list(ledger.db.execute(
            "SELECT prompt_tokens, cached_tokens, completion_tokens, cost_usd FROM results WHERE source = 'output'"))
    assert answered and sum(cached for _, cached, _, _ in answered) > 0
    assert all(cached == 0 or (cached >= 1024 and cached % 128 == 0 and cached <= prompt)
               for prompt, cached, _, _ in answered)
    price = get_price("gpt-5-mini")
    assert price.batch.cached_input < price.batch.input
    hand = sum((price.cost(p, c, o, True) for p, c, o, _ in answered), Decimal(0))
    uncached = sum((price.cost(p, 0, o, True) for p, _, o, _ in answered), Decimal(0))
    standard = sum((price.cost(p, c, o, False) for p, c, o, _ in answered), Decimal(0))
    assert sum((Decimal(cost) for *_, cost in answered), Decimal(0)) == hand
    report = CliRunner().invoke(cli, ["costs", "--json"])
    assert report.exit_code == 0, report.output
    total = json.loads(report.stdout)["total"]
    assert total["cached_tokens"] == sum(cached for _, cached, _, _ in answered)
    assert Decimal(total["cost_usd"]) == hand and Decimal(total["standard_usd"]) == standard
    assert standard < sum((price.cost(p, 0, o, False) for p, _, o, _ in answered), Decimal(0))
    assert hand < uncached
