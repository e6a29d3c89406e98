"""HTTP-level faults through the SDK: transient 429/500/503 with Retry-After, dropped connections, slow answers;
line faults that one seed makes the same in every run; and config loading from <state>/config.json, where a broken
file is one `Error:` line for `batchgen serve` and for a `batchgen run` on the embedded emulator."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from emulator_fixtures import chat_line, rows, run_lines, running
from workspaces import FAST, TASK_API, batchgen, dataset, fresh_workspace

from batchgen.emulator import ConfigError, EmulatorConfig, start_embedded
from batchgen.ledger import Ledger


def test_transient_errors_carry_retry_after(tmp_path):
    with running(tmp_path / "emu", http_error_rate=1.0, http_retry_after=0.01) as emu:
        statuses = set()
        for _ in range(12):
            with pytest.raises(openai.APIStatusError) as info:
                emu.client.batches.list()
            error = info.value
            statuses.add(error.status_code)
            assert error.response.headers["retry-after"] == "1"
            assert error.response.headers["retry-after-ms"] == "10"
            assert set(error.response.json()["error"]) == {"message", "type", "param", "code"}
        assert statuses == {429, 500, 503}
        assert emu.control.state()["config"]["http_error_rate"] == 1.0  # the control API is never faulted


def test_sdk_retries_through_transient_errors(tmp_path):
    with running(tmp_path / "emu", http_error_rate=0.4, http_retry_after=0.01, max_retries=8, seed=2) as emu:
        done = run_lines(emu, [chat_line(i) for i in range(3)])
        assert done.status == "completed" and len(rows(emu.client, done.output_file_id)) == 3


def test_dropped_connections_and_slow_answers(tmp_path):
    with running(tmp_path / "emu", drop_rate=1.0) as emu:
        with pytest.raises(openai.APIConnectionError):
            emu.client.batches.list()
        emu.control.configure(drop_rate=0.0, slow_rate=1.0, slow_seconds=0.3)
        began = time.monotonic()
        assert emu.client.batches.list().data == []
        assert time.monotonic() - began >= 0.3
        emu.control.configure(slow_rate=0.0)
        assert emu.client.batches.list().data == []


def test_control_rejects_bad_config(tmp_path):
    with running(tmp_path / "emu") as emu:
        with pytest.raises(Exception, match="400"):
            emu.control.configure(error_rate=2)
        with pytest.raises(Exception, match="unknown emulator config key"):
            emu.control.configure(nonsense=1)


def test_config_json_is_read_and_overrides_win(tmp_path):
    state = tmp_path / "emu"
    state.mkdir()
    (state / "config.json").write_text(json.dumps({"error_rate": 1.0, "line_seconds": 0, "validation_seconds": 0,
                                                   "finalizing_seconds": 0, "seed": 9}))
    config = EmulatorConfig.load(state, "embedded")
    assert (config.error_rate, config.seed, config.control) == (1.0, 9, True)
    assert EmulatorConfig.load(state, "serve", {"seed": 4, "error_rate": None}).seed == 4
    with start_embedded(state) as handle:
        client = openai.OpenAI(base_url=handle.base_url, api_key="k", max_retries=0)
        with client:
            file_id = client.files.create(file=("a.jsonl", json.dumps(chat_line(0)).encode()), purpose="batch").id
            batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            done = handle.control.wait_for(batch.id)
            assert done["status"] == "completed" and done["output_file_id"] is None
    (state / "config.json").write_text(json.dumps({"bogus": 1}))
    with pytest.raises(ConfigError):
        EmulatorConfig.load(state, "embedded")


def test_embedded_start_is_fast_and_defaults_finish_a_few_hundred_lines_quickly(tmp_path):
    began = time.monotonic()
    handle = start_embedded(tmp_path / "emu")
    assert time.monotonic() - began < 1.0
    client = openai.OpenAI(base_url=handle.base_url, api_key="k", max_retries=0)
    try:
        lines = "\n".join(json.dumps(chat_line(i)) for i in range(300)).encode()
        file_id = client.files.create(file=("a.jsonl", lines), purpose="batch").id
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        began = time.monotonic()
        done = handle.control.wait_for(batch.id, timeout=10)
        assert done["status"] == "completed" and time.monotonic() - began < 4.0
    finally:
        client.close()
        handle.stop()


def test_one_process_at_a_time_on_a_state_directory(tmp_path):
    from batchgen.emulator import Engine, StateInUse

    with start_embedded(tmp_path / "emu"):
        with pytest.raises(StateInUse):
            Engine(tmp_path / "emu", EmulatorConfig(), lock_timeout=0.1)
    Engine(tmp_path / "emu", EmulatorConfig(), lock_timeout=0.1).stop()


def _faults(workspace: Path) -> tuple[list[Any], list[Any]]:
    """Every line that got an error and every example rejected, with why, in a stable order."""
    with Ledger.open(workspace / "ledger.db") as ledger:
        failed = ledger.rows("SELECT custom_id, status_code, error_code FROM results WHERE source != 'output' "
                             "ORDER BY custom_id")
        rejected = ledger.rows("SELECT custom_id, position, reason FROM examples WHERE valid = 0 "
                               "ORDER BY custom_id, position")
    return [tuple(row.values()) for row in failed], [tuple(row.values()) for row in rejected]


def test_one_seed_gives_the_same_faults_and_the_same_dataset_in_every_run(tmp_path):
    """Faults are seeded by the seed, the batch's input bytes and the line's position, never by a random batch id:
    two fresh workspaces with one config end with the same dataset, and another seed faults other lines."""
    def config(seed: int) -> str:
        return json.dumps({**json.loads(FAST), "error_rate": 0.1, "malformed_rate": 0.2, "seed": seed})

    first, second, other = (fresh_workspace(tmp_path / name, config(seed))
                            for name, seed in (("first", 7), ("second", 7), ("other", 8)))
    for workspace in (first, second, other):
        batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    failed, rejected = _faults(first)
    assert failed and rejected  # both kinds of fault met, and retried
    assert _faults(second) == (failed, rejected)
    assert dataset(second) == dataset(first)
    other_failed, other_rejected = _faults(other)
    assert other_failed != failed and other_rejected != rejected


def test_every_config_key_has_a_rule():
    from batchgen.emulator.config import _RULES

    assert sorted(_RULES) == sorted(f.name for f in dataclasses.fields(EmulatorConfig))


@pytest.mark.parametrize(("changes", "message"), [
    ({"seed": True}, "seed must be a whole number, not true"),
    ({"seed": 1.5}, "seed must be a whole number, not 1.5"),
    ({"error_rate": "0.5"}, "error_rate must be a number from 0 to 1, not '0.5'"),
    ({"error_rate": 1.5}, "error_rate must be a number from 0 to 1, not 1.5"),
    ({"line_seconds": float("nan")}, "line_seconds must be a number of seconds (0 or more), not nan"),
    ({"max_lines": 0}, "max_lines must be a whole number of lines (1 or more), not 0"),
    ({"models": "gpt-4o-mini"}, "models must be an array of model names, not 'gpt-4o-mini'"),
    ({"queued_token_limits": {"gpt-4o-mini": -1}}, "queued_token_limits must be an object of model names to token "
                                                   "counts (whole numbers, 0 or more), not {'gpt-4o-mini': -1}"),
    ({"control": 1}, "control must be true or false, not 1"),
    ({"default_queued_token_limit": "many"}, "default_queued_token_limit must be a whole number of tokens "
                                             "(0 or more), or null, not 'many'"),
    ({"eror_rate": 0.1}, "unknown emulator config key 'eror_rate'; did you mean 'error_rate'?"),
])
def test_a_value_a_key_does_not_allow_says_what_it_allows(changes, message):
    with pytest.raises(ConfigError) as error:
        EmulatorConfig().updated(changes)
    assert str(error.value) == message


def test_whole_numbers_written_as_floats_are_accepted():
    config = EmulatorConfig().updated({"max_lines": 1e3, "seed": -3, "expire_after_fraction": None})
    assert (config.max_lines, config.seed, config.expire_after_fraction) == (1000, -3, None)


BROKEN_CONFIGS = {
    "bad_json": ('{"seed": 1,\n  "error_rate" 0.1}',
                 "not valid JSON at line 2, column 16: Expecting ':' delimiter"),
    "unknown_key": ('{"seed": 1, "error_rat": 0.1}', "unknown emulator config key 'error_rat'; did you mean "
                                                      "'error_rate'?"),
    "bad_value": ('{"error_rate": 2}', "error_rate must be a number from 0 to 1, not 2"),
}


def _assert_one_error_line(done: Any, expected: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [expected]


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_a_broken_config_json_stops_batchgen_serve_with_one_line(tmp_path, case):
    text, problem = BROKEN_CONFIGS[case]
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.json").write_text(text, encoding="utf-8")
    done = batchgen(fresh_workspace(tmp_path), "serve", "--state", str(state), "--port", "0")
    _assert_one_error_line(done, f"Error: {state / 'config.json'}: {problem}")
    assert not (state / "files").exists()  # stopped before the state was touched


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_a_broken_config_json_stops_batchgen_run_on_the_embedded_emulator_with_one_line(tmp_path, case):
    text, problem = BROKEN_CONFIGS[case]
    workspace = fresh_workspace(tmp_path, text)
    done = batchgen(workspace, "run", str(TASK_API))
    path = workspace / "emulator" / "config.json"
    _assert_one_error_line(done, f"Error: Cannot use the embedded emulator: {path}: {problem}")
    assert not (workspace / "emulator" / "files").exists()
