"""The test-control API under `/_emulator/` (off unless enabled; behind the bearer token when one is set), and
`EmulatorControl`, a small Python handle for it built on urllib.

    GET  /_emulator/state                      {"now", "config", "executor"}
    POST /_emulator/clock     {"advance": s} | {"set": t}   move emulated time, then let due work run
    POST /_emulator/config    {<config keys>}               change config (faults, latencies, limits) live
    POST /_emulator/settle    {"timeout": s}                run until nothing is due now
    GET  /_emulator/batches/{id}                            the batch, free of injected HTTP faults
    POST /_emulator/batches/{id}/force  {"action": "expire"} | {"action": "stuck_finalizing", "seconds": s}
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batchgen.emulator.apierror import bad_request
from batchgen.emulator.config import ConfigError
from batchgen.emulator.engine import Engine

TERMINAL = ("failed", "completed", "expired", "cancelled")


def control_routes(engine: Engine) -> list[Route]:
    from batchgen.emulator.app import JSON, guarded, json_body

    def state() -> dict[str, Any]:
        return {"now": engine.clock.now(), "config": engine.config.to_dict(), "executor": engine.executor.name}

    async def get_state(request: Request) -> Response:
        return JSON(state())

    async def clock(request: Request) -> Response:
        body = await json_body(request)
        try:
            if "advance" in body:
                engine.clock.advance(float(body["advance"]))
            elif "set" in body:
                engine.clock.set(float(body["set"]))
        except (TypeError, ValueError) as error:
            raise bad_request(f"Bad clock change: {error}") from error
        settled = await run_in_threadpool(engine.settle, float(body.get("timeout", 10.0)))
        return JSON({"now": engine.clock.now(), "settled": settled})

    async def config(request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise bad_request("Expected a JSON object of config keys.")
        try:
            engine.set_config(engine.config.updated(body))
        except ConfigError as error:
            raise bad_request(str(error)) from error
        return JSON(state())

    async def settle(request: Request) -> Response:
        body = await json_body(request)
        settled = await run_in_threadpool(engine.settle, float(body.get("timeout", 10.0)))
        return JSON({"now": engine.clock.now(), "settled": settled})

    async def batch(request: Request) -> Response:
        return JSON(await run_in_threadpool(engine.get_batch, request.path_params["batch_id"]))

    async def force(request: Request) -> Response:
        body = await json_body(request)
        batch = await run_in_threadpool(engine.force, request.path_params["batch_id"], str(body.get("action")),
                                        float(body.get("seconds", 0.0)))
        return JSON(batch)

    table = [("/_emulator/state", get_state, ["GET"]), ("/_emulator/clock", clock, ["POST"]),
             ("/_emulator/config", config, ["POST"]), ("/_emulator/settle", settle, ["POST"]),
             ("/_emulator/batches/{batch_id}", batch, ["GET"]),
             ("/_emulator/batches/{batch_id}/force", force, ["POST"])]
    return [Route(path, guarded(handler), methods=methods) for path, handler, methods in table]


class ControlError(RuntimeError):
    """The control API answered with an error."""


class EmulatorControl:
    """Drives an emulator from tests: clock, config and faults, forced states, waiting for a status."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        root = base_url.rstrip("/")
        self.root = root[:-3] if root.endswith("/v1") else root
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.root + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                detail = error.read().decode("utf-8", "replace")
            raise ControlError(f"{method} {path}: HTTP {error.code} {detail}") from None

    def state(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_emulator/state"))

    def now(self) -> float:
        return float(self.state()["now"])

    def advance(self, seconds: float, timeout: float = 10.0) -> float:
        """Move emulated time forward and let the work that became due run; returns the new now."""
        return float(self._call("POST", "/_emulator/clock", {"advance": seconds, "timeout": timeout})["now"])

    def set_time(self, when: float, timeout: float = 10.0) -> float:
        return float(self._call("POST", "/_emulator/clock", {"set": when, "timeout": timeout})["now"])

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change config keys live (fault rates, latencies, limits, time_scale)."""
        return dict(self._call("POST", "/_emulator/config", changes)["config"])

    def settle(self, timeout: float = 10.0) -> bool:
        return bool(self._call("POST", "/_emulator/settle", {"timeout": timeout})["settled"])

    def expire_now(self, batch_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/_emulator/batches/{batch_id}/force", {"action": "expire"}))

    def stuck_finalizing(self, batch_id: str, seconds: float) -> dict[str, Any]:
        return dict(self._call("POST", f"/_emulator/batches/{batch_id}/force",
                               {"action": "stuck_finalizing", "seconds": seconds}))

    def batch(self, batch_id: str) -> dict[str, Any]:
        """The batch as `GET /v1/batches/{id}` shows it, but never subject to injected HTTP faults."""
        return dict(self._call("GET", f"/_emulator/batches/{batch_id}"))

    def wait_for(self, batch_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 30.0) -> dict[str, Any]:
        """Poll (without advancing the clock) until the batch reaches one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            batch = self.batch(batch_id)
            if batch["status"] in statuses:
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is {batch['status']}, not {'/'.join(statuses)}")
            time.sleep(0.02)
