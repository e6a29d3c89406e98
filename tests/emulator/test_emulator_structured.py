"""Structured output through the upstream executor: the upstream is probed once for what it takes (json_schema,
json_object with a schema, plain json_object, nothing), and each json_schema line is sent in that form. The
upstreams are fake local model servers (tests/fake_models.py) behind an embedded emulator or `batchgen serve`."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from emulator_fixtures import chat_line, rows, run_lines, running
from fake_models import FakeModelServer
from loopback import free_port, serve

from batchgen.cli import cli
from batchgen.emulator import ConfigError, EmulatorConfig
from batchgen.emulator.upstream import instructed, structured_body
from batchgen.recipe.formats import response_format

FORMAT = response_format("sharegpt")
SCHEMA = FORMAT["json_schema"]["schema"]
PROBE_FORMS = {"json_schema": "json_schema", "json_object_schema": "json_object", "json_object": "json_object",
               "none": None}


def structured_line(i: int) -> dict[str, Any]:
    line = chat_line(i, content=f"Write 3 examples of a task assistant, number {i}.", response_format=FORMAT,
                     max_tokens=800)
    line["body"]["messages"].insert(0, {"role": "system", "content": "You generate training data in JSON format."})
    return line


def answered(tmp_path, server: FakeModelServer, lines: list[dict[str, Any]], **config: Any) -> list[dict[str, Any]]:
    """Run `lines` as one batch through an emulator forwarding to `server`; the output rows by custom_id order."""
    with running(tmp_path / "emu", executor="upstream", upstream_url=server.base_url, **config) as emu:
        batch = run_lines(emu, lines)
        assert batch.status == "completed"
        output = rows(emu.client, batch.output_file_id) + rows(emu.client, batch.error_file_id)
    return sorted(output, key=lambda row: int(row["custom_id"].split("-")[1]))


def contents(output: list[dict[str, Any]]) -> list[str]:
    assert all(row["response"]["status_code"] == 200 for row in output), output
    return [row["response"]["body"]["choices"][0]["message"]["content"] for row in output]


def test_llama_cpp_refuses_json_schema_so_lines_go_as_json_object_with_the_schema(tmp_path):
    with FakeModelServer("llama_cpp") as server:
        output = answered(tmp_path, server, [structured_line(i) for i in range(6)])
        formats, statuses = server.formats(), server.statuses
    # one probe refused (500, as llama-cpp-python answers json_schema), one taken; then the six lines
    assert statuses[:2] == [500, 200] and formats[0]["type"] == "json_schema"
    assert formats[1]["type"] == "json_object" and "schema" in formats[1]
    assert formats[2:] == [{"type": "json_object", "schema": SCHEMA}] * 6
    for text in contents(output):
        jsonschema.validate(json.loads(text), SCHEMA)  # the answer obeys the schema, in OpenAI's answer shape
    assert [row["response"]["body"]["object"] for row in output] == ["chat.completion"] * 6


def test_the_probe_is_made_once_per_start(tmp_path):
    with FakeModelServer("llama_cpp") as server:
        with running(tmp_path / "emu", executor="upstream", upstream_url=server.base_url) as emu:
            for first in (0, 10):
                assert run_lines(emu, [structured_line(first + i) for i in range(4)]).status == "completed"
        assert server.statuses.count(500) == 1 and len(server.bodies) == 2 + 8


def test_a_server_that_takes_json_schema_gets_the_lines_unchanged(tmp_path):
    with FakeModelServer("json_schema") as server:
        lines = [structured_line(i) for i in range(3)]
        output = answered(tmp_path, server, lines)
        bodies = server.bodies
    assert len(bodies) == 1 + 3 and bodies[0]["max_tokens"] <= 8  # one tiny probe
    assert sorted(map(json.dumps, bodies[1:])) == sorted(json.dumps(line["body"]) for line in lines)
    for text in contents(output):
        jsonschema.validate(json.loads(text), SCHEMA)


def test_without_structured_output_lines_are_sent_without_it_and_the_schema_becomes_an_instruction(tmp_path):
    with FakeModelServer("plain") as server:
        output = answered(tmp_path, server, [structured_line(i) for i in range(3)])
        formats, bodies = server.formats(), server.bodies
    # json_schema, json_object with a schema, plain json_object refused; nothing at all taken
    assert [f["type"] if f else None for f in formats[:4]] == ["json_schema", "json_object", "json_object", None]
    assert server.statuses[:4] == [400, 400, 400, 200]
    assert formats[4:] == [None] * 3
    for body in bodies[4:]:
        system = body["messages"][0]
        assert system["role"] == "system" and system["content"].startswith("You generate training data in JSON")
        assert json.dumps(SCHEMA, separators=(",", ":")) in system["content"]
        assert len(body["messages"]) == 2  # the user message is untouched, no second system message
    assert len(contents(output)) == 3  # the lines are still answered


def test_a_configured_form_skips_the_probe(tmp_path):
    with FakeModelServer("llama_cpp") as server:
        answered(tmp_path, server, [structured_line(i) for i in range(3)], upstream_structured="json_object_schema")
        assert server.formats() == [{"type": "json_object", "schema": SCHEMA}] * 3


def test_a_probe_that_cannot_tell_leaves_lines_as_they_are_and_is_not_repeated_at_once(tmp_path):
    with FakeModelServer("loading") as server:
        output = answered(tmp_path, server, [structured_line(i) for i in range(3)], upstream_concurrency=1)
        formats = server.formats()
    assert len(formats) == 1 + 3  # one probe (a 503 says nothing about response_format), then the lines
    assert formats[0]["type"] == "json_schema" and formats[1:] == [FORMAT] * 3
    assert {row["response"]["status_code"] for row in output} == {503}


def test_lines_without_json_schema_and_other_endpoints_are_left_alone():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}
    assert structured_body(body, "none") is body
    schema_body = structured_line(0)["body"]
    assert structured_body(schema_body, None) is schema_body
    assert structured_body(schema_body, "json_schema") is schema_body
    assert structured_body(schema_body, "json_object")["response_format"] == {"type": "json_object"}


def test_the_instruction_joins_a_leading_system_message_or_comes_first():
    schema = {"type": "object"}
    user = [{"role": "user", "content": "hi"}]
    assert instructed(user, schema)[0]["role"] == "system" and instructed(user, schema)[1:] == user
    parts = [{"role": "system", "content": [{"type": "text", "text": "x"}]}, *user]
    assert len(instructed(parts, schema)) == 3  # content parts are not rewritten: a system message of its own
    merged = instructed([{"role": "developer", "content": "Be brief."}, *user], schema)
    assert merged[0]["role"] == "developer" and merged[0]["content"].startswith("Be brief.\n\n")


def test_the_setting_is_validated_and_fixed_while_running(tmp_path):
    with pytest.raises(ConfigError, match="upstream_structured"):
        EmulatorConfig.load(tmp_path / "a", "serve", {"upstream_structured": "grammar"})
    result = CliRunner().invoke(cli, ["serve", "--upstream", "http://127.0.0.1:9/v1", "--upstream-structured",
                                      "grammar", "--state", str(tmp_path / "b")])
    assert result.exit_code == 2 and "grammar" in result.output and "Traceback" not in result.output
    assert "--upstream-structured" in CliRunner().invoke(cli, ["serve", "--help"]).output


def started(server: FakeModelServer, tmp_path, *args: str, probes: int, log_level: str = "info") -> str:
    """`batchgen serve --upstream` on `server`: its stderr up to its structured-output line, which must come after
    exactly `probes` requests reached the server."""
    process = serve(tmp_path / "state", free_port(), "--upstream", server.base_url, *args, log_level=log_level)
    assert process.stderr is not None
    fd = process.stderr.fileno()
    os.set_blocking(fd, False)
    err = b""
    try:
        deadline = time.monotonic() + 20
        while b"structured output" not in err and time.monotonic() < deadline:
            try:
                err += os.read(fd, 65536)
            except BlockingIOError:
                time.sleep(0.05)
    finally:
        process.terminate()
        process.communicate(timeout=20)
    text = err.decode()
    assert "structured output" in text and len(server.bodies) == probes, text
    return text


@pytest.mark.parametrize(("kind", "probes", "line"), [
    ("llama_cpp", 2, "takes json_object with a schema; json_schema lines are sent as"),
    ("json_schema", 1, "takes json_schema; response_format is sent as it is"),
    ("plain", 4, "structured output is unavailable at"),
])
def test_serve_says_at_start_what_the_upstream_takes(tmp_path, kind, probes, line):
    with FakeModelServer(kind) as server:
        err = started(server, tmp_path, probes=probes)
        assert {body["model"] for body in server.bodies} == {"llama-3.2-3b-instruct"}  # its own first model
    assert line in err and server.base_url in err and "(probed)" in err


def test_serve_warns_at_warning_level_when_the_schema_cannot_be_enforced(tmp_path):
    with FakeModelServer("plain") as server:
        err = started(server, tmp_path, probes=4, log_level="warning")
    assert "WARNING" in err and "structured output is unavailable at" in err


def test_serve_with_a_configured_form_sends_no_probe(tmp_path):
    with FakeModelServer("llama_cpp") as server:
        err = started(server, tmp_path, "--upstream-structured", "json_object_schema", probes=0)
    assert "takes json_object with a schema" in err and "(as configured)" in err
