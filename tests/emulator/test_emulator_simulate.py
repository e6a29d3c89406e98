"""The simulate executor through the SDK's synchronous chat and embeddings calls (the same executor serves batch
lines): schema-valid examples built from the prompt's seeds, counts, variation, usage, truncation, embeddings."""

from __future__ import annotations

import base64
import json
import math
import random
import struct

import jsonschema
import pytest
from emulator_fixtures import running

from batchgen.emulator.tokencount import TokenCounter
from batchgen.recipe.formats import response_format, response_schema
from batchgen.recipe.tokens import count_messages, count_text

SEEDS = [
    {"conversations": [{"from": "human", "value": "Create a task to review the quarterly budget by Friday"},
                       {"from": "gpt", "value": "Created task: 'Review quarterly budget' | Priority: medium | "
                                               "Due: 2025-01-17 (Friday)"}]},
    {"conversations": [{"from": "human", "value": "Add a high priority task for the team meeting tomorrow"},
                       {"from": "gpt", "value": "Created task: 'Team meeting' | Priority: high | Due: 2025-01-16 "
                                               "(tomorrow)"}]},
    {"conversations": [{"from": "human", "value": "Change the budget review to high priority"},
                       {"from": "gpt", "value": "Updated task: 'Review quarterly budget' | Priority: changed to "
                                               "high"}]},
    {"conversations": [{"from": "human", "value": "I finished the report"},
                       {"from": "gpt", "value": "Completed task: 'Write report'"}]},
    {"conversations": [{"from": "human", "value": "Remove the dentist appointment task"},
                       {"from": "gpt", "value": "Deleted task: 'Dentist appointment'"}]},
    {"conversations": [{"from": "human", "value": "Delete the gym task"},
                       {"from": "gpt", "value": "Error: Task 'gym' not found"}]},
    {"conversations": [{"from": "human", "value": "What's on my list for today?"},
                       {"from": "gpt", "value": "3 tasks found: 'Team meeting', 'Call mom', 'Review budget'"}]},
]
PREFIXES = ("Created task:", "Updated task:", "Completed task:", "Deleted task:", "Error:")
MODEL = "gpt-4o-mini"


def _prompt(count: int, seeds: list = SEEDS) -> list[dict]:
    text = ("You are generating training examples for a Task API assistant.\n\n## Examples\n"
            + json.dumps(seeds, indent=2) + f"\n\n## Your Task\nGenerate {count} NEW examples that cover "
            "different operations. Do NOT repeat the seed examples.")
    return [{"role": "system", "content": "You generate training data in JSON format."},
            {"role": "user", "content": text}]


def _assistant_ok(text: str) -> bool:
    return text.startswith(PREFIXES) or "tasks found" in text


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with running(tmp_path_factory.mktemp("sim") / "emu", seed=11) as emu:
        yield emu


@pytest.mark.parametrize("fmt", ["sharegpt", "chatml", "alpaca"])
def test_json_schema_answers_are_valid_varied_seed_examples(emu, fmt):
    messages = _prompt(10)
    seed_texts = {t["value"] for s in SEEDS for t in s["conversations"]}
    answer = emu.client.chat.completions.create(model=MODEL, messages=messages, response_format=response_format(fmt))
    content = answer.choices[0].message.content
    data = json.loads(content)
    jsonschema.validate(data, response_schema(fmt))
    examples = data["examples"]
    assert len(examples) == 10
    assert len({json.dumps(e, sort_keys=True) for e in examples}) == 10
    for example in examples:
        if fmt == "sharegpt":
            user, bot = example["conversations"][0]["value"], example["conversations"][1]["value"]
        elif fmt == "chatml":
            user, bot = example["messages"][0]["content"], example["messages"][1]["content"]
        else:
            user, bot = example["instruction"], example["output"]
        assert user not in seed_texts and user.strip()
        assert _assistant_ok(bot), bot
    schema = json.dumps(response_format(fmt)["json_schema"], separators=(",", ":"), ensure_ascii=False)
    assert answer.usage.prompt_tokens == count_messages(messages, MODEL) + count_text(schema, MODEL)
    assert answer.usage.completion_tokens == count_text(content, MODEL)
    assert answer.choices[0].finish_reason == "stop"


def test_many_answers_rarely_repeat_an_example(emu):
    seen, total = set(), 0
    for i in range(30):
        messages = _prompt(10)
        messages[1]["content"] += f"\nVariant {i}: focus on style {i % 4}."
        data = json.loads(emu.client.chat.completions.create(
            model=MODEL, messages=messages, response_format=response_format("sharegpt")).choices[0].message.content)
        for example in data["examples"]:
            total += 1
            seen.add(example["conversations"][0]["value"])
    assert total == 300 and len(seen) >= 285


def test_requested_count_default_and_cap(emu):
    def count(messages):
        answer = emu.client.chat.completions.create(model=MODEL, messages=messages,
                                                    response_format=response_format("sharegpt"))
        return len(json.loads(answer.choices[0].message.content)["examples"])

    assert count(_prompt(3)) == 3
    assert count(_prompt(500)) == 50
    plain = _prompt(1)
    plain[1]["content"] = plain[1]["content"].replace("Generate 1 NEW examples", "Make more like these")
    assert count(plain) == 5


def test_json_object_mode_and_plain_text(emu):
    answer = emu.client.chat.completions.create(model=MODEL, messages=_prompt(4),
                                                response_format={"type": "json_object"})
    data = json.loads(answer.choices[0].message.content)
    assert len(data["examples"]) == 4 and "conversations" in data["examples"][0]
    text = emu.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me about "
                                                                      "the weather in spring please"}])
    assert text.choices[0].message.content and text.choices[0].message.role == "assistant"


def test_schema_without_seeds_gets_generic_valid_content(emu):
    schema = {"type": "object", "additionalProperties": False, "required": ["title", "tags", "score", "meta"],
              "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                             "score": {"type": "integer"}, "ok": {"type": "boolean"},
                             "kind": {"type": "string", "enum": ["a", "b"]},
                             "meta": {"type": "object", "additionalProperties": False, "required": ["n"],
                                      "properties": {"n": {"type": "number"}}}}}
    rf = {"type": "json_schema", "json_schema": {"name": "thing", "strict": True, "schema": schema}}
    answer = emu.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Describe it"}],
                                                response_format=rf)
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)


def test_max_tokens_cuts_the_answer(emu):
    answer = emu.client.chat.completions.create(model=MODEL, messages=_prompt(10), max_tokens=25,
                                                response_format=response_format("sharegpt"))
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 25
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.choices[0].message.content)


def test_alpaca_seeds_and_a_multi_turn_seed(emu):
    alpaca = [{"instruction": "Create a task to call mom on Sunday", "input": "",
               "output": "Created task: 'Call mom' | Priority: medium | Due: 2025-01-19 (Sunday)"}]
    multi = [{"messages": [{"role": "system", "content": "You manage tasks."},
                           {"role": "user", "content": "Add a task to pay rent"},
                           {"role": "assistant", "content": "Created task: 'Pay rent' | Priority: medium | Due: not set"},
                           {"role": "user", "content": "Make it high priority"},
                           {"role": "assistant", "content": "Updated task: 'Pay rent' | Priority: changed to high"}]}]
    for seeds, fmt in ((alpaca, "alpaca"), (multi, "chatml")):
        answer = emu.client.chat.completions.create(model=MODEL, messages=_prompt(6, seeds),
                                                    response_format=response_format(fmt))
        data = json.loads(answer.choices[0].message.content)
        jsonschema.validate(data, response_schema(fmt))
        assert len(data["examples"]) == 6
    assert data["examples"][0]["messages"][0] == multi[0]["messages"][0]
    assert [m["role"] for m in data["examples"][0]["messages"]] == [m["role"] for m in multi[0]["messages"]]


def test_malformed_output_fault(tmp_path):
    with running(tmp_path / "emu", malformed_rate=1.0, seed=5) as emu:
        broken = 0
        for i in range(12):
            messages = _prompt(3)
            messages[1]["content"] += f" ({i})"
            content = emu.client.chat.completions.create(
                model=MODEL, messages=messages, response_format=response_format("sharegpt")).choices[0].message.content
            try:
                turns = [t for e in json.loads(content)["examples"] for t in e["conversations"]]
            except (json.JSONDecodeError, KeyError):
                broken += 1
                continue
            wrong = turns[0]["from"] != "human" or any(not t["value"] for t in turns)
            broken += wrong
        assert broken == 12


def test_malformed_embeddings_are_cut_short_or_hold_a_nan(tmp_path):
    kinds = set()
    with running(tmp_path / "emu", malformed_rate=1.0, seed=5) as emu:
        for i in range(16):
            encoding = "base64" if i % 2 else "float"
            raw = emu.client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=f"text {i}",
                                                                 dimensions=64, encoding_format=encoding)
            body = raw.http_response.json()
            vector = body["data"][0]["embedding"]
            if encoding == "base64":
                packed = base64.b64decode(vector)
                vector = list(struct.unpack(f"<{len(packed) // 4}f", packed))
            assert body["usage"]["prompt_tokens"] == count_text(f"text {i}", "text-embedding-3-small")
            if len(vector) == 48:
                kinds.add("short")
            else:
                assert len(vector) == 64 and sum(v is None or math.isnan(v) for v in vector) == 1
                kinds.add(f"nan in {encoding}")
    assert kinds == {"short", "nan in float", "nan in base64"}


def test_embeddings_are_deterministic_unit_vectors(emu):
    first = emu.client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"],
                                         encoding_format="float")
    assert [len(d.embedding) for d in first.data] == [1536, 1536]
    assert math.isclose(sum(v * v for v in first.data[0].embedding), 1.0, rel_tol=1e-9)
    again = emu.client.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="float")
    assert again.data[0].embedding == first.data[0].embedding
    assert first.usage.prompt_tokens == count_text("hello", "text-embedding-3-small") + count_text("world",
                                                                                                    "text-embedding-3-small")
    raw = emu.client.embeddings.with_raw_response.create(model="text-embedding-3-large", input="hello",
                                                         dimensions=256, encoding_format="base64")
    packed = base64.b64decode(raw.http_response.json()["data"][0]["embedding"])
    values = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert len(values) == 256 and math.isclose(sum(v * v for v in values), 1.0, rel_tol=1e-5)
    default = emu.client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(default.data[0].embedding) == 1536


def test_unknown_model_and_streaming_are_refused(emu):
    import openai

    with pytest.raises(openai.NotFoundError):
        emu.client.chat.completions.create(model="gpt-unknown", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        emu.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)


def test_cached_token_counts_equal_the_reference():
    counter = TokenCounter()
    rng = random.Random(4)
    alphabet = ["a", "Hello", " ", "  ", "\n", "\n\n", "\r\n", "/", "}", "{", '"', "'s", "1", "123", "é", "中",
                "\t", ".", ":", "-", "\n/", "x/y", "\n ", "\n\t\n"]
    for model in ("gpt-4o-mini", "gpt-4", "gpt-5"):
        for _ in range(300):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(100, 900)))
            messages = [{"role": "system", "content": text}, {"role": "user", "content": text[::-1], "name": "bo"},
                        {"role": "user", "content": [{"type": "text", "text": text[:50]}]}]
            assert counter.text(text, model) == count_text(text, model)
            assert counter.messages(messages, model) == count_messages(messages, model)
