"""The HTTP app: the Files, Batches, Models, chat and embeddings endpoints of the API under /v1, and the
organization's Usage and Costs endpoints (admin key only). Azure OpenAI's paths reach the same routes
(middleware.AzureMiddleware), marked so that batches take Azure's lines and a deployment name stands for a model.

Every non-2xx answer is the API's error envelope; bad input never produces a traceback or a 500.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from batchgen.emulator import ids
from batchgen.emulator.apierror import APIError, bad_request, error_envelope
from batchgen.emulator.engine import Engine
from batchgen.emulator.executor import SYNC_BATCH, LineRequest
from batchgen.emulator.http import JSON, Handler, guarded, int_param, json_body
from batchgen.emulator.middleware import AZURE_SCOPE
from batchgen.emulator.models import get_model, list_models
from batchgen.emulator.upload import receive_upload
from batchgen.emulator.usage import costs_page, usage_page

USAGE_PATH = "/v1/organization/usage/completions"
COSTS_PATH = "/v1/organization/costs"
ADMIN_PATHS = (USAGE_PATH, COSTS_PATH)  # answered only with an admin key (see middleware.AuthMiddleware)


def api_routes(engine: Engine) -> list[Route]:
    """The /v1 routes."""

    async def files_create(request: Request) -> Response:
        meta = await receive_upload(request, engine.files, engine.config, int(engine.clock.now()))
        return JSON(meta)

    async def files_list(request: Request) -> Response:
        q = request.query_params
        page = engine.files.list(purpose=q.get("purpose"), limit=int_param(request, "limit", 10_000),
                                 order=q.get("order", "desc"), after=q.get("after"))
        return JSON(page)

    async def files_get(request: Request) -> Response:
        return JSON(engine.files.get(request.path_params["file_id"]))

    async def files_content(request: Request) -> Response:
        meta = engine.files.get(request.path_params["file_id"])
        return FileResponse(engine.files.data_path(meta["id"]), media_type="application/octet-stream",
                            filename=meta["filename"], content_disposition_type="attachment")

    async def files_delete(request: Request) -> Response:
        return JSON(engine.files.delete(request.path_params["file_id"]))

    async def batches_create(request: Request) -> Response:
        body = await json_body(request)
        return JSON(await run_in_threadpool(engine.create_batch, body, AZURE_SCOPE in request.scope))

    async def batches_list(request: Request) -> Response:
        page = await run_in_threadpool(engine.list_batches, request.query_params.get("after"),
                                       int_param(request, "limit", 20))
        return JSON(page)

    async def batches_get(request: Request) -> Response:
        return JSON(await run_in_threadpool(engine.get_batch, request.path_params["batch_id"]))

    async def batches_cancel(request: Request) -> Response:
        return JSON(await run_in_threadpool(engine.cancel_batch, request.path_params["batch_id"]))

    async def chat(request: Request) -> Response:
        return await _synchronous(engine, request, "/v1/chat/completions")

    async def embeddings(request: Request) -> Response:
        return await _synchronous(engine, request, "/v1/embeddings")

    started = int(engine.clock.now())

    async def models_list(request: Request) -> Response:
        return JSON({"object": "list", "data": await run_in_threadpool(list_models, engine, started)})

    async def models_get(request: Request) -> Response:
        return JSON(await run_in_threadpool(get_model, engine, request.path_params["model"], started))

    async def usage_completions(request: Request) -> Response:
        body = usage_page(engine.usage.records(), request.query_params, engine.clock.now())
        return Response(body, media_type="application/json")

    async def costs(request: Request) -> Response:
        body = costs_page(engine.usage.records(), request.query_params, engine.clock.now())
        return Response(body, media_type="application/json")

    table: list[tuple[str, Handler, list[str]]] = [
        ("/v1/files", files_create, ["POST"]), ("/v1/files", files_list, ["GET"]),
        ("/v1/files/{file_id}", files_get, ["GET"]), ("/v1/files/{file_id}", files_delete, ["DELETE"]),
        ("/v1/files/{file_id}/content", files_content, ["GET"]),
        ("/v1/batches", batches_create, ["POST"]), ("/v1/batches", batches_list, ["GET"]),
        ("/v1/batches/{batch_id}", batches_get, ["GET"]),
        ("/v1/batches/{batch_id}/cancel", batches_cancel, ["POST"]),
        ("/v1/chat/completions", chat, ["POST"]), ("/v1/embeddings", embeddings, ["POST"]),
        ("/v1/models", models_list, ["GET"]), ("/v1/models/{model:path}", models_get, ["GET"]),
        (USAGE_PATH, usage_completions, ["GET"]), (COSTS_PATH, costs, ["GET"]),
    ]
    return [Route(path, guarded(handler), methods=methods) for path, handler, methods in table]


async def _synchronous(engine: Engine, request: Request, endpoint: str) -> Response:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    azure = request.scope.get(AZURE_SCOPE)
    if azure is not None:
        body = _deployed(engine, body, azure["deployment"])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not engine.config.is_known_model(model) and not (azure is not None and not engine.config.deployments):
        raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")
    if body.get("stream") is True:
        raise bad_request("Streaming is not supported by the emulator.", param="stream", code="unsupported_value")
    seed_key = ids.digest(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hex()
    line = LineRequest(endpoint, body, seed_key, 0, SYNC_BATCH, int(engine.clock.now()))
    result = await run_in_threadpool(engine.executor.execute, line)
    request_id = ids.random_request_id()
    if 200 <= result.status_code < 300:
        await run_in_threadpool(engine.record_sync, request_id, model, result.body)
    return JSON(result.body, status_code=result.status_code, headers={"x-request-id": request_id})


def _deployed(engine: Engine, body: dict[str, Any], deployment: str | None) -> dict[str, Any]:
    """An Azure request's body with its deployment (the one in the path, else the body's `model`) replaced by the
    model behind it; a deployment the configured mapping does not hold is Azure's 404 DeploymentNotFound."""
    name = deployment or body.get("model")
    if not isinstance(name, str) or not name:
        return body
    model = engine.config.deployment_model(name)
    if model is None:
        raise APIError(404, "The API deployment for this resource does not exist. If you created the deployment "
                       "within the last 5 minutes, please wait a moment and try again.", code="DeploymentNotFound")
    return {**body, "model": model}


def _health_route(identity: dict[str, Any]) -> Route:
    async def health(request: Request) -> Response:
        return JSON(identity)

    return Route("/_emulator/health", health, methods=["GET"])


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths (404) and wrong methods (405) get the envelope too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = f"Invalid URL ({request.method} {request.url.path})" if status in (404, 405) else "Server error"
    return JSON(error_envelope(message), status_code=status)


def build_app(engine: Engine, *, token: str | None = None, control: bool = False,
              identity: dict[str, Any] | None = None, admin_key: str | None = None) -> Starlette:
    """The ASGI app: /v1 routes, optional control routes, bearer auth, HTTP fault injection, a log line for
    each client that disconnects before its answer is complete, and an `x-request-id` on every answer.

    With `identity`, `GET /_emulator/health` answers it (outside /v1, so injected faults never hit it).
    The organization's Usage and Costs routes answer only an admin key: one starting `sk-admin-`, or `admin_key`.
    """
    from batchgen.emulator.control import control_routes
    from batchgen.emulator.middleware import AuthMiddleware, AzureMiddleware, DisconnectLog, FaultMiddleware, RequestId

    routes = api_routes(engine) + (control_routes(engine) if control else [])
    if identity is not None:
        routes.append(_health_route(dict(identity)))
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.add_middleware(FaultMiddleware, engine=engine)
    app.add_middleware(AuthMiddleware, token=token, admin_key=admin_key, admin_paths=ADMIN_PATHS)
    app.add_middleware(AzureMiddleware)
    app.add_middleware(DisconnectLog)
    app.add_middleware(RequestId)
    return app
