"""Prompt caching in the simulate executor: cached tokens in steps of 128 from 1,024, per model, within the TTL,
decided in input order within a batch; switched off by config."""

from __future__ import annotations

import pytest
from emulator_fixtures import create, rows, running, upload, wait

from batchgen.emulator import ConfigError, EmulatorConfig
from batchgen.recipe.tokens import count_messages

MODEL = "gpt-4o-mini"


def rules(n: int) -> str:
    return " ".join(f"Rule {i}: keep answers short and precise." for i in range(n))


def unique(i: int, words: int = 6) -> str:
    return " ".join(f"topic{i}x{j}" for j in range(words))


def shared_prefix(system: str) -> int:
    """Tokens two prompts [system, user] share at least: the system message and the next message's framing and
    role (3 + 1), as count_messages counts them (its 3 priming tokens stand for the next message's framing)."""
    return count_messages([{"role": "system", "content": system}], MODEL) + 1


def step(tokens: int) -> int:
    return 0 if tokens < 1024 else 1024 + (tokens - 1024) // 128 * 128


def line(i: int, system: str, user: str, model: str = MODEL) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "system", "content": system},
                                                   {"role": "user", "content": user}]}}


def cached_by_line(emu, batch) -> dict[int, int]:
    return {int(r["custom_id"].split("-")[1]): r["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]
            for r in rows(emu.client, batch.output_file_id)}


def sync(emu, system: str, user: str, model: str = MODEL) -> int:
    answer = emu.client.chat.completions.create(model=model, messages=[{"role": "system", "content": system},
                                                                       {"role": "user", "content": user}])
    return answer.usage.prompt_tokens_details.cached_tokens


def test_lines_sharing_a_long_system_prompt_hit_after_the_first_in_input_order(tmp_path):
    system = rules(145)
    shared = shared_prefix(system)
    assert 1408 < shared < 1536 - 8  # so the step is 1408 whatever the users' messages share
    with running(tmp_path / "s", time_scale=0) as emu:
        batch = wait(emu, create(emu.client, upload(emu.client, [line(i, system, unique(i)) for i in range(8)]).id).id)
        cached = cached_by_line(emu, batch)
        assert cached == {0: 0, **{i: 1408 for i in range(1, 8)}}  # rows come shuffled; input line 0 is the miss
        assert batch.usage.input_tokens_details.cached_tokens == 7 * 1408
        prompts = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in rows(emu.client, batch.output_file_id))
        assert batch.usage.input_tokens == prompts


def test_a_shared_prefix_under_1024_tokens_is_not_cached(tmp_path):
    system = rules(85)
    assert shared_prefix(system) < 1000
    with running(tmp_path / "s", time_scale=0) as emu:
        lines = [line(i, system, unique(i, 150)) for i in range(4)]
        batch = wait(emu, create(emu.client, upload(emu.client, lines).id).id)
        answered = rows(emu.client, batch.output_file_id)
        assert all(r["response"]["body"]["usage"]["prompt_tokens"] > 1100 for r in answered)
        assert set(cached_by_line(emu, batch).values()) == {0}
        assert batch.usage.input_tokens_details.cached_tokens == 0


def test_synchronous_calls_hit_per_model_within_the_ttl(tmp_path):
    system = rules(145)
    with running(tmp_path / "s", time_scale=0, prompt_cache_ttl_seconds=300) as emu:
        assert sync(emu, system, "first") == 0
        assert sync(emu, system, "second") == 1408
        assert sync(emu, system, "third", model="gpt-4.1-nano") == 0  # another model has its own cache
        emu.control.advance(200)
        assert sync(emu, system, "fourth") == 1408  # a hit refreshes the prefix
        emu.control.advance(301)
        assert sync(emu, system, "fifth") == 0  # expired
        assert sync(emu, system, "sixth") == 1408


def test_a_batch_hits_what_an_earlier_batch_left_within_the_ttl(tmp_path):
    system = rules(145)
    with running(tmp_path / "s", time_scale=0) as emu:
        first = wait(emu, create(emu.client, upload(emu.client, [line(0, system, "a")]).id).id)
        assert cached_by_line(emu, first) == {0: 0}
        second = wait(emu, create(emu.client, upload(emu.client, [line(0, system, "b")]).id).id)
        assert cached_by_line(emu, second) == {0: 1408}
        emu.control.advance(301)
        third = wait(emu, create(emu.client, upload(emu.client, [line(0, system, "c")]).id).id)
        assert cached_by_line(emu, third) == {0: 0}


def test_switched_off_nothing_is_cached(tmp_path):
    system = rules(145)
    with running(tmp_path / "s", time_scale=0, prompt_caching=False) as emu:
        batch = wait(emu, create(emu.client, upload(emu.client, [line(i, system, unique(i)) for i in range(3)]).id).id)
        assert set(cached_by_line(emu, batch).values()) == {0}
        assert batch.usage.input_tokens_details.cached_tokens == 0
        assert sync(emu, system, "x") == 0 and sync(emu, system, "y") == 0
        emu.control.configure(prompt_caching=True)
        assert sync(emu, system, "z") == 0 and sync(emu, system, "w") == 1408


def test_a_restart_in_the_middle_of_a_batch_decides_the_same(tmp_path):
    system = rules(145)
    lines = [line(i, system, unique(i)) for i in range(300)]  # two blocks of lines
    with running(tmp_path / "s", time_scale=0, line_seconds=1.0) as emu:
        batch = create(emu.client, upload(emu.client, lines).id)
        emu.control.advance(0.5)
        emu.control.advance(270)  # the first block and part of the second
        assert 256 < emu.control.batch(batch.id)["request_counts"]["completed"] < 300
    with running(tmp_path / "s", time_scale=0, line_seconds=1.0) as emu:
        emu.control.advance(100)
        done = wait(emu, batch.id)
        cached = cached_by_line(emu, done)
        assert len(cached) == 300 and cached[0] == 0 and set(cached[i] for i in range(1, 300)) == {1408}


def test_the_config_keys_are_checked():
    config = EmulatorConfig()
    assert config.prompt_caching is True and config.prompt_cache_ttl_seconds == 300
    assert config.updated({"prompt_caching": False, "prompt_cache_ttl_seconds": 3600}).prompt_cache_ttl_seconds == 3600
    with pytest.raises(ConfigError, match="prompt_caching must be true or false"):
        config.updated({"prompt_caching": "no"})
    with pytest.raises(ConfigError, match="prompt_cache_ttl_seconds"):
        config.updated({"prompt_cache_ttl_seconds": -1})
