"""The simulate executor keeps its answers within a json_schema's minItems/maxItems, as a grammar-constrained
provider would: no more examples than the schema allows even when the prompt asks for more, and conversations
with as many turns as the schema asks even when the seeds have fewer. Answers are checked with jsonschema."""

from __future__ import annotations

import json

import jsonschema
import pytest
from emulator_fixtures import running

from batchgen.recipe.formats import response_format

SEEDS = [
    {"conversations": [{"from": "human", "value": "Create a task to water the plants"},
                       {"from": "gpt", "value": "Created task: 'Water the plants'"}]},
    {"conversations": [{"from": "human", "value": "Delete the gym task"},
                       {"from": "gpt", "value": "Error: Task 'gym' not found"}]},
]


def _messages(count: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "Examples:\n" + json.dumps(SEEDS, indent=2)
             + f"\n\nGenerate {count} NEW examples like these."}]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with running(tmp_path_factory.mktemp("bounds") / "emu", seed=5) as emu:
        yield emu


@pytest.mark.parametrize(("asked", "allowed", "turns"), [(8, 3, (2, 10)), (2, 2, (4, 6)), (5, 5, (2, 2))])
def test_answers_stay_within_the_schema_bounds(emu, asked: int, allowed: int, turns: tuple[int, int]) -> None:
    rf = response_format("sharegpt", examples=allowed, turns=turns)
    validator = jsonschema.Draft202012Validator(rf["json_schema"]["schema"])
    for _ in range(3):
        answer = emu.client.chat.completions.create(model="gpt-4o-mini", messages=_messages(asked),
                                                    response_format=rf)
        data = json.loads(answer.choices[0].message.content)
        validator.validate(data)  # raises with the reason when a bound is broken
        assert 1 <= len(data["examples"]) <= allowed
        for example in data["examples"]:
            assert turns[0] <= len(example["conversations"]) <= turns[1] + 1


def test_without_bounds_the_prompt_count_is_kept(emu) -> None:
    answer = emu.client.chat.completions.create(model="gpt-4o-mini", messages=_messages(6),
                                                response_format=response_format("sharegpt"))
    assert len(json.loads(answer.choices[0].message.content)["examples"]) == 6


def test_seeds_too_short_for_the_schema_are_stretched_not_replaced(emu) -> None:
    """Two-turn seeds under a schema asking for 4 to 7 turns: the answers repeat the seeds' exchange (roles still
    alternating) rather than fall back to made-up turns."""
    rf = response_format("sharegpt", examples=2, turns=(4, 6))
    answer = emu.client.chat.completions.create(model="gpt-4o-mini", messages=_messages(2), response_format=rf)
    for example in json.loads(answer.choices[0].message.content)["examples"]:
        turns = example["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) >= 4
        assert any(seed["conversations"][1]["value"] == turns[1]["value"] for seed in SEEDS)
