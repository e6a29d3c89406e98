"""HTTP helpers shared by the emulator's routes: the JSON response, the error guard and request parsing.

Imports nothing else of the emulator but its API error type, so the API routes (`app`) and the test-control
routes (`control`) both build on it without importing each other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from batchgen.emulator.apierror import APIError, bad_request, error_envelope

log = logging.getLogger("batchgen.emulator")
Handler = Callable[[Request], Awaitable[Response]]


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(error: APIError) -> Response:
    return JSON(error.envelope(), status_code=error.status, headers=error.headers)


def guarded(handler: Handler) -> Handler:
    """Turn APIError into its envelope and any other exception into a 500 envelope (logged, no traceback out).

    A client gone before its request body was complete gets an answer nobody reads; `DisconnectLog` (middleware)
    writes the one log line about it."""

    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except APIError as error:
            return error_response(error)
        except ClientDisconnect:
            return Response(status_code=400)
        except Exception:
            log.exception("emulator request %s %s failed", request.method, request.url.path)
            return JSON(error_envelope("The server had an error while processing your request.", "server_error"),
                        status_code=500)

    return wrapper


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as error:
        raise bad_request("We could not parse the JSON body of your request. (HINT: This likely means you "
                          "aren't using your HTTP library correctly.)") from error


def int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as error:
        raise bad_request(f"Invalid '{name}': expected an integer.", param=name) from error
