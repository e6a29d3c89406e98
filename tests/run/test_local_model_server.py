"""A job on a local model server: `batchgen serve --upstream` in front of a fake llama-cpp-python, vLLM-like or
structured-output-less server (tests/fake_models.py), and batchgen run against the serve with `--backend openai`
and OPENAI_BASE_URL, as a user runs it. The json_schema lines reach each server in the form it takes, and tokens
answered on this machine cost $0 unless the job's price file names the model."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from fake_models import FakeModelServer
from loopback import free_port, serve
from workspaces import batchgen, fresh_workspace, one_batch_job

from batchgen.ledger import Ledger
from batchgen.recipe.formats import response_format
from batchgen.recipe.pricing import LOCAL_SOURCE

FORMAT = response_format("sharegpt", examples=10, turns=(2, 10))  # jobs/task_api: 10 a request, 2..10 turns
FAST = ("--validation-seconds", "0", "--finalizing-seconds", "0")


class Served:
    """A fake model server behind `batchgen serve --upstream`, and a workspace whose openai backend is that serve."""

    def __init__(self, tmp_path: Path, kind: str) -> None:
        self.tmp_path, self.upstream, self.port = tmp_path, FakeModelServer(kind), free_port()
        self.workspace, self.job = fresh_workspace(tmp_path), one_batch_job(tmp_path)
        self.env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{self.port}/v1", "OPENAI_API_KEY": "sk-local"}
        self.log = ""

    def __enter__(self) -> Served:
        self.upstream.__enter__()
        self.server = serve(self.tmp_path / "state", self.port, "--upstream", self.upstream.base_url, *FAST,
                            log_level="info")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.terminate()
        self.log = self.server.communicate(timeout=20)[1]
        self.upstream.__exit__(*exc)

    def batchgen(self, *args: str, check: bool = True, **extra: str) -> Any:
        return batchgen(self.workspace, *args, check=check, **{**self.env, **extra})

    def show(self) -> dict[str, Any]:
        return json.loads(self.batchgen("show", "task_api", "--json").stdout)

    def costs(self) -> dict[str, Any]:
        return json.loads(self.batchgen("costs", "--json").stdout)["total"]


def dataset_size(workspace: Path) -> int:
    return len((workspace / "datasets" / "task_api.sharegpt.jsonl").read_text(encoding="utf-8").splitlines())


def test_a_job_on_llama_cpp_reaches_its_target_through_the_translation_and_costs_nothing(tmp_path):
    with Served(tmp_path, "llama_cpp") as served:
        plan = served.batchgen("plan", str(served.job), BATCHGEN_BACKEND="openai")
        done = served.batchgen("run", str(served.job), "--backend", "openai", "--quiet", timeout=300)
        shown, total = served.show(), served.costs()
        text = served.batchgen("show", "task_api").stdout
        check = served.batchgen("ledger", "check", check=False)
        formats, statuses = served.upstream.formats(), served.upstream.statuses
    assert "Job task_api: done" in done.stdout
    assert dataset_size(served.workspace) == 500
    # the start-up probe: json_schema refused with 500, json_object + schema taken; every line then went so
    assert statuses.count(500) == 1 and statuses[:2] == [500, 200]
    lines = formats[2:]
    assert len(lines) == 55 and all(f == {"type": "json_object", "schema": FORMAT["json_schema"]["schema"]}
                                    for f in lines)
    assert "takes json_object with a schema" in served.log
    # free: planned, spent and reported at $0, with the reason shown where the price source is
    assert "free (local server)" in plan.stdout and "$0.00" in plan.stdout
    assert Decimal(shown["spent_usd"]) == 0 and shown["priced_by"] == [LOCAL_SOURCE]
    assert "Priced by: free (local server)" in text and "Cost: $0.00 at batch price" in text
    assert Decimal(total["cost_usd"]) == 0 and Decimal(total["standard_usd"]) == 0
    assert total["sources"] == [LOCAL_SOURCE] and total["input_tokens"] > 0  # the tokens are still counted
    assert check.returncode == 0, check.stdout


def test_a_server_taking_json_schema_gets_it_unchanged_and_a_price_file_still_prices_the_model(tmp_path):
    with Served(tmp_path, "json_schema") as served:
        (served.job / "prices.toml").write_text('[models."gpt-4o-mini"]\ninput = "1"\noutput = "2"\n',
                                                encoding="utf-8")
        plan = served.batchgen("plan", str(served.job), BATCHGEN_BACKEND="openai")
        served.batchgen("run", str(served.job), "--backend", "openai", "--quiet", timeout=300)
        shown, total = served.show(), served.costs()
        formats = served.upstream.formats()
    assert dataset_size(served.workspace) == 500
    assert formats[0]["json_schema"]["name"] == "probe" and formats[1:] == [FORMAT] * 55
    assert "takes json_schema; response_format is sent as it is" in served.log
    assert "free (local server)" not in plan.stdout and "prices.toml" in plan.stdout
    with Ledger.open(served.workspace / "ledger.db") as ledger:
        prompt, completion = ledger.db.execute(
            "SELECT sum(prompt_tokens), sum(completion_tokens) FROM results").fetchone()
    expected = (prompt * Decimal("0.5") + completion * Decimal("1")) / 1_000_000  # batch: half the price file's
    assert Decimal(shown["spent_usd"]) == expected > 0
    assert Decimal(total["cost_usd"]) == expected and "prices.toml" in total["sources"][0]


def test_without_structured_output_serve_says_so_and_the_lines_are_still_sent(tmp_path):
    with Served(tmp_path, "plain") as served:
        served.batchgen("submit", str(served.job), "--backend", "openai")
        for _ in range(60):
            served.batchgen("collect", "task_api", check=False)
            with Ledger.open(served.workspace / "ledger.db") as ledger:
                if ledger.scalar("SELECT count(*) FROM batches WHERE collected = 1"):
                    break
        bodies = served.upstream.bodies
        with Ledger.open(served.workspace / "ledger.db") as ledger:
            answered = ledger.scalar("SELECT count(*) FROM results WHERE status_code = 200")
    assert "structured output is unavailable at" in served.log and "WARNING" in served.log
    lines = bodies[4:]  # after the probes: json_schema, json_object + schema, json_object, nothing
    assert len(lines) == 55 and all("response_format" not in body for body in lines)
    assert all('"examples"' in body["messages"][0]["content"] for body in lines)  # the schema, as an instruction
    assert answered == 55
