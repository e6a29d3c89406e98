"""`GET /v1/models` and `GET /v1/models/{model}`: the models the emulator serves, in OpenAI's shapes.

With the `simulate` executor they are the configured `models`; a dated snapshot of one (`gpt-4o-mini-2024-07-18`)
is not listed but is found, as a request naming it is served. With the upstream executor the upstream decides: its
own `GET /models`, renamed back through `upstream_models` (see `UpstreamExecutor.models`), and a model is looked up
in that list, since servers such as vLLM and llama.cpp have no `GET /models/{model}`. An upstream that fails gives a
502 envelope.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batchgen.emulator.apierror import APIError
from batchgen.emulator.engine import Engine

OWNER = "system"  # what OpenAI answers for its current models


def list_models(engine: Engine, created: int) -> list[dict[str, Any]]:
    """The served models; `created` stands for the date of a simulated model (the emulator has none to tell)."""
    upstream = _upstream_models(engine)
    if upstream is not None:
        return upstream()
    return [_model(name, created) for name in engine.config.models]


def get_model(engine: Engine, model: str, created: int) -> dict[str, Any]:
    """One served model; APIError 404 `model_not_found` for another name."""
    upstream = _upstream_models(engine)
    if upstream is not None:
        for entry in upstream():
            if entry["id"] == model:
                return entry
    elif engine.config.is_known_model(model):
        return _model(model, created)
    raise APIError(404, f"The model '{model}' does not exist", code="model_not_found", param="model")


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


def _upstream_models(engine: Engine) -> Callable[[], list[dict[str, Any]]] | None:
    """The executor's `models` when it forwards to an upstream server (under the per-line fault wrapper)."""
    inner = getattr(engine.executor, "inner", engine.executor)
    models = getattr(inner, "models", None)
    return models if callable(models) else None
