"""Executors decide what a request line returns: `simulate` (the default) or `upstream` (forwarding to an
OpenAI-compatible server). Per-line faults (model errors, malformed output: a share of the lines, or every line
whose prompt holds a given text, such as one axis cell's "Operation: update") wrap any executor.

An executor whose `concurrency` is above 1 also has `execute_many`, which answers a list of lines in parallel and
returns the results in the order of the requests; it raises `Interrupted` when `stop` is set before it is done.
"""

from __future__ import annotations

import base64
import random
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.ids import digest
from batchgen.emulator.tokencount import TokenCounter, _content_text

SYNC_BATCH = "sync"


@dataclass(frozen=True)
class LineRequest:
    """One request: a batch line or a synchronous call (batch_id "sync").

    `content` names what the request belongs to by its bytes, never by a random id: the digest of the batch's input
    file (a synchronous call's custom_id is already a digest of its body). With `index`, the line's position in
    that file, it seeds the line's faults, so one config and one input give the same faults in every run."""

    endpoint: str
    body: dict[str, Any]
    custom_id: str
    index: int
    batch_id: str
    created: int
    content: str = SYNC_BATCH


@dataclass
class LineResult:
    """The HTTP status and JSON body the endpoint answers."""

    status_code: int
    body: dict[str, Any]


class Executor(Protocol):
    """What serves a request line."""

    name: str

    def execute(self, request: LineRequest) -> LineResult: ...


class ConcurrentExecutor(Executor, Protocol):
    """An executor that answers several lines at once."""

    concurrency: int

    def execute_many(self, requests: Sequence[LineRequest], stop: threading.Event) -> list[LineResult]: ...


class Interrupted(Exception):
    """The emulator is stopping: the lines in flight are not recorded and run again on the next start."""


def concurrency(executor: Executor) -> int:
    """How many lines `executor` answers at once (1: call `execute` line by line)."""
    return int(getattr(executor, "concurrency", 1))


def close_executor(executor: Executor) -> None:
    """Release what an executor holds (connections, threads), if it holds anything."""
    close = getattr(executor, "close", None)
    if callable(close):
        close()


def prepare_lines(executor: Executor, batch_id: str, first_index: int, lines: list[bytes]) -> bool:
    """Show an executor a batch's input lines (from `first_index`, in input order) before they run, if it wants to
    see them (the simulated prompt cache does); False when it needs the lines before `first_index` too."""
    prepare = getattr(executor, "prepare", None)
    return bool(prepare(batch_id, first_index, lines)) if callable(prepare) else True


def forget_batch(executor: Executor, batch_id: str) -> None:
    """The batch has ended: the executor may drop what it kept for it."""
    forget = getattr(executor, "forget", None)
    if callable(forget):
        forget(batch_id)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def line_rng(seed: int, *parts: object) -> random.Random:
    """A deterministic random source for one purpose of one line."""
    return random.Random(int.from_bytes(digest(seed, *parts, size=8), "big"))


class FaultyExecutor:
    """Adds the configured per-line faults to another executor's answers."""

    def __init__(self, inner: Executor, config: Callable[[], EmulatorConfig], counter: TokenCounter) -> None:
        self.inner = inner
        self.name = inner.name
        self._config = config
        self._counter = counter

    @property
    def concurrency(self) -> int:
        return concurrency(self.inner)

    def execute(self, request: LineRequest) -> LineResult:
        config = self._config()
        rng, fault = self._fault(config, request)
        if fault is not None:
            return fault
        return self._spoil(config, rng, request, self.inner.execute(request))

    def execute_many(self, requests: Sequence[LineRequest], stop: threading.Event) -> list[LineResult]:
        """The faulted lines are answered here; the others go to the inner executor together, in order."""
        config = self._config()
        faults = [self._fault(config, request) for request in requests]
        todo = [request for request, (_, fault) in zip(requests, faults, strict=True) if fault is None]
        inner = self.inner
        if todo and concurrency(inner) > 1:
            answers = iter(inner.execute_many(todo, stop))  # type: ignore[attr-defined]
        else:
            answers = iter([inner.execute(request) for request in todo])
        return [fault if fault is not None else self._spoil(config, rng, request, next(answers))
                for request, (rng, fault) in zip(requests, faults, strict=True)]

    def close(self) -> None:
        close_executor(self.inner)

    def prepare(self, batch_id: str, first_index: int, lines: list[bytes]) -> bool:
        return prepare_lines(self.inner, batch_id, first_index, lines)

    def forget(self, batch_id: str) -> None:
        forget_batch(self.inner, batch_id)

    @staticmethod
    def _fault(config: EmulatorConfig, request: LineRequest) -> tuple[random.Random | None, LineResult | None]:
        """The line's random source (None without faults) and its injected error, if it gets one."""
        if not config.error_rate and not config.malformed_rate and not config.malformed_when_prompt_contains:
            return None, None
        rng = line_rng(config.seed, "fault", request.content, request.index, request.custom_id)
        if config.error_rate and rng.random() < config.error_rate:
            if rng.random() < 0.5:
                return rng, LineResult(429, error_body("Rate limit reached for requests. Please try again later.",
                                                       "requests", "rate_limit_exceeded"))
            return rng, LineResult(500, error_body("The server had an error while processing your request. Sorry "
                                                   "about that!", "server_error"))
        return rng, None

    def _spoil(self, config: EmulatorConfig, rng: random.Random | None, request: LineRequest,
               result: LineResult) -> LineResult:
        """Spoil a successful answer: one of `malformed_rate`, and every one whose prompt holds one of the texts of
        `malformed_when_prompt_contains`."""
        if rng is None or result.status_code != 200:
            return result
        hit = bool(config.malformed_rate) and rng.random() < config.malformed_rate
        if hit or _prompt_holds(request.body, config.malformed_when_prompt_contains):
            malform(result.body, rng, self._counter)
        return result


def _prompt_holds(body: dict[str, Any], texts: Sequence[str]) -> bool:
    """Whether the request's prompt (its messages' text, or the embeddings input) holds one of the texts."""
    if not texts:
        return False
    messages = body.get("messages")
    if isinstance(messages, list):
        prompt = "\n".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))
    else:
        raw = body.get("input")
        prompt = raw if isinstance(raw, str) else "\n".join(i for i in raw if isinstance(i, str)) \
            if isinstance(raw, list) else ""
    return any(text in prompt for text in texts)


def malform(body: dict[str, Any], rng: random.Random, counter: TokenCounter) -> None:
    """Spoil a chat completion's content: not JSON, wrong roles or empty turns (usage follows the content); or an
    embeddings answer's first vector."""
    if body.get("object") == "list":
        _spoil_vector(body, rng)
        return
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return
    message = choices[0].get("message", {})
    content = message.get("content") or ""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        data = None
    kind = rng.choice(("not_json", "wrong_roles", "empty_turns"))
    if data is None or kind == "not_json" or not _spoil_turns(data, kind):
        cut = max(1, len(content) * 3 // 5)
        message["content"] = "Sure! Here are the examples you asked for:\n\n" + content[:cut]
    else:
        message["content"] = orjson.dumps(data).decode()
    usage = body.get("usage", {})
    model = str(body.get("model", ""))
    old = int(usage.get("completion_tokens", 0))
    new = sum(counter.text(str(c.get("message", {}).get("content") or ""), model, unique=True) for c in choices)
    usage["completion_tokens"] = new
    usage["total_tokens"] = int(usage.get("total_tokens", 0)) - old + new


def _spoil_vector(body: dict[str, Any], rng: random.Random) -> None:
    """Cut the first vector short by a quarter, or make one of its numbers NaN (null in a float list, as JSON
    writers spell it; the float32 NaN in base64). Usage stays: the input was embedded all the same."""
    data = body.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return
    item, short = data[0], rng.random() < 0.5
    vector = item.get("embedding")
    if isinstance(vector, list) and vector:
        if short:
            del vector[len(vector) * 3 // 4:]
        else:
            vector[rng.randrange(len(vector))] = None
    elif isinstance(vector, str):
        raw = bytearray(base64.b64decode(vector))
        if short:
            del raw[len(raw) // 16 * 12:]
        elif raw:
            at = rng.randrange(len(raw) // 4) * 4
            raw[at:at + 4] = struct.pack("<f", float("nan"))
        item["embedding"] = base64.b64encode(bytes(raw)).decode("ascii")


def _spoil_turns(data: Any, kind: str) -> bool:
    """Swap the roles, or blank the texts, of every turn found; False when there are no turns."""
    swaps = {"human": "gpt", "gpt": "human", "user": "assistant", "assistant": "user"}
    changed = False
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for role_key, text_key in (("from", "value"), ("role", "content")):
                if role_key in node and text_key in node:
                    if kind == "wrong_roles":
                        node[role_key] = swaps.get(node[role_key], node[role_key])
                    else:
                        node[text_key] = ""
                    changed = True
            stack.extend(v for v in node.values() if isinstance(v, (list, dict)))
    return changed
