"""The cost ledger's acceptance scenario: three jobs on three emulated days, a price override, cached tokens, a
ledger row that disagrees with its batch's usage, an orphan batch carrying a ledger key, another tool's batch and
provider usage that differs on one day.

`batchgen costs` must equal a hand computation from the downloaded output files to the micro-dollar, and
`batchgen ledger reconcile --usage` must report the planted differences and nothing else.
"""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner
from test_costs import priced
from workspaces import fresh_workspace, one_batch_job

from batchgen.cli import cli
from batchgen.emulator import start_embedded
from batchgen.ledger import Ledger

# USD per 1M tokens at batch price (input, cached input, output), written out by hand from the spec's price table:
# gpt-4o-mini has no batch cached rate (cached input pays the batch input rate); gpt-5-mini has one.
MINI_4O = (Decimal("0.075"), Decimal("0.075"), Decimal("0.30"))
MINI_5 = (Decimal("0.125"), Decimal("0.0125"), Decimal("1.00"))
# beta's prices.toml: standard 0.30 in / 1.20 out, so 0.15 / 0.60 at batch price; no cached rate given.
OVERRIDE = (Decimal("0.15"), Decimal("0.15"), Decimal("0.60"))
OVERRIDE_TOML = '[models."gpt-4o-mini"]\ninput = "0.30"\noutput = "1.20"\nsource = "our negotiated rate"\n'

SYSTEM = " ".join(f"Guideline {i}: every example must read like a real user talking to a task assistant."
                  for i in range(90))  # about 1,500 tokens, shared by every request of gamma
TAMPER = 7  # output tokens added to one of gamma's result rows in the ledger
ADJUST = {"input_tokens": 1_000, "output_tokens": 500, "requests": 3, "cost_usd": "0.25"}  # alpha's day


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def as_json(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def by_hand(folder: Path, rates: tuple[Decimal, Decimal, Decimal]) -> dict[str, object]:
    """A job's tokens and money from its output files alone."""
    hand = {"answered": 0, "input": 0, "cached": 0, "output": 0, "usd": Decimal(0)}
    for path in sorted(folder.glob("*.output.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            usage = json.loads(line)["response"]["body"]["usage"]
            prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            hand["answered"] += 1
            hand["input"] += prompt
            hand["cached"] += cached
            hand["output"] += completion
            hand["usd"] += priced(rates, prompt, cached, completion)
    return hand


def noon(days_ahead: int) -> tuple[float, str]:
    """Noon UTC `days_ahead` days from today, and its date: runs there cannot straddle midnight."""
    day = datetime.now(timezone.utc).date() + timedelta(days=days_ahead)
    moment = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)
    return moment.timestamp(), day.isoformat()


def set_day(workspace: Path, days_ahead: int) -> str:
    when, day = noon(days_ahead)
    with start_embedded(workspace / "emulator") as emulator:
        emulator.control.set_time(when)
    return day


def other_tools_batch(workspace: Path) -> str:
    """A batch made by some other program with the plain SDK: no batchgen metadata. Its id, once completed."""
    lines = [json.dumps({"custom_id": f"other-{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say {i}."}]}})
             for i in range(4)]
    with start_embedded(workspace / "emulator") as emulator, \
            openai.OpenAI(base_url=emulator.base_url, api_key="sk-other-tool") as client:
        upload = client.files.create(file=("other.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        return wait_done(client, batch.id)


def wait_done(client: openai.OpenAI, batch_id: str) -> str:
    for _ in range(200):
        if client.batches.retrieve(batch_id).status == "completed":
            return batch_id
        time.sleep(0.05)
    raise AssertionError(f"{batch_id} did not complete")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    parent = tmp_path_factory.mktemp("scenario")
    workspace = fresh_workspace(parent)
    patch = pytest.MonkeyPatch()
    patch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    patch.setenv("OPENAI_ADMIN_KEY", "sk-admin-scenario")
    patch.delenv("BATCHGEN_PRICES", raising=False)
    alpha = one_batch_job(parent / "a", name='"alpha"')
    beta = one_batch_job(parent / "b", name='"beta"')
    (beta / "prices.toml").write_text(OVERRIDE_TOML, encoding="utf-8")
    gamma = one_batch_job(parent / "c", name='"gamma"', model='"gpt-5-mini"', budget_usd="1")
    toml = gamma / "job.toml"
    plain = 'system = "You generate training data in JSON format."'
    assert plain in toml.read_text(encoding="utf-8")
    toml.write_text(toml.read_text(encoding="utf-8").replace(plain, f"system = {json.dumps(SYSTEM)}"),
                    encoding="utf-8")
    delta = one_batch_job(parent / "d", name='"delta"')
    days = {}
    for offset, name, job in ((1, "alpha", alpha), (2, "beta", beta), (3, "gamma", gamma)):
        days[name] = set_day(workspace, offset)
        code, output = invoke("run", str(job), "--quiet")
        assert code in (0, 3), output  # done, or ended short of a cell's share: the money is what counts here
    # Gamma's day goes on: an orphan (delta's batch, created, then lost by the ledger) and another tool's batch.
    assert invoke("submit", str(delta))[0] == 0
    with Ledger.open(workspace / "ledger.db") as ledger, ledger.transaction():
        orphan = ledger.scalar("SELECT id FROM batches WHERE job = 'delta'")
        ledger.db.execute("DELETE FROM batches WHERE id = ?", (orphan,))
        tampered = ledger.scalar("SELECT r.batch_id FROM results r JOIN batches b ON b.id = r.batch_id "
                                 "WHERE b.job = 'gamma' AND r.source = 'output' ORDER BY r.rowid LIMIT 1")
        ledger.db.execute("UPDATE results SET completion_tokens = completion_tokens + ? WHERE rowid = "
                          "(SELECT min(rowid) FROM results WHERE batch_id = ? AND source = 'output')",
                          (TAMPER, tampered))
    with start_embedded(workspace / "emulator") as emulator, \
            openai.OpenAI(base_url=emulator.base_url, api_key="sk-test") as client:
        wait_done(client, orphan)
    other = other_tools_batch(workspace)
    with start_embedded(workspace / "emulator") as emulator:  # the provider bills more on alpha's day
        emulator.control.adjust_usage(days["alpha"], "gpt-4o-mini", **ADJUST)
    hands = {"alpha": by_hand(workspace / "results" / "alpha", MINI_4O),
             "beta": by_hand(workspace / "results" / "beta", OVERRIDE),
             "beta_at_table": by_hand(workspace / "results" / "beta", MINI_4O),
             "gamma": by_hand(workspace / "results" / "gamma", MINI_5)}
    yield {"workspace": workspace, "days": days, "hands": hands, "orphan": orphan, "other": other,
           "tampered": tampered}
    patch.undo()


@pytest.fixture()
def in_scenario(scenario: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(scenario["workspace"]))
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-scenario")
    monkeypatch.delenv("BATCHGEN_PRICES", raising=False)
    return scenario


def test_costs_by_job_and_day_are_the_hand_computation(in_scenario):
    hands, days = in_scenario["hands"], in_scenario["days"]
    assert hands["gamma"]["cached"] > 0 and hands["gamma"]["cached"] < hands["gamma"]["input"]  # part cached
    assert hands["alpha"]["cached"] == hands["beta"]["cached"] == 0
    code, report = as_json("costs", "--by", "job")
    assert code == 0
    lines = {line["job"]: line for line in report["lines"]}
    assert set(lines) == {"alpha", "beta", "gamma"}  # delta's only batch is not in the ledger
    for name in ("alpha", "beta", "gamma"):
        line, hand = lines[name], hands[name]
        assert Decimal(line["cost_usd"]) == hand["usd"], name
        assert (line["input_tokens"], line["cached_tokens"]) == (hand["input"], hand["cached"]), name
        assert line["output_tokens"] == hand["output"] + (TAMPER if name == "gamma" else 0), name
    assert any("our negotiated rate" in source for source in lines["beta"]["sources"])
    total = report["total"]
    assert Decimal(total["cost_usd"]) == sum((hands[n]["usd"] for n in ("alpha", "beta", "gamma")), Decimal(0))
    code, by_day = as_json("costs", "--by", "day")
    assert {line["day"]: Decimal(line["cost_usd"]) for line in by_day["lines"]} == {
        days[name]: hands[name]["usd"] for name in ("alpha", "beta", "gamma")}
    code, one_day = as_json("costs", "--since", days["beta"], "--until", days["beta"])
    assert Decimal(one_day["total"]["cost_usd"]) == hands["beta"]["usd"]


def test_reconcile_finds_the_tampered_batch_and_the_orphan(in_scenario):
    code, report = as_json("ledger", "reconcile")
    assert code == 1 and not report["clean"]
    differs = [batch for batch in report["batches"] if batch["verdict"] == "differs"]
    assert [batch["batch"] for batch in differs] == [in_scenario["tampered"]]
    (problem,) = differs[0]["problems"]
    assert problem.startswith("output tokens: ledger ")
    assert [u["batch"] for u in report["unrecorded"]] == [in_scenario["orphan"]]  # another tool's is not ours


def test_reconcile_usage_reports_exactly_the_planted_differences(in_scenario):
    hands, days = in_scenario["hands"], in_scenario["days"]
    code, report = as_json("ledger", "reconcile", "--usage", "--tolerance", "0")
    assert code == 1 and not report["clean"]
    assert report["since"] == days["alpha"] and report["until"] >= days["gamma"]
    tokens = {(row["day"], row["model"]): row for row in report["tokens"]}
    differing = {key for key, row in tokens.items() if row["problems"]}
    assert differing == {(days["alpha"], "gpt-4o-mini"), (days["gamma"], "gpt-5-mini")}
    alpha = tokens[(days["alpha"], "gpt-4o-mini")]
    assert alpha["difference"] == {"input": ADJUST["input_tokens"], "cached": 0, "output": ADJUST["output_tokens"],
                                   "requests": ADJUST["requests"]}
    assert tokens[(days["gamma"], "gpt-5-mini")]["difference"] == {"input": 0, "cached": 0, "output": -TAMPER,
                                                                   "requests": 0}
    beta = tokens[(days["beta"], "gpt-4o-mini")]  # the price override changes money, not tokens
    assert beta["ledger"] == beta["provider"] and beta["ledger"]["output"] == hands["beta"]["output"]
    spare = tokens[(days["gamma"], "gpt-4o-mini")]  # delta's orphan and the other tool's batch, both explained
    assert spare["ledger"]["requests"] == 0 and spare["unrecorded"]["requests"] > 0
    assert spare["other_tools"]["requests"] == 4 and not spare["problems"]

    money = {row["day"]: row for row in report["money"]}
    assert set(money) == set(days.values())
    assert [day for day, row in money.items() if row["problems"]] == [days["alpha"], days["beta"]]
    assert Decimal(str(money[days["alpha"]]["difference_usd"])) == Decimal(ADJUST["cost_usd"])
    assert Decimal(str(money[days["alpha"]]["ledger_usd"])) == hands["alpha"]["usd"]
    beta_money = money[days["beta"]]  # the provider bills its list price, the ledger the user's override
    assert Decimal(str(beta_money["ledger_usd"])) == hands["beta"]["usd"]
    assert Decimal(str(beta_money["provider_usd"])) == hands["beta_at_table"]["usd"]
    assert Decimal(str(beta_money["difference_usd"])) == hands["beta_at_table"]["usd"] - hands["beta"]["usd"]
    gamma_money = money[days["gamma"]]
    assert Decimal(str(gamma_money["difference_usd"])) == 0
    assert Decimal(str(gamma_money["ledger_usd"])) == hands["gamma"]["usd"]  # the tamper changed tokens, not cost
    assert Decimal(str(gamma_money["unrecorded_usd"])) > 0 and Decimal(str(gamma_money["other_tools_usd"])) > 0


def test_polling_and_collecting_again_count_nothing_twice(in_scenario):
    code, before = as_json("costs", "--by", "job")
    for name in ("alpha", "beta", "gamma"):
        assert invoke("collect", name)[0] == 0
        assert invoke("status", name)[0] == 0
    code, after = as_json("costs", "--by", "job")
    assert after == before
