"""Embeddings jobs in the recipe: one text and one vector a request, the options a request sends, the sizes it
must come back in, the chat settings it refuses, and its price in the plan."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.cli import cli
from batchgen.ledger.workspace import Workspace
from batchgen.recipe.compile import compile_stage, read_manifest
from batchgen.recipe.embeddings import dimensions_problem, vector_size
from batchgen.recipe.loader import load_spec
from batchgen.recipe.plan import plan_job
from batchgen.recipe.tokens import count_text
from batchgen.recipe.variants import request_count

ROOT = Path(__file__).resolve().parents[2]
EMBED_JOB = ROOT / "jobs" / "task_api_embeddings"
TOKEN_PRICE = Decimal("0.01") / 1_000_000  # text-embedding-3-small at batch price, USD per token


def job_with(tmp_path: Path, old: str = "", new: str = "", append: str = "") -> Path:
    """A copy of the shipped embeddings job with one job.toml edit."""
    job = tmp_path / "job"
    shutil.copytree(EMBED_JOB, job)
    toml = (job / "job.toml").read_text(encoding="utf-8")
    assert old in toml
    (job / "job.toml").write_text(toml.replace(old, new, 1) + append, encoding="utf-8")
    return job


def plan_error(job: Path) -> str:
    result = CliRunner().invoke(cli, ["plan", str(job)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output
    return lines[0]


def test_an_embeddings_request_embeds_one_text_and_asks_for_no_more_than_the_target():
    spec = load_spec(EMBED_JOB)
    stage = spec.stage()
    assert (spec.examples_per_request, spec.overgeneration, spec.prompt.seeds_per_request) == (1, 1, 0)
    assert stage.examples_per_request == 1 and stage.max_tokens == 0
    assert request_count(spec, stage) == spec.target == 200
    assert spec.dataset_format == "embeddings"


def test_the_request_body_carries_the_jobs_dimensions_and_encoding(tmp_path: Path):
    spec = load_spec(EMBED_JOB)
    result = compile_stage(spec, shards_dir=Workspace(tmp_path).shards_dir)
    lines = [json.loads(line) for line in Path(result.shards[0].path).read_text(encoding="utf-8").splitlines()]
    assert lines[0]["url"] == "/v1/embeddings"
    assert lines[0]["body"] == {"model": "text-embedding-3-small",
                                "input": "Please create the task concerning the quarterly report.",
                                "dimensions": 512, "encoding_format": "base64"}
    assert len({line["body"]["input"] for line in lines}) == 200  # every combination once: no text twice
    manifest = list(read_manifest(result.shards[0].manifest_path))
    assert {row["max_tokens"] for row in manifest} == {0}
    assert [row["input_tokens"] for row in manifest] == [count_text(line["body"]["input"], spec.model)
                                                         for line in lines]


def test_the_plan_prices_input_tokens_only_at_batch_price():
    plan = plan_job(load_spec(EMBED_JOB))
    cost = plan.cost
    assert plan.input_tokens == 1870 and plan.expected_output_tokens == plan.worst_output_tokens == 0
    assert cost.batch_expected == cost.batch_worst == plan.input_tokens * TOKEN_PRICE == Decimal("0.0000187")
    assert cost.standard_expected == 2 * cost.batch_expected
    assert plan.verdict == "within"


@pytest.mark.parametrize(("model", "dimensions", "size"), [
    ("text-embedding-3-small", None, 1536), ("text-embedding-3-large", None, 3072),
    ("text-embedding-ada-002", None, 1536), ("text-embedding-3-large", 256, 256), ("nomic-embed-text", None, None),
])
def test_vector_sizes(model, dimensions, size):
    assert vector_size(model, dimensions) == size


def test_dimensions_each_model_takes():
    assert dimensions_problem("text-embedding-3-small", 1536) is None
    assert dimensions_problem("text-embedding-3-large", 3072) is None
    assert "at most 1536" in dimensions_problem("text-embedding-3-small", 2000)
    assert "does not take dimensions" in dimensions_problem("text-embedding-ada-002", 1536)
    assert dimensions_problem("nomic-embed-text", 768) is None  # a model batchgen does not know: its server decides


@pytest.mark.parametrize(("edit", "expected"), [
    (("", "", "\n[validate]\nresponse_patterns = [\"Created\"]\n"), "validate.response_patterns applies to chat"),
    (('template = "request.j2"', 'template = "request.j2"\ntemperature = 0.5'), "prompt.temperature applies to chat"),
    (('template = "request.j2"', 'template = "request.j2"\nsystem = "Be brief."'), "prompt.system applies to chat"),
    (("budget_usd = 0.01", "budget_usd = 0.01\nexamples_per_request = 10"), "examples_per_request must be 1"),
    (("dimensions = 512", "dimensions = 2000"), "text-embedding-3-small returns at most 1536 numbers"),
    (('model = "text-embedding-3-small"', 'model = "text-embedding-ada-002"'), "does not take dimensions"),
    (("dimensions = 512", "dimensions = 0"), "embeddings.dimensions"),
    (('encoding_format = "base64"', 'encoding_format = "int8"'), "embeddings.encoding_format"),
])
def test_settings_an_embeddings_request_cannot_use_are_one_error_line(tmp_path, edit, expected):
    line = plan_error(job_with(tmp_path, *edit))
    assert expected in line and "job.toml" in line, line


def test_a_chat_job_refuses_embeddings_options(tmp_path):
    job = tmp_path / "chat"
    shutil.copytree(ROOT / "jobs" / "task_api", job)
    with open(job / "job.toml", "a", encoding="utf-8") as handle:
        handle.write("\n[embeddings]\ndimensions = 256\n")
    assert '[embeddings] applies to endpoint = "/v1/embeddings" only' in plan_error(job)


def test_options_change_the_spec_hash_and_their_absence_keeps_it(tmp_path):
    base = load_spec(EMBED_JOB).spec_hash
    other = load_spec(job_with(tmp_path, "dimensions = 512", "dimensions = 256")).spec_hash
    assert other != base
    assert load_spec(ROOT / "tests" / "fixtures" / "jobs" / "embed").spec_hash.startswith("09fdb6a8")  # as ever
