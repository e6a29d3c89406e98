"""`GET /v1/models` and `GET /v1/models/{model}` through the SDK: the configured models with `simulate`, and with an
upstream its own list (a small fake server here), renamed back through `upstream_models`; a failing upstream is 502."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from emulator_fixtures import running
from loopback import LoopbackApp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

VLLM_STYLE = [
    {"id": "llama3.1:8b", "object": "model", "created": 1_720_000_000, "owned_by": "library"},
    {"id": "meta-llama/Llama-3.1-8B-Instruct", "object": "model", "created": 1_720_000_001, "owned_by": "vllm",
     "max_model_len": 8192},
    {"id": "bare-model"},
    {"object": "model"},
]


class ModelServer(LoopbackApp):
    """A fake OpenAI-compatible server with only `GET /v1/models`, as vLLM and llama.cpp have; `answer` says what
    it returns: the list, an HTTP status with text, or a body that is not a list."""

    def __init__(self) -> None:
        self.answer: Any = {"object": "list", "data": VLLM_STYLE}
        self.status = 200
        self.calls: list[tuple[str, str | None]] = []
        app = Starlette(routes=[Route("/v1/models", self._models, methods=["GET"])])
        super().__init__(app)

    async def _models(self, request: Request) -> Response:
        self.calls.append((request.url.path, request.headers.get("authorization")))
        if isinstance(self.answer, str):
            return PlainTextResponse(self.answer, status_code=self.status)
        return JSONResponse(self.answer, status_code=self.status)


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


def _not_found(call: Any) -> dict[str, Any]:
    with pytest.raises(openai.NotFoundError) as info:
        call()
    error: dict[str, Any] = info.value.response.json()["error"]
    return error


def test_the_configured_models_are_listed_and_retrieved(tmp_path):
    models = ["gpt-4o-mini", "gpt-5-nano", "text-embedding-3-small"]
    with running(tmp_path / "emu", models=models) as emu:
        raw = emu.client.models.with_raw_response.list().http_response.json()
        assert raw["object"] == "list"
        assert [m["id"] for m in raw["data"]] == models
        for entry in raw["data"]:
            assert set(entry) == {"id", "object", "created", "owned_by"}
            assert entry["object"] == "model" and isinstance(entry["created"], int) and entry["owned_by"]
        assert [m.id for m in emu.client.models.list()] == models
        model = emu.client.models.retrieve("gpt-5-nano")
        assert (model.id, model.object) == ("gpt-5-nano", "model")
        assert emu.client.models.retrieve("gpt-4o-mini-2024-07-18").id == "gpt-4o-mini-2024-07-18"
        for name in ("gpt-4o", "gpt-4o-mini-latest", "a/b"):
            error = _not_found(lambda n=name: emu.client.models.retrieve(n))
            assert error["code"] == "model_not_found" and name in error["message"]


def test_a_config_change_shows_at_once(tmp_path):
    with running(tmp_path / "emu", models=["gpt-4o-mini"]) as emu:
        emu.control.configure(models=["gpt-4o-mini", "o3"])
        assert [m.id for m in emu.client.models.list()] == ["gpt-4o-mini", "o3"]
        assert emu.client.models.retrieve("o3").id == "o3"


def test_the_upstream_list_is_forwarded_with_the_requested_names(tmp_path, model_server, monkeypatch):
    monkeypatch.setenv("BATCHGEN_UPSTREAM_API_KEY", "sk-upstream-models")
    renames = {"gpt-4o-mini": "llama3.1:8b", "gpt-4o": "llama3.1:8b", "gpt-5": "missing-upstream"}
    with running(tmp_path / "emu", executor="upstream", upstream_url=model_server.base_url,
                 upstream_models=renames) as emu:
        listed = {m["id"]: m for m in emu.client.models.with_raw_response.list().http_response.json()["data"]}
        assert set(listed) == {"gpt-4o-mini", "gpt-4o", "meta-llama/Llama-3.1-8B-Instruct", "bare-model"}
        assert listed["gpt-4o-mini"] == {**VLLM_STYLE[0], "id": "gpt-4o-mini"}
        assert listed["meta-llama/Llama-3.1-8B-Instruct"]["max_model_len"] == 8192
        assert listed["bare-model"]["object"] == "model" and isinstance(listed["bare-model"]["created"], int)
        assert model_server.calls[0] == ("/v1/models", "Bearer sk-upstream-models")

        assert emu.client.models.retrieve("gpt-4o").owned_by == "library"
        slashed = emu.client.models.retrieve("meta-llama/Llama-3.1-8B-Instruct")
        assert slashed.id == "meta-llama/Llama-3.1-8B-Instruct" and slashed.owned_by == "vllm"
        for name in ("llama3.1:8b", "gpt-5", "nothing"):  # renamed away, renamed to what the upstream lacks, unknown
            assert _not_found(lambda n=name: emu.client.models.retrieve(n))["code"] == "model_not_found"
        assert {path for path, _ in model_server.calls} == {"/v1/models"}


@pytest.mark.parametrize(("status", "answer", "code"), [
    (500, "upstream exploded", "upstream_bad_response"),
    (404, {"detail": "Not Found"}, "upstream_bad_response"),
    (200, {"object": "list"}, "upstream_bad_response"),
    (200, "not json", "upstream_bad_response"),
])
def test_an_upstream_that_fails_gives_a_502(tmp_path, model_server, status, answer, code):
    model_server.status, model_server.answer = status, answer
    with running(tmp_path / "emu", executor="upstream", upstream_url=model_server.base_url) as emu:
        for call in (emu.client.models.list, lambda: emu.client.models.retrieve("llama3.1:8b")):
            with pytest.raises(openai.APIStatusError) as info:
                call()
            assert info.value.status_code == 502
            error = info.value.response.json()["error"]
            assert (error["type"], error["code"]) == ("server_error", code)
            assert f"HTTP {status}" in error["message"]


def test_an_unreachable_upstream_gives_a_502(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with running(tmp_path / "emu", executor="upstream", upstream_url=url) as emu:
        with pytest.raises(openai.APIStatusError) as info:
            emu.client.models.list()
        assert info.value.status_code == 502
        assert info.value.response.json()["error"]["code"] == "upstream_unreachable"
