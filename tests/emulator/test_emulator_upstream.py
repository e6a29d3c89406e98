"""The upstream executor: an emulator that forwards every line to an OpenAI-compatible server, here a small recording
Starlette app on loopback (or a second emulator), driven through the SDK."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from emulator_fixtures import chat_line, create, rows, run_lines, running, upload, wait
from loopback import LoopbackApp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from batchgen.cli import cli
from batchgen.emulator import ConfigError, EmulatorConfig, EmulatorControl, start_embedded
from batchgen.emulator.runner import block_order

SECRET = "sk-upstream-7f3a9c1e5b"


class Upstream(LoopbackApp):
    """A fake OpenAI-compatible server: records every request; the last user message steers the answer
    ('status 404', 'text 200', 'slow'), anything else gets a chat completion echoing it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak = 0
        self.delay = 0.0
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"]),
                                Route("/v1/embeddings", self._embeddings, methods=["POST"])])
        super().__init__(app)

    async def _record(self, request: Request) -> dict[str, Any]:
        body = json.loads(await request.body())
        with self._lock:
            self.received.append({"path": request.url.path, "body": body,
                                  "authorization": request.headers.get("authorization")})
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            with self._lock:
                self.in_flight -= 1
        return body

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        text = body["messages"][-1]["content"]
        kind, _, value = text.partition(" ")
        if kind == "status":
            return JSONResponse({"error": {"message": f"asked for {value}", "type": "upstream_test", "param": None,
                                           "code": None}}, status_code=int(value))
        if kind == "text":
            return PlainTextResponse("Internal hiccup", status_code=int(value))
        return JSONResponse({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {text}"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})

    async def _embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        return JSONResponse({"object": "list", "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1},
                             "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}]})


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


def _forwarding(upstream_url: str, **config: Any) -> dict[str, Any]:
    return {"executor": "upstream", "upstream_url": upstream_url, **config}


def _by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["custom_id"]: row for row in items}


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_a_batch_is_answered_by_the_upstream_and_joined_by_custom_id(tmp_path, upstream):
    lines = [chat_line(i, temperature=0.5) for i in range(20)]
    with running(tmp_path / "emu", **_forwarding(upstream.base_url)) as emu:
        batch = run_lines(emu, lines)
        assert emu.control.state()["executor"] == "upstream"
        output = rows(emu.client, batch.output_file_id)
    assert batch.status == "completed" and batch.error_file_id is None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (20, 0)
    assert batch.usage.input_tokens == 3 * 20 and batch.usage.total_tokens == 5 * 20
    for line, row in zip(lines, (_by_id(output)[line["custom_id"]] for line in lines), strict=True):
        assert row["response"]["status_code"] == 200
        content = row["response"]["body"]["choices"][0]["message"]["content"]
        assert content == "echo: " + line["body"]["messages"][0]["content"]
    assert sorted((r["body"] for r in upstream.received), key=lambda b: b["messages"][0]["content"]) == \
        sorted((line["body"] for line in lines), key=lambda b: b["messages"][0]["content"])
    assert {r["path"] for r in upstream.received} == {"/v1/chat/completions"}


def test_lines_run_concurrently_and_rows_keep_the_block_order(tmp_path, upstream):
    upstream.delay = 0.05
    lines = [chat_line(i) for i in range(24)]
    with running(tmp_path / "emu", **_forwarding(upstream.base_url, upstream_concurrency=4)) as emu:
        batch = run_lines(emu, lines)
        output = rows(emu.client, batch.output_file_id)
    assert batch.status == "completed" and len(output) == 24
    assert 2 <= upstream.peak <= 4
    assert [row["custom_id"] for row in output] == [f"req-{i}" for i in block_order(0, batch.id, 0, 24)]


def test_upstream_errors_land_in_the_error_file_with_their_status(tmp_path, upstream):
    contents = ["status 404", "status 400", "status 500", "status 503", "text 200", "text 500", "fine"]
    lines = [chat_line(i, content=text) for i, text in enumerate(contents)]
    with running(tmp_path / "emu", **_forwarding(upstream.base_url)) as emu:
        batch = run_lines(emu, lines)
        errors = _by_id(rows(emu.client, batch.error_file_id))
        output = _by_id(rows(emu.client, batch.output_file_id))
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 6)
    assert list(output) == ["req-6"]
    statuses = {cid: row["response"]["status_code"] for cid, row in errors.items()}
    assert statuses == {"req-0": 404, "req-1": 400, "req-2": 500, "req-3": 503, "req-4": 502, "req-5": 500}
    assert errors["req-0"]["response"]["body"]["error"]["message"] == "asked for 404"
    for cid in ("req-4", "req-5"):
        error = errors[cid]["response"]["body"]["error"]
        assert error["code"] == "upstream_bad_response" and error["type"] == "server_error"
        assert "Internal hiccup" in error["message"]
    assert all(row["error"] is None for row in errors.values())


def test_an_unreachable_upstream_fails_every_line_and_the_batch_completes(tmp_path):
    lines = [chat_line(i) for i in range(5)]
    with running(tmp_path / "emu", **_forwarding(_closed_port_url(), upstream_concurrency=2)) as emu:
        batch = run_lines(emu, lines)
        errors = rows(emu.client, batch.error_file_id)
        with pytest.raises(openai.APIStatusError) as sync:
            emu.client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert batch.status == "completed" and batch.output_file_id is None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 5)
    assert sorted(row["custom_id"] for row in errors) == [f"req-{i}" for i in range(5)]
    for row in errors:
        assert row["response"]["status_code"] == 502
        assert row["response"]["body"]["error"]["code"] == "upstream_unreachable"
        assert row["response"]["body"]["error"]["type"] == "server_error"
    assert sync.value.status_code == 502


def test_a_slow_upstream_times_out_with_504(tmp_path, upstream):
    upstream.delay = 0.4
    with running(tmp_path / "emu", **_forwarding(upstream.base_url, upstream_timeout=0.1)) as emu:
        batch = run_lines(emu, [chat_line(0)])
        error = rows(emu.client, batch.error_file_id)[0]["response"]
    assert batch.status == "completed"
    assert error["status_code"] == 504 and error["body"]["error"]["code"] == "upstream_unreachable"


def test_models_are_mapped_and_the_answer_names_the_requested_model(tmp_path, upstream):
    mapping = {"gpt-4o-mini": "llama3.1:8b", "text-embedding-3-small": "nomic-embed-text"}
    hi = [{"role": "user", "content": "hi"}]
    with running(tmp_path / "emu", **_forwarding(upstream.base_url, upstream_models=mapping)) as emu:
        output = rows(emu.client, run_lines(emu, [chat_line(0), chat_line(1)]).output_file_id)
        sync = emu.client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        unmapped = emu.client.chat.completions.create(model="qwen2.5:0.5b", messages=hi)  # any model is accepted
        vectors = emu.client.embeddings.create(model="text-embedding-3-small", input="hello",
                                               encoding_format="float")
    assert [row["response"]["body"]["model"] for row in output] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert sync.model == "gpt-4o-mini" and sync.choices[0].message.content == "echo: hi"
    assert unmapped.model == "qwen2.5:0.5b"
    assert vectors.model == "text-embedding-3-small" and vectors.data[0].embedding == [0.6, 0.8]
    sent = sorted((r["path"], r["body"]["model"]) for r in upstream.received)
    assert sent == [("/v1/chat/completions", "llama3.1:8b")] * 3 + [("/v1/chat/completions", "qwen2.5:0.5b"),
                                                                     ("/v1/embeddings", "nomic-embed-text")]


def test_the_api_key_comes_from_the_environment_and_is_never_stored(tmp_path, upstream, monkeypatch):
    monkeypatch.setenv("BATCHGEN_UPSTREAM_API_KEY", SECRET)
    state = tmp_path / "emu"
    with running(state, **_forwarding(upstream.base_url)) as emu:
        batch = run_lines(emu, [chat_line(i) for i in range(3)])
        assert SECRET not in json.dumps(emu.control.state())
    assert batch.status == "completed"
    assert {r["authorization"] for r in upstream.received} == {f"Bearer {SECRET}"}
    with running(tmp_path / "down", **_forwarding(_closed_port_url())) as emu:
        run_lines(emu, [chat_line(0)])
    stored = [p for root in (state, tmp_path / "down") for p in root.rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if SECRET.encode() in p.read_bytes()]


def test_without_a_key_no_authorization_is_sent(tmp_path, upstream, monkeypatch):
    monkeypatch.delenv("BATCHGEN_UPSTREAM_API_KEY", raising=False)
    with running(tmp_path / "emu", **_forwarding(upstream.base_url)) as emu:
        emu.client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert [r["authorization"] for r in upstream.received] == [None]


def test_line_faults_still_wrap_the_upstream(tmp_path, upstream):
    with running(tmp_path / "emu", **_forwarding(upstream.base_url, error_rate=1.0)) as emu:
        batch = run_lines(emu, [chat_line(i) for i in range(6)])
        statuses = {row["response"]["status_code"] for row in rows(emu.client, batch.error_file_id)}
    assert batch.request_counts.failed == 6 and statuses <= {429, 500}
    assert upstream.received == []


def test_a_second_emulator_can_be_the_upstream(tmp_path):
    with running(tmp_path / "model") as model, running(tmp_path / "front", **_forwarding(model.base_url)) as front:
        batch = run_lines(front, [chat_line(i) for i in range(10)])
        output = rows(front.client, batch.output_file_id)
    assert batch.status == "completed" and len(output) == 10
    assert all(row["response"]["body"]["object"] == "chat.completion" for row in output)


def test_stopping_drops_lines_in_flight_and_a_restart_answers_each_once(tmp_path, upstream):
    upstream.delay = 5.0
    state = tmp_path / "emu"
    config = {"validation_seconds": 0, "line_seconds": 0, "finalizing_seconds": 0,
              **_forwarding(upstream.base_url, upstream_concurrency=2)}
    handle = start_embedded(state, config)
    client = openai.OpenAI(base_url=handle.base_url, api_key="k", max_retries=0)
    batch = create(client, upload(client, [chat_line(i) for i in range(6)]).id)
    deadline = time.monotonic() + 5
    while upstream.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    client.close()
    handle.stop()
    assert time.monotonic() - began < 2.5
    upstream.delay = 0.0
    with running(state, **_forwarding(upstream.base_url)) as emu:
        done = wait(emu, batch.id)
        output = rows(emu.client, done.output_file_id)
    assert done.status == "completed"
    assert sorted(row["custom_id"] for row in output) == [f"req-{i}" for i in range(6)]


def test_executor_settings_cannot_change_live(tmp_path, upstream):
    with running(tmp_path / "emu", **_forwarding(upstream.base_url)) as emu:
        control = EmulatorControl(emu.base_url)
        with pytest.raises(Exception, match="cannot change while the emulator runs"):
            control.configure(upstream_concurrency=3)
        assert control.configure(upstream_models={"gpt-4o-mini": "x"})["upstream_models"] == {"gpt-4o-mini": "x"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"executor": "upstream"}, "the upstream executor needs upstream_url (batchgen serve --upstream URL)"),
    ({"executor": "local"}, "executor must be one of simulate, upstream, not 'local'"),
    ({"upstream_url": "ftp://host/v1"}, "upstream_url must be an http:// or https:// URL"),
    ({"upstream_url": "http://user:pw@host/v1"}, "upstream_url must not hold credentials"),
    ({"upstream_concurrency": 0}, "upstream_concurrency must be between 1 and 256"),
    ({"upstream_timeout": 0}, "upstream_timeout must be a positive number of seconds"),
    ({"upstream_models": ["a"]}, "upstream_models must be an object of requested model names to upstream model "
                                 "names, not ['a']"),
])
def test_config_validation(changes, message):
    with pytest.raises(ConfigError) as error:
        EmulatorConfig().updated(changes)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--upstream", "localhost:11434"], 1, "Error: upstream_url must be an http:// or https:// URL such as "
                                           "http://localhost:11434/v1, not 'localhost:11434'"),
    (["--upstream", "http://me:pw@host/v1"], 1, "Error: upstream_url must not hold credentials; put the key in "
                                                "$BATCHGEN_UPSTREAM_API_KEY"),
    (["--upstream", "http://h/v1", "--upstream-model", "gpt-4o-mini"], 1,
     "Error: --upstream-model expects REQUESTED=UPSTREAM (gpt-4o-mini=llama3.1:8b), got 'gpt-4o-mini'"),
    (["--upstream", "http://h/v1", "--upstream-concurrency", "0"], 2, "Invalid value for '--upstream-concurrency'"),
    (["--upstream", "http://h/v1", "--upstream-timeout", "0"], 2, "Invalid value for '--upstream-timeout'"),
])
def test_serve_rejects_bad_upstream_settings_in_one_line(tmp_path, args, code, message):
    result = CliRunner().invoke(cli, ["serve", "--state", str(tmp_path / "s"), "--port", "0", *args])
    assert result.exit_code == code
    assert message in result.stderr and "Traceback" not in result.output
    if code == 1:
        assert result.stderr.strip().splitlines() == [message]


def test_serve_reads_a_bad_executor_from_config_json(tmp_path):
    state = tmp_path / "s"
    state.mkdir()
    (state / "config.json").write_text(json.dumps({"executor": "upstream"}), encoding="utf-8")
    result = CliRunner().invoke(cli, ["serve", "--state", str(state), "--port", "0"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {state / 'config.json'}: the upstream executor needs upstream_url (batchgen serve --upstream URL)"]
    # a URL given on the command line completes the file's executor
    assert EmulatorConfig.load(state, "serve", {"upstream_url": "http://h/v1"}).upstream_url == "http://h/v1"


def test_serve_help_lists_the_upstream_flags():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in ("--upstream URL", "--upstream-model REQUESTED=UPSTREAM", "--upstream-timeout",
                 "--upstream-concurrency", "BATCHGEN_UPSTREAM_API_KEY"):
        assert flag in result.output


def test_the_readme_shows_the_upstream_command():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "batchgen serve --upstream http://localhost:11434/v1" in readme


def test_the_upstream_sets_the_pace_unless_line_seconds_is_given(tmp_path):
    upstream = EmulatorConfig.load(tmp_path / "a", "serve", {"executor": "upstream",
                                                             "upstream_url": "http://127.0.0.1:9/v1"})
    assert upstream.line_seconds == 0
    assert EmulatorConfig.load(tmp_path / "a", "serve").line_seconds == 0.05
    paced = EmulatorConfig.load(tmp_path / "b", "serve", {"executor": "upstream", "upstream_url": "http://h/v1",
                                                          "line_seconds": 0.5})
    assert paced.line_seconds == 0.5
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text('{"line_seconds": 0.25}', encoding="utf-8")
    from_file = EmulatorConfig.load(tmp_path / "c", "serve", {"executor": "upstream", "upstream_url": "http://h/v1"})
    assert from_file.line_seconds == 0.25
