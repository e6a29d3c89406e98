"""HTTP helpers shared by the emulator's routes: the JSON response, the error guard and request parsing.

Imports nothing else of the emulator but its API error type and `fsutil`'s test for a full disk, so the API routes
(`app`) and the test-control routes (`control`) both build on it without importing each other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from batchgen.emulator.apierror import APIError, bad_request, disk_full, error_envelope
from batchgen.emulator.fsutil import out_of_space

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

    A write the disk refused (full, over quota, at the file size limit) is no bug: its 500 says so, and its log
    line names the file, without a traceback; the writers leave nothing of the request behind. A client gone
    before its request body was complete gets an answer nobody reads; `DisconnectLog` (middleware) writes the one
    log line about it."""

    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except APIError as error:
            return error_response(error)
        except ClientDisconnect:
            return Response(status_code=400)
        except OSError as error:
            if not out_of_space(error):
                log.exception("emulator request %s %s failed", request.method, request.url.path)
                return _server_error()
            log.warning("%s %s answered 500: %s while writing %s; nothing of it was stored", request.method,
                        request.url.path, error.strerror, error.filename)
            return error_response(disk_full(error, "nothing of this request was stored"))
        except Exception:
            log.exception("emulator request %s %s failed", request.method, request.url.path)
            return _server_error()

    return wrapper


def _server_error() -> Response:
    return JSON(error_envelope("The server had an error while processing your request.", "server_error"),
                status_code=500)


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
