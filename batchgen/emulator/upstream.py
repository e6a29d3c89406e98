"""The `upstream` executor: every line goes to an OpenAI-compatible server (vLLM, Ollama, llama.cpp, ...).

A line for `/v1/chat/completions` is POSTed to `<upstream_url>/chat/completions` (the endpoint minus `/v1`), and the
upstream's status and JSON body are the line's answer: 2xx rows land in the output file, the others in the error
file. A connection failure, a timeout or an answer that is not a JSON object becomes a 502/504 `server_error`
answer (`upstream_unreachable`, `upstream_bad_response`), so a line fails and the batch goes on.

`upstream_models` renames the requested model on the way out (`gpt-4o-mini` -> `llama3.1:8b`) and back in the
answer, and in the upstream's model list that `GET /v1/models` shows. The API key comes from
$BATCHGEN_UPSTREAM_API_KEY only and is sent as a bearer token; it is kept in memory and never appears in the
configuration, the state directory or an error message.

Structured output differs between servers: vLLM and Ollama take OpenAI's `response_format` `json_schema`;
llama-cpp-python's server takes `{"type": "json_object", "schema": ...}` (it makes a grammar of the schema) and
answers `json_schema` with HTTP 500; others take plain `json_object` or nothing. With `upstream_structured = "auto"`
the executor finds out once per start, with tiny probes (8 tokens, a one-field schema): json_schema, then
json_object + schema, then plain json_object, then no response_format. `batchgen serve` probes at start with the
upstream's first model, so the serve log says at once what the upstream takes; an upstream that cannot tell yet
(unreachable, a 401/404/429/503...) is probed again at the first json_schema line, at most every 30 s. Each
json_schema chat line is then sent in the best form the upstream took; where the schema cannot be enforced
(plain json_object, or no response_format), it is added to the system message as an instruction, so the model is
still told the shape. The answer is passed on as it came, in OpenAI's shape.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import orjson

from batchgen.emulator.apierror import APIError
from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.executor import Interrupted, LineRequest, LineResult, error_body

API_KEY_ENV = "BATCHGEN_UPSTREAM_API_KEY"
_EXCERPT = 200
_POLL = 0.05
_PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                 "additionalProperties": False}
_PROBES = ("json_schema", "json_object_schema", "json_object")
# a probe answered with one of these did not get past the upstream's own gate (key, model, load): it tells nothing
# about the response_format, so nothing is settled and a later json_schema line probes again
_INCONCLUSIVE = frozenset({401, 403, 404, 408, 429, 502, 503, 504})
PROBE_RETRY = 30.0  # seconds before a probe that could not tell is made again
_UNENFORCED = ("json_object", "none")
CHAT = "/v1/chat/completions"

log = logging.getLogger("batchgen.emulator")


class UpstreamExecutor:
    """Forwards request lines to `config.upstream_url`, `config.upstream_concurrency` at a time."""

    name = "upstream"

    def __init__(self, config: Callable[[], EmulatorConfig]) -> None:
        settings = config()
        if not settings.upstream_url:
            raise ValueError("the upstream executor needs upstream_url")
        self._config = config
        self.base_url = settings.upstream_url.rstrip("/")
        self.concurrency = settings.upstream_concurrency
        self.timeout = settings.upstream_timeout
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(API_KEY_ENV)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        room = self.concurrency + 8  # batch lines plus synchronous calls
        timeout = httpx2.Timeout(self.timeout, connect=min(10.0, self.timeout))
        self._client = httpx2.Client(headers=headers, timeout=timeout,
                                     limits=httpx2.Limits(max_connections=room, max_keepalive_connections=room))
        self._pool = _Pool(self.concurrency, self.execute)
        self._structured: str | None = None if settings.upstream_structured == "auto" else settings.upstream_structured
        self._probe_lock = threading.Lock()
        self._probe_after = 0.0  # time.monotonic() before which no new probe is made

    def url(self, endpoint: str) -> str:
        return self.base_url + endpoint.removeprefix("/v1")

    def execute(self, request: LineRequest) -> LineResult:
        """The upstream's answer to one line; never raises for a network or upstream problem."""
        body = request.body
        requested = body.get("model")
        mapped = self._config().upstream_models.get(requested) if isinstance(requested, str) else None
        if mapped is not None:
            body = {**body, "model": mapped}
        url = self.url(request.endpoint)
        if request.endpoint == CHAT and _asks_json_schema(body):
            body = structured_body(body, self.structured(body.get("model")))
        try:
            response = self._client.post(url, content=orjson.dumps(body))
        except httpx2.TimeoutException:
            return LineResult(504, error_body(f"The upstream server did not answer {url} within "
                                              f"{self.timeout:g} s.", "server_error", "upstream_unreachable"))
        except (httpx2.HTTPError, httpx2.StreamError, RuntimeError) as error:
            # RuntimeError: the client was closed because the emulator is stopping
            return LineResult(502, error_body(f"Cannot reach the upstream server at {url} "
                                              f"({type(error).__name__}: {error}).", "server_error",
                                              "upstream_unreachable"))
        return _answer(response, url, requested if mapped is not None else None)

    def models(self) -> list[dict[str, Any]]:
        """The upstream's `GET /models` list, each model under the requested names `upstream_models` gives it (an
        unrenamed one under its own); APIError 502 when the upstream cannot be reached or answers no such list."""
        url = self.base_url + "/models"
        try:
            response = self._client.get(url)
        except httpx2.TimeoutException as error:
            raise _models_failed(f"The upstream server did not answer {url} within {self.timeout:g} s.",
                                 "upstream_unreachable") from error
        except (httpx2.HTTPError, httpx2.StreamError, RuntimeError) as error:
            raise _models_failed(f"Cannot reach the upstream server at {url} ({type(error).__name__}: {error}).",
                                 "upstream_unreachable") from error
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        listed = body.get("data") if isinstance(body, dict) else None
        if not 200 <= response.status_code < 300 or not isinstance(listed, list):
            text = response.text.strip().replace("\n", " ")
            excerpt = text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")
            raise _models_failed(f"The upstream server answered {url} with HTTP {response.status_code} and no "
                                 f"model list{': ' + excerpt if excerpt else ''}", "upstream_bad_response")
        names: dict[str, list[str]] = {}
        for requested, upstream in self._config().upstream_models.items():
            names.setdefault(upstream, []).append(requested)
        out = []
        for entry in listed:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                model = {"object": "model", "created": 0, "owned_by": "upstream", **entry}
                out += [{**model, "id": name} for name in names.get(entry["id"], [entry["id"]])]
        return out

    def structured(self, model: Any) -> str | None:
        """The form json_schema lines take upstream: the configured one, or the probe's finding, made once (other
        lines wait for it); None while no probe could tell (the line goes as it is)."""
        with self._probe_lock:
            if self._structured is None and time.monotonic() >= self._probe_after:
                self._settle(model)
            return self._structured

    def announce(self) -> None:
        """At serve start: settle the form with the upstream's first model (or the first `upstream_models` target)
        and log it, so the serve log says at once what json_schema lines become."""
        with self._probe_lock:
            if self._structured is not None:
                _note(self._structured, self.base_url, "as configured")
                return
            model = next(iter(self._config().upstream_models.values()), None)
            if model is None:
                try:
                    listed = self.models()
                except APIError as error:
                    log.warning("structured output: not probed at start (%s); the first json_schema line probes it",
                                error.message)
                    return
                model = next((entry["id"] for entry in listed), None)
                if model is None:
                    log.warning("structured output: not probed at start (%s lists no model); the first json_schema "
                                "line probes it", self.base_url)
                    return
            self._settle(model)

    def _settle(self, model: Any) -> None:
        found = self._probe(model)
        if found is None:
            self._probe_after = time.monotonic() + PROBE_RETRY
            log.warning("structured output: the probes of %s could not tell what it takes; json_schema lines go as "
                        "they are, and a later one probes again", self.base_url)
            return
        self._structured = found
        _note(found, self.base_url, "probed")

    def _probe(self, model: Any) -> str | None:
        """What a tiny request shows the upstream takes; None when an answer tells nothing (see _INCONCLUSIVE)."""
        url = self.url(CHAT)
        base = {"model": model, "max_tokens": 8, "temperature": 0, "messages": [
            {"role": "user", "content": 'Answer with the JSON object {"ok": true} and nothing else.'}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "probe", "strict": True,
                                                                       "schema": _PROBE_SCHEMA}}}
        for form in (*_PROBES, "none"):
            body = structured_body(base, form, instruct=False)
            try:
                response = self._client.post(url, content=orjson.dumps(body))
            except (httpx2.HTTPError, httpx2.StreamError, RuntimeError) as error:
                log.debug("structured-output probe %s: %s", form, type(error).__name__)
                return None
            status = response.status_code
            log.debug("structured-output probe %s: HTTP %d", form, status)
            if 200 <= status < 300:
                return form if _is_completion(response) else None
            if status in _INCONCLUSIVE:
                return None
        return None  # not even a line without response_format is answered: nothing is learnt

    def execute_many(self, requests: Sequence[LineRequest], stop: threading.Event) -> list[LineResult]:
        """The answers in the order of `requests`, `concurrency` lines in flight at a time."""
        return self._pool.run(requests, stop)

    def close(self) -> None:
        self._pool.close()
        self._client.close()


def _models_failed(message: str, code: str) -> APIError:
    return APIError(502, message, type_="server_error", code=code)


def structured_note(form: str, url: str) -> str:
    """One line saying how json_schema lines reach the upstream (the serve log)."""
    if form == "json_schema":
        return f"structured output: {url} takes json_schema; response_format is sent as it is"
    if form == "json_object_schema":
        return (f"structured output: {url} takes json_object with a schema; json_schema lines are sent as "
                f'{{"type": "json_object", "schema": ...}}')
    if form == "json_object":
        return (f"structured output: {url} takes only plain json_object; json_schema lines are sent so, their "
                f"schema is not enforced (it is added to the system message as an instruction)")
    return (f"structured output is unavailable at {url}: json_schema lines are sent without response_format, "
            f"their schema as an instruction in the system message; answers may not be JSON")


def _note(form: str, url: str, how: str) -> None:
    log.log(logging.WARNING if form in _UNENFORCED else logging.INFO, "%s (%s)", structured_note(form, url), how)


def _is_completion(response: httpx2.Response) -> bool:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and isinstance(body.get("choices"), list)


def _asks_json_schema(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") == "json_schema"


def structured_body(body: dict[str, Any], form: str | None, *, instruct: bool = True) -> dict[str, Any]:
    """`body` with its json_schema response_format in `form` (None or "json_schema": unchanged). Where the form
    cannot enforce the schema (json_object, none) and `instruct`, the schema joins the system message."""
    if form is None or form == "json_schema" or not _asks_json_schema(body):
        return body
    out = {k: v for k, v in body.items() if k != "response_format"}
    spec = body["response_format"].get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if form == "json_object_schema" and isinstance(schema, dict):
        out["response_format"] = {"type": "json_object", "schema": schema}
        return out
    if form != "none":
        out["response_format"] = {"type": "json_object"}
    if instruct and isinstance(schema, dict) and isinstance(body.get("messages"), list):
        out["messages"] = instructed(body["messages"], schema)
    return out


def instructed(messages: list[Any], schema: dict[str, Any]) -> list[Any]:
    """`messages` with the schema as an instruction: appended to a leading system message with text content, or as
    a system message of its own first (chat templates that take one system message only see one)."""
    text = ("Answer with one JSON object and nothing else, valid against this JSON Schema: "
            + orjson.dumps(schema).decode())
    first = messages[0] if messages else None
    if isinstance(first, dict) and first.get("role") in ("system", "developer") and isinstance(
            first.get("content"), str):
        return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _answer(response: httpx2.Response, url: str, requested: str | None) -> LineResult:
    status = response.status_code
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip().replace("\n", " ")
        excerpt = text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")
        shown = f": {excerpt}" if excerpt else ""
        message = f"The upstream server answered {url} with HTTP {status} and no JSON object{shown}"
        return LineResult(502 if 200 <= status < 300 else status,
                          error_body(message, "server_error", "upstream_bad_response"))
    if requested is not None and 200 <= status < 300 and "model" in body:
        body["model"] = requested
    return LineResult(status, body)


@dataclass
class _Call:
    """One `execute_many` call: its results, and how many are still missing."""

    size: int
    results: list[LineResult | None] = field(default_factory=list)
    left: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.results = [None] * self.size
        self.left = self.size


class _Pool:
    """Daemon worker threads (started on first use), so a line stuck upstream never holds up the process's exit."""

    def __init__(self, size: int, work: Callable[[LineRequest], LineResult]) -> None:
        self._size = size
        self._work = work
        self._jobs: queue.SimpleQueue[tuple[_Call, int, LineRequest] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def run(self, requests: Sequence[LineRequest], stop: threading.Event) -> list[LineResult]:
        call = _Call(len(requests))
        if not requests:
            return []
        self._start()
        for index, request in enumerate(requests):
            self._jobs.put((call, index, request))
        while not call.done.wait(_POLL):
            if stop.is_set():
                call.abandoned = True
                raise Interrupted
        return [result for result in call.results if result is not None]

    def close(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._jobs.put(None)
            self._threads = []

    def _start(self) -> None:
        with self._lock:
            while len(self._threads) < self._size:
                thread = threading.Thread(target=self._serve, name="batchgen-emulator-upstream", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, index, request = job
            if call.abandoned:
                result = None
            else:
                try:
                    result = self._work(request)
                except Exception as error:  # a bug here must not lose the line: it gets a 500 row
                    result = LineResult(500, error_body(f"The executor failed: {type(error).__name__}",
                                                        "server_error"))
            with call.lock:
                call.results[index] = result
                call.left -= 1
                if call.left == 0:
                    call.done.set()
