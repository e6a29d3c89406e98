"""Embeddings jobs end to end, as a user runs them: `batchgen run`, then `batchgen export`, each in its own process,
on the embedded emulator over real HTTP. Every vector is exported once, of the size asked for, and paid for once;
a valid answer is never asked for again, a failed or rejected one is."""

from __future__ import annotations

import json
import math
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from workspaces import ROOT, batchgen, fresh_workspace

from batchgen.ledger import Ledger
from batchgen.ledger.workspace import Workspace
from batchgen.recipe.compile import compile_stage
from batchgen.recipe.loader import load_spec
from batchgen.recipe.plan import plan_job
from batchgen.recipe.render import parse_custom_id

EMBED_JOB = ROOT / "jobs" / "task_api_embeddings"
NAME = "task_api_embeddings"
TOKEN_PRICE = Decimal("0.01") / 1_000_000  # text-embedding-3-small at batch price, USD per token


def config(**faults: object) -> str:
    return json.dumps({"line_seconds": 0, "validation_seconds": 0, "finalizing_seconds": 0, **faults})


def planned_inputs(job: Path, tmp_path: Path) -> dict[int, str]:
    """Variant index -> the text its request embeds, as compile renders it."""
    result = compile_stage(load_spec(job), shards_dir=Workspace(tmp_path / "compiled").shards_dir)
    lines = [json.loads(line) for line in Path(result.shards[0].path).read_text(encoding="utf-8").splitlines()]
    return {parse_custom_id(line["custom_id"])[3]: line["body"]["input"] for line in lines}


def exported(workspace: Path, target: Path) -> list[dict]:
    done = batchgen(workspace, "export", NAME, "-o", str(target), check=True)
    assert f"Wrote {len(target.read_text(encoding='utf-8').splitlines())} examples to {target}" in done.stdout
    return [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]


def ledger_rows(workspace: Path, sql: str) -> list[dict]:
    with Ledger.open(workspace / "ledger.db") as ledger:
        return ledger.rows(sql)


def assert_billed_exactly(workspace: Path) -> int:
    """Every result's cost is its input tokens at batch price, the batches and the job add up to the same sum, and
    nothing is billed for output; the billed input tokens."""
    results = ledger_rows(workspace, "SELECT prompt_tokens, completion_tokens, cost_usd, source FROM results")
    tokens = sum(r["prompt_tokens"] for r in results)
    assert all(Decimal(r["cost_usd"]) == r["prompt_tokens"] * TOKEN_PRICE for r in results)
    assert all(r["completion_tokens"] == 0 for r in results)
    assert all(r["prompt_tokens"] == 0 for r in results if r["source"] != "output")  # a failed line costs nothing
    batches = ledger_rows(workspace, "SELECT actual_cost_usd FROM batches")
    assert sum(Decimal(b["actual_cost_usd"]) for b in batches) == tokens * TOKEN_PRICE
    summary = json.loads(batchgen(workspace, "show", NAME, "--json", check=True).stdout)
    assert Decimal(summary["spent_usd"]) == tokens * TOKEN_PRICE and summary["tokens"]["completion"] == 0
    assert batchgen(workspace, "ledger", "check").returncode == 0
    return tokens


def assert_vectors(lines: list[dict], inputs: dict[int, str], size: int) -> None:
    """One line per planned input, in variant order, each with its own text, a vector of `size` finite numbers,
    and the provenance chat exports carry."""
    assert len(lines) == len(inputs)
    for index, line in enumerate(lines):
        provenance = line.pop("_provenance")
        assert list(line) == ["input", "embedding"]
        assert parse_custom_id(provenance["custom_id"])[3] == index and line["input"] == inputs[index]
        assert len(line["embedding"]) == size and all(math.isfinite(v) for v in line["embedding"])
        assert provenance["job"] == NAME and provenance["stage"] == "main" and provenance["position"] == 0
        assert provenance["model"] == "text-embedding-3-small" and provenance["batch_id"].startswith("batch_")
        assert set(provenance["cell"]) == {"operation", "style", "subject"} and provenance["content_hash"]
        assert provenance["attempt"] == parse_custom_id(provenance["custom_id"])[4]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """`batchgen run jobs/task_api_embeddings` to its end, with one line in ten answered 429 or 500."""
    workspace = fresh_workspace(tmp_path_factory.mktemp("run"), config(error_rate=0.1, seed=2))
    return workspace, batchgen(workspace, "run", str(EMBED_JOB), "--quiet")


def test_an_embeddings_job_reaches_its_target_paying_each_vector_once(finished, tmp_path):
    workspace, done = finished
    assert done.returncode == 0, done.stderr
    assert f"Job {NAME}: done" in done.stdout and "Valid: 200/200" in done.stdout

    lines = exported(workspace, tmp_path / "vectors.jsonl")
    assert_vectors(lines, planned_inputs(EMBED_JOB, tmp_path), 512)
    default = workspace / "datasets" / f"{NAME}.embeddings.jsonl"  # what run wrote: the same lines
    assert default.read_text(encoding="utf-8") == (tmp_path / "vectors.jsonl").read_text(encoding="utf-8")

    requests = ledger_rows(workspace, "SELECT r.status, s.source, s.status_code FROM requests r "
                                      "JOIN results s USING (custom_id)")
    retried = [r for r in requests if r["status"] == "retried"]
    assert retried, "the seed gives some lines a 429 or 500"
    assert all(r["source"] == "error" and r["status_code"] in (429, 500) for r in retried)
    assert sorted({r["status"] for r in requests}) == ["retried", "succeeded"]
    assert sum(r["source"] == "output" for r in requests) == 200  # no valid answer was asked for again
    assert assert_billed_exactly(workspace) == plan_job(load_spec(EMBED_JOB)).input_tokens == 1870


def test_a_chat_format_is_refused_for_an_embeddings_dataset(finished, tmp_path):
    workspace, _ = finished
    target = tmp_path / "chat.jsonl"
    refused = batchgen(workspace, "export", NAME, "--format", "sharegpt", "-o", str(target))
    assert refused.returncode == 1 and not target.exists()
    assert refused.stderr.strip().splitlines() == [
        f"Error: Job '{NAME}' is an embeddings job: its dataset has one format, embeddings (input, embedding and "
        "provenance on each line), not sharegpt; leave --format out"]
    assert refused.stdout == ""


def test_rejected_vectors_are_asked_for_again_and_valid_ones_never(tmp_path):
    job = tmp_path / "floats"
    shutil.copytree(EMBED_JOB, job)
    toml = (job / "job.toml").read_text(encoding="utf-8")
    head, _, rest = toml.partition("[embeddings]")
    head = head.replace("target = 200", "target = 80")  # the first 80 combinations: floats are four times bigger
    (job / "job.toml").write_text(head + "[axes]" + rest.partition("[axes]")[2], encoding="utf-8")
    workspace = fresh_workspace(tmp_path, config(malformed_rate=0.2, seed=5))
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode == 0, done.stderr

    summary = json.loads(batchgen(workspace, "show", NAME, "--json", check=True).stdout)
    reasons = summary["quality"]["reasons"]
    assert set(reasons) == {"Wrong embedding size", "Embedding value is not a number"}, reasons
    assert summary["quality"]["valid"] == 80
    invalid = ledger_rows(workspace, "SELECT r.status, e.category, e.reason FROM requests r "
                                     "JOIN examples e USING (custom_id) WHERE e.valid = 0")
    assert invalid and all(r["status"] == "retried" for r in invalid)
    assert {r["reason"].split(": ")[1] for r in invalid if r["category"] == "embedding_size"} == {
        "1152 numbers, expected 1536"}  # a quarter cut off the model's 1536 (no dimensions asked)
    valid = ledger_rows(workspace, "SELECT r.status FROM requests r JOIN examples e USING (custom_id) "
                                   "WHERE e.valid = 1")
    assert len(valid) == 80 and {r["status"] for r in valid} == {"succeeded"}

    assert_vectors(exported(workspace, tmp_path / "vectors.jsonl"), planned_inputs(job, tmp_path), 1536)
    # a rejected answer was embedded all the same, so it is billed: the plan's tokens plus those of the rejected
    planned = plan_job(load_spec(job)).input_tokens
    rejected = ledger_rows(workspace, "SELECT sum(s.prompt_tokens) AS n FROM results s JOIN examples e "
                                      "USING (custom_id) WHERE e.valid = 0")[0]["n"]
    assert assert_billed_exactly(workspace) == planned + rejected


def test_a_text_embedded_twice_counts_once_and_is_not_paid_for_again(tmp_path):
    job = tmp_path / "repeats"
    shutil.copytree(ROOT / "tests" / "fixtures" / "jobs" / "embed", job)
    toml = (job / "job.toml").read_text(encoding="utf-8")
    (job / "job.toml").write_text(toml.replace("target = 6", "target = 8"), encoding="utf-8")  # 6 texts, cycled
    workspace = fresh_workspace(tmp_path)
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode == 3, done.stderr
    assert "Valid: 6/8" in done.stdout and "Invalid reasons: {'Duplicate': 2}" in done.stdout
    assert ("Short: stage main has 6 of its 8 examples (every input has its answer; the others were duplicates "
            "or refused)") in done.stdout
    assert [r["status"] for r in ledger_rows(workspace, "SELECT status FROM requests")] == ["succeeded"] * 8
    dataset = (workspace / "datasets" / "embed.embeddings.jsonl").read_text(encoding="utf-8").splitlines()
    assert len({json.loads(line)["input"] for line in dataset}) == len(dataset) == 6
