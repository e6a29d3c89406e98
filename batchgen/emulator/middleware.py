"""ASGI middleware: Azure OpenAI's data-plane paths mapped onto /v1, bearer-token (or `api-key`) auth, HTTP-level
faults on /v1 (transient 429/500/503 with Retry-After, dropped connections, slow answers), one log line for a
client that goes away mid-request or mid-download, and an `x-request-id` on every answer.
Auth and faults drain a request body before answering early, so clients never see a reset while they are still
sending.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import random
import re
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchgen.emulator.apierror import error_envelope
from batchgen.emulator.engine import Engine
from batchgen.emulator.ids import random_request_id

_MISSING_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
_ADMIN_ONLY = ("This endpoint needs an admin key: the organization's Usage and Costs APIs answer only an admin API "
               "key (sk-admin-...), not a project or user key.")
_AZURE_DENIED = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                 "key for an active subscription and use a correct regional API endpoint for your resource.")
_AZURE_MISSING = ("Access denied due to missing subscription key. Make sure to include subscription key when making "
                  "requests to an API.")
ADMIN_PREFIX = "sk-admin-"
AZURE_SCOPE = "batchgen.azure"  # set on a request that came in on an Azure path: {"deployment": name or None}
# What Azure's data plane serves here: {endpoint}/openai/<api> with ?api-version=, or {endpoint}/openai/v1/<api>.
_AZURE_APIS = re.compile(r"^(files|batches|chat/completions|embeddings|models)(/.*)?$")
_AZURE_DEPLOYMENT = re.compile(r"^deployments/([^/]+)/(chat/completions|embeddings)$")
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$|^(preview|latest|v1)$")
_DROP_MESSAGE = "ASGI callable returned without completing response."
log = logging.getLogger("batchgen.emulator")


async def drain(receive: Receive) -> None:
    """Read the rest of the request body."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    raw = orjson.dumps(body)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


class AzureMiddleware:
    """Serves Azure OpenAI's data-plane URLs with the /v1 routes: `/openai/<api>?api-version=...` (the classic
    shape; without an api-version Azure answers 404 "Resource not found"), `/openai/v1/<api>` (the newer shape, no
    api-version needed), and `/openai/deployments/<name>/chat/completions` (or `/embeddings`), whose deployment
    name stands for the request's model. The request is marked (`AZURE_SCOPE`) so that the routes take Azure's
    batch lines and deployment names, and auth answers as Azure does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", "")) if scope["type"] == "http" else ""
        if not path.startswith("/openai/"):
            await self.app(scope, receive, send)
            return
        rest, deployment = path[len("/openai/"):], None
        versioned = not rest.startswith("v1/")
        rest = rest if versioned else rest[len("v1/"):]
        match = _AZURE_DEPLOYMENT.match(rest) if versioned else None
        if match is not None:
            deployment, rest = match.group(1), match.group(2)
        elif not _AZURE_APIS.match(rest):
            await drain(receive)
            await send_json(send, 404, azure_error("404", "Resource not found"))
            return
        if versioned:
            version = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api-version", [""])[0]
            if not version:
                await drain(receive)
                await send_json(send, 404, azure_error("404", "Resource not found"))
                return
            if not _API_VERSION.match(version):
                await drain(receive)
                await send_json(send, 400, azure_error("BadRequest", "API version not supported"))
                return
        target = "/v1/" + rest
        scope = {**scope, "path": target, "raw_path": target.encode(), AZURE_SCOPE: {"deployment": deployment}}
        await self.app(scope, receive, send)


def azure_error(code: str, message: str) -> dict[str, Any]:
    """The envelope of an answer Azure's gateway gives before any API sees the request: code and message only."""
    return {"error": {"code": code, "message": message}}


class AuthMiddleware:
    """With a token, every request needs `Authorization: Bearer <token>`, or Azure's `api-key: <token>` (401
    otherwise; on an Azure path, in Azure's words). The `admin_paths` (the
    organization's Usage and Costs) need an admin key instead, token or not: a bearer key starting `sk-admin-`, or
    exactly `admin_key` when one is set; any other key gets 403, none 401. An admin key opens nothing else."""

    def __init__(self, app: ASGIApp, token: str | None, admin_key: str | None = None,
                 admin_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.token = token
        self.admin_key = admin_key
        self.admin_paths = admin_paths

    def _is_admin(self, key: str) -> bool:
        if self.admin_key:
            return hmac.compare_digest(key.encode(), self.admin_key.encode())
        return key.startswith(ADMIN_PREFIX) and len(key) > len(ADMIN_PREFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        header = headers.get(b"authorization", b"").decode("latin-1")
        if str(scope.get("path", "")).rstrip("/") in self.admin_paths:
            await self._admin(header, scope, receive, send)
            return
        api_key = headers.get(b"api-key")
        if not self.token or hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode()) \
                or (api_key is not None and hmac.compare_digest(api_key, self.token.encode())):
            await self.app(scope, receive, send)
            return
        await drain(receive)
        if AZURE_SCOPE in scope:
            given = api_key is not None or bool(header.startswith("Bearer ") and header[7:].strip())
            await send_json(send, 401, azure_error("401", _AZURE_DENIED if given else _AZURE_MISSING))
            return
        await self._refuse(header, send)

    async def _admin(self, header: str, scope: Scope, receive: Receive, send: Send) -> None:
        key = header[7:].strip() if header.startswith("Bearer ") else ""
        if key and self._is_admin(key):
            await self.app(scope, receive, send)
            return
        await drain(receive)
        if not key:
            await self._refuse(header, send)
            return
        await send_json(send, 403, error_envelope(_ADMIN_ONLY, code="insufficient_permissions"))

    @staticmethod
    async def _refuse(header: str, send: Send) -> None:
        if not header.startswith("Bearer ") or not header[7:].strip():
            body = error_envelope(_MISSING_KEY)
        else:
            shown = header[7:][:3] + "*" * 4 + header[7:][-4:]
            body = error_envelope(f"Incorrect API key provided: {shown}.", code="invalid_api_key")
        await send_json(send, 401, body, {"www-authenticate": "Bearer"})


class _DropFilter(logging.Filter):
    """Keeps uvicorn quiet about the connections this middleware drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _DROP_MESSAGE not in record.getMessage()


class FaultMiddleware:
    """Injects the configured HTTP faults into /v1 requests, deterministically for a seed."""

    def __init__(self, app: ASGIApp, engine: Engine) -> None:
        self.app = app
        self.engine = engine
        self.rng = random.Random(engine.config.seed)
        logger = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _DropFilter) for f in logger.filters):
            logger.addFilter(_DropFilter())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = self.engine.config
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if config.slow_rate and self.rng.random() < config.slow_rate:
            await asyncio.sleep(config.slow_seconds)
        if config.http_error_rate and self.rng.random() < config.http_error_rate:
            await drain(receive)
            await self._transient(send, self.rng.choice((429, 500, 503)), config.http_retry_after)
            return
        if config.drop_rate and self.rng.random() < config.drop_rate:
            await drain(receive)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b'{"id": ', "more_body": True})
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _transient(send: Send, status: int, retry_after: float) -> None:
        headers = {"retry-after": str(max(0, math.ceil(retry_after))),
                   "retry-after-ms": str(int(retry_after * 1000))}
        if status == 429:
            body = error_envelope("Rate limit reached for requests. Please try again later.", "requests",
                                  None, "rate_limit_exceeded")
        elif status == 503:
            body = error_envelope("The engine is currently overloaded, please try again later.", "server_error")
        else:
            body = error_envelope("The server had an error while processing your request. Sorry about that!",
                                  "server_error")
        await send_json(send, status, body, headers)


class RequestId:
    """Gives every answer an `x-request-id` (`req_<32 hex>`, as OpenAI's), errors and refusals by the other
    middleware included, so a client can quote it in a report. A route that chose its own id (the synchronous
    calls record usage under it) keeps it: one id per answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", random_request_id().encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class _Exchange:
    """How far one request's answer got: started, bytes handed to the server, complete."""

    def __init__(self) -> None:
        self.started = False
        self.complete = False
        self.sent = 0
        self.length: int | None = None
        self.logged = False

    def note(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            length = dict(message.get("headers", [])).get(b"content-length", b"")
            self.length = int(length) if length.isdigit() else None
        elif message["type"] == "http.response.body":
            self.sent += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)


class DisconnectLog:
    """Logs one line (INFO) when a client disconnects before its answer is complete: while it still sends the
    request (an upload cut short, which stores nothing) or while it reads the answer (a download closed early).

    The server reports the disconnect as an `http.disconnect` message to whoever reads the request next: the
    route reading its body, or the file response watching the connection while it streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange()

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not exchange.complete and not exchange.logged:
                exchange.logged = True
                log.info(_gone(scope, exchange))
            return message

        async def watched_send(message: Message) -> None:
            exchange.note(message)
            await send(message)

        await self.app(scope, watched_receive, watched_send)


def _gone(scope: Scope, exchange: _Exchange) -> str:
    what = f"{scope.get('method', '?')} {scope.get('path', '?')}"
    client = scope.get("client")
    who = f"client {client[0]}:{client[1]}" if client else "client"
    if not exchange.started:
        return f"{who} disconnected before it had sent all of {what}; the request was dropped"
    total = f" of {exchange.length:,}" if exchange.length is not None else ""
    return f"{who} disconnected while reading the answer to {what} ({exchange.sent:,}{total} bytes sent)"
