"""The json_schema a generation request sends: it bounds the examples to what the request asks for and each
conversation's turns to the job's [validate] bounds, stays inside OpenAI's strict subset, and leaves the bounds out
for a fine-tuned model (OpenAI refuses minItems/maxItems there). Answers are checked with jsonschema and with the
emulator's own schema check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from batchgen.emulator.schema_fill import conforms
from batchgen.ledger.workspace import Workspace
from batchgen.recipe.compile import compile_stage
from batchgen.recipe.formats import response_schema
from batchgen.recipe.loader import load_spec
from batchgen.recipe.render import request_response_format

ROOT = Path(__file__).resolve().parents[2]
TASK_API = ROOT / "jobs" / "task_api"
MINI = ROOT / "tests" / "fixtures" / "jobs" / "mini"
# Every keyword the schema may use: all within OpenAI's "Supported schemas" for strict mode.
STRICT_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "enum", "minItems", "maxItems"}


def _job(tmp_path: Path, source: Path, edit: dict[str, str], extra: str = "") -> Path:
    """A copy of a job with some job.toml lines replaced (`old line` -> `new line`) and text appended."""
    job = tmp_path / source.name
    shutil.copytree(source, job)
    text = (job / "job.toml").read_text()
    for old, new in edit.items():
        assert old in text, old
        text = text.replace(old, new)
    (job / "job.toml").write_text(text + extra)
    return job


def _first_request_schema(tmp_path: Path, job: Path, stage: str | None = None) -> dict[str, Any]:
    """The schema of the first request line compiled for the job (or one of its stages)."""
    spec = load_spec(job)
    result = compile_stage(spec, stage, shards_dir=Workspace(tmp_path / "ws").shards_dir)
    line = json.loads(Path(result.shards[0].path).read_text().splitlines()[0])
    return line["body"]["response_format"]["json_schema"]["schema"]


def _conversation(turns: int, system: bool = False) -> dict[str, Any]:
    body = [{"from": "human" if i % 2 == 0 else "gpt", "value": f"turn {i}"} for i in range(turns)]
    return {"conversations": ([{"from": "system", "value": "Be brief."}] if system else []) + body}


def _valid(answer: Any, schema: dict[str, Any]) -> bool:
    """Whether jsonschema and the emulator's check both accept the answer (they must agree)."""
    by_jsonschema = jsonschema.Draft202012Validator(schema).is_valid(answer)
    assert conforms(answer, schema) is by_jsonschema, answer
    return by_jsonschema


def test_the_task_api_request_bounds_examples_and_turns(tmp_path: Path) -> None:
    schema = _first_request_schema(tmp_path, TASK_API)  # 10 examples a request, 2 to 10 turns
    examples = schema["properties"]["examples"]
    assert (examples["minItems"], examples["maxItems"]) == (1, 10)
    turns = examples["items"]["properties"]["conversations"]
    assert (turns["minItems"], turns["maxItems"]) == (2, 11)  # a leading system turn is not counted


def test_answers_outside_the_bounds_are_refused(tmp_path: Path) -> None:
    schema = _first_request_schema(tmp_path, TASK_API)
    assert not _valid({"examples": []}, schema)
    assert not _valid({"examples": [_conversation(2)] * 11}, schema)
    assert not _valid({"examples": [_conversation(1)]}, schema)
    assert not _valid({"examples": [_conversation(11, system=True), _conversation(1)]}, schema)
    assert not _valid({"examples": [_conversation(12)]}, schema)
    assert _valid({"examples": [_conversation(2)]}, schema)
    assert _valid({"examples": [_conversation(10, system=True)] * 10}, schema)


def test_the_bounds_follow_the_job_and_each_stage(tmp_path: Path) -> None:
    job = _job(tmp_path, MINI, {}, '\n[validate]\nmin_turns = 4\nmax_turns = 6\n\n[[stages]]\nname = "main"\n\n'
                                   '[[stages]]\nname = "short"\nexamples_per_request = 2\n')
    main = _first_request_schema(tmp_path / "main", job, "main")["properties"]["examples"]
    short = _first_request_schema(tmp_path / "short", job, "short")["properties"]["examples"]
    assert (main["minItems"], main["maxItems"]) == (1, 3)  # the job's examples_per_request
    assert (short["minItems"], short["maxItems"]) == (1, 2)  # the stage's own
    for examples in (main, short):
        turns = examples["items"]["properties"]["conversations"]
        assert (turns["minItems"], turns["maxItems"]) == (4, 7)


@pytest.mark.parametrize("fmt", ["sharegpt", "chatml", "alpaca"])
def test_the_schema_stays_in_openai_strict_subset(fmt: str) -> None:
    schema = response_schema(fmt, 5, (2, 8))

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert set(node) <= STRICT_KEYWORDS, set(node) - STRICT_KEYWORDS
            if node.get("type") == "object":
                assert node["additionalProperties"] is False
                assert node["required"] == list(node["properties"])
            for sub in node.get("properties", {}).values():
                walk(sub)
            if "items" in node:
                walk(node["items"])

    walk(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    item = schema["properties"]["examples"]["items"]
    bounded = [key for key, sub in item["properties"].items() if "minItems" in sub]
    assert bounded == ({"sharegpt": ["conversations"], "chatml": ["messages"]}.get(fmt) or [])


def test_a_fine_tuned_model_gets_no_bounds(tmp_path: Path) -> None:
    model = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
    job = _job(tmp_path, MINI, {'model = "gpt-4o-mini"': f'model = "{model}"'})
    (job / "prices.toml").write_text(f'[models."{model}"]\ninput = "0.30"\noutput = "1.20"\nsource = "test"\n')
    rendered = json.dumps(request_response_format(load_spec(job)))
    assert "minItems" not in rendered and "maxItems" not in rendered
    assert '"strict": true' in rendered


def test_turn_bounds_shape_the_schema_but_keep_the_spec_hash(tmp_path: Path) -> None:
    """Validation rules may change while a job runs (see `JobSpec.spec_hash`); the turn bounds are validation rules
    that the schema repeats, so requests compiled after a change carry the new bounds under the same custom_ids."""
    before = load_spec(MINI)
    after = load_spec(_job(tmp_path, MINI, {}, "\n[validate]\nmax_turns = 4\n"))
    assert after.spec_hash == before.spec_hash

    def most_turns(spec: Any) -> int:
        schema = request_response_format(spec)["json_schema"]["schema"]
        return schema["properties"]["examples"]["items"]["properties"]["conversations"]["maxItems"]

    assert (most_turns(before), most_turns(after)) == (51, 5)
