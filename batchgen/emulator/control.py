"""The test-control API under `/_emulator/` (off unless enabled; behind the bearer token when one is set);
`batchgen.emulator.control_client.EmulatorControl` is the Python handle for it.

    GET  /_emulator/state                      {"now", "config", "executor"}
    POST /_emulator/clock     {"advance": s} | {"set": t}   move emulated time, then let due work run
    POST /_emulator/config    {<config keys>}               change config (faults, latencies, limits) live
    POST /_emulator/settle    {"timeout": s}                run until nothing is due now
    GET  /_emulator/batches/{id}                            the batch, free of injected HTTP faults
    POST /_emulator/batches/{id}/force  {"action": "expire"} | {"action": "stuck_finalizing", "seconds": s}
    POST /_emulator/usage/adjust  {"day", "model", "input_tokens", "cached_tokens", "output_tokens", "requests",
                                   "batch", "cost_usd"}     plant a usage record (numbers may be negative)
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batchgen.emulator.apierror import bad_request
from batchgen.emulator.config import ConfigError
from batchgen.emulator.engine import Engine
from batchgen.emulator.http import JSON, guarded, json_body


def control_routes(engine: Engine) -> list[Route]:
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

    async def adjust(request: Request) -> Response:
        return JSON(await run_in_threadpool(engine.adjust_usage, await json_body(request)))

    table = [("/_emulator/state", get_state, ["GET"]), ("/_emulator/usage/adjust", adjust, ["POST"]),
             ("/_emulator/clock", clock, ["POST"]),
             ("/_emulator/config", config, ["POST"]), ("/_emulator/settle", settle, ["POST"]),
             ("/_emulator/batches/{batch_id}", batch, ["GET"]),
             ("/_emulator/batches/{batch_id}/force", force, ["POST"])]
    return [Route(path, guarded(handler), methods=methods) for path, handler, methods in table]
