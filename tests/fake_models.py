"""Fake local model servers for tests: OpenAI-compatible chat servers on loopback that differ, as real ones do, in
the structured output they take, and answer JSON made from the prompt and schema by batchgen's own composer.

`kind` says which server it plays:

- `llama_cpp`: llama-cpp-python's `python -m llama_cpp.server`. Its request model types `response_format` as
  `{"type": Literal["text", "json_object"], "schema": NotRequired[...]}` (llama_cpp/llama_types.py), and its
  route handler (llama_cpp/server/errors.py `RouteErrorHandler`) turns every exception, the request's validation
  error included, into HTTP 500 `{"error": {"message": str(error), "type": "internal_server_error", "param": null,
  "code": null}}`: so `json_schema` is a 500 on every line. `json_object` with a `schema` is made a grammar
  (llama_chat_format.py `_grammar_for_response_format`): the answer is valid against the schema.
- `json_schema`: vLLM or Ollama: takes OpenAI's `json_schema` (and `json_object`).
- `plain`: a server without structured output: any `response_format` but `text` is a 400.
- `loading`: a server still loading its model: 503 to everything.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from typing import Any

from loopback import LoopbackApp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batchgen.emulator.compose import Composer

_LITERAL = ("1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
            "'msg': \"Input should be 'text' or 'json_object'\", 'input': '%s', "
            "'ctx': {'expected': \"'text' or 'json_object'\"}}")


class FakeModelServer(LoopbackApp):
    """A chat server of `kind` (see the module docstring) serving `model`; `bodies` are the requests it got, and
    `statuses` what it answered them."""

    def __init__(self, kind: str, model: str = "llama-3.2-3b-instruct") -> None:
        self.kind, self.model = kind, model
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        self._composer = Composer()
        super().__init__(Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"]),
                                           Route("/v1/models", self._models)]))

    def formats(self) -> list[Any]:
        """The `response_format` of each request received, in order (None: none)."""
        with self._lock:
            return [body.get("response_format") for body in self.bodies]

    async def _models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "me",
                                                         "permissions": []}]})

    async def _chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        status, answer = self._answer(body)
        with self._lock:
            self.bodies.append(body)
            self.statuses.append(status)
        return JSONResponse(answer, status_code=status)

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.kind == "loading":
            return 503, {"error": {"message": "Loading model", "type": "unavailable_error", "param": None,
                                   "code": None}}
        response_format = body.get("response_format")
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in (None, "text", "json_object") and not (self.kind == "json_schema" and kind == "json_schema"):
            if self.kind == "llama_cpp":
                return 500, {"error": {"message": _LITERAL % kind, "type": "internal_server_error", "param": None,
                                       "code": None}}
            return 400, {"error": {"message": f"response_format {kind!r} is not supported", "type":
                                   "invalid_request_error", "param": "response_format", "code": None}}
        if self.kind == "plain" and kind == "json_object":
            return 400, {"error": {"message": "response_format json_object is not supported",
                                   "type": "invalid_request_error", "param": "response_format", "code": None}}
        schema = response_format.get("schema") if kind == "json_object" and isinstance(response_format, dict) \
            else None
        composed = {"type": "json_schema", "json_schema": {"schema": schema}} if isinstance(schema, dict) \
            else response_format
        texts = [m.get("content") if isinstance(m.get("content"), str) else "" for m in body["messages"]]
        analysis = self._composer.prompt(texts)
        rng = random.Random(zlib.crc32("\n".join(texts).encode()) + int(body.get("temperature", 1) * 100))
        text = self._composer.content(analysis, composed, analysis.count or 10, rng)
        prompt = sum(len(t) for t in texts) // 4
        completion = len(text) // 4
        return 200, {"id": f"chatcmpl-{rng.getrandbits(64):016x}", "object": "chat.completion",
                     "created": int(time.time()), "model": body.get("model") or self.model,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion}}
