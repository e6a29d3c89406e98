"""Input-file validation of a batch (spec §4): the first bad line ends the batch in `failed` with one error.

Streams the file once, holding only the set of custom_ids, counts the prompt tokens the batch would enqueue and
hashes the bytes (the digest seeds the batch's faults, so the same file gets the same faults under one seed).
Codes the spec leaves open are emulator choices: `too_many_tasks`, `empty_batch`, `file_too_large`.

A batch created on Azure's paths (`azure`) takes Azure's lines: the url with or without `/v1`
(`/chat/completions`), and a deployment name as `model`, which the configured deployments map to a model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.tokencount import TokenCounter

AZURE_KEY = "azure"  # in Run.extra: the batch was created on Azure's paths
DEPLOYMENT_KEY = "deployment"  # in Run.extra: the Azure deployment its lines name, when it maps to another model


@dataclass
class Verdict:
    """The outcome: `error` (a BatchError dict) or the totals and the content digest of a valid file."""

    error: dict[str, Any] | None = None
    total: int = 0
    model: str | None = None
    deployment: str | None = None  # an Azure batch: the deployment name its lines give as `model`
    tokens: int = 0
    digest: str = ""


def batch_error(code: str, message: str, param: str | None = None, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def operation(url: str) -> str:
    """The OpenAI path of a URL Azure takes with or without `/v1`: `/chat/completions` -> `/v1/chat/completions`."""
    return url if url.startswith("/v1/") else "/v1" + url


def validate_input(path: Path, endpoint: str, config: EmulatorConfig, counter: TokenCounter,
                   azure: bool = False) -> Verdict:
    """Check every line of the input file against the batch endpoint and the configured limits."""
    size = path.stat().st_size
    if size > config.max_batch_bytes:
        return Verdict(batch_error("file_too_large", f"The input file is {size} bytes; the limit is "
                                   f"{config.max_batch_bytes} bytes.", "input_file_id"))
    seen: set[str] = set()
    verdict = Verdict()
    line_no = 0
    content = hashlib.sha256()
    with open(path, "rb") as handle:
        for raw in handle:
            content.update(raw)
            line_no += 1
            if not raw.strip():
                continue
            verdict.total += 1
            if verdict.total > config.max_lines:
                return Verdict(batch_error("too_many_tasks", f"The input file has more than {config.max_lines} "
                                           "requests; split it into several batches.", None, None))
            error = _check_line(raw, line_no, endpoint, config, seen, verdict, counter, azure)
            if error is not None:
                return Verdict(error)
    if verdict.total == 0:
        return Verdict(batch_error("empty_batch", "The input file contains no requests.", "input_file_id"))
    verdict.digest = content.hexdigest()
    return verdict


def _check_line(raw: bytes, n: int, endpoint: str, config: EmulatorConfig, seen: set[str], verdict: Verdict,
                counter: TokenCounter, azure: bool) -> dict[str, Any] | None:
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        item = None
    if not isinstance(item, dict):
        return batch_error("invalid_json_line", "This line is not parseable as valid JSON.", None, n)
    custom_id = item.get("custom_id")
    if custom_id is None:
        return batch_error("missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id", n)
    if not isinstance(custom_id, str):
        return batch_error("invalid_request", "'custom_id' must be a string.", "custom_id", n)
    if custom_id in seen:
        return batch_error("duplicate_custom_id", f"The custom_id '{custom_id}' is used more than once in this "
                           "file; custom_id values must be unique within a batch.", "custom_id", n)
    seen.add(custom_id)
    if item.get("method") != "POST":
        return batch_error("invalid_request", "Only the POST method is supported.", "method", n)
    url = item.get("url")
    if url != endpoint and not (azure and isinstance(url, str) and operation(url) == operation(endpoint)):
        return batch_error("invalid_url", "The URL provided for this request does not prefix-match the batch "
                           f"endpoint '{endpoint}'.", "url", n)
    body = item.get("body")
    if not isinstance(body, dict):
        return batch_error("invalid_request", "Missing required parameter: 'body'.", "body", n)
    return _check_body(body, n, config, verdict, counter, azure)


def _check_body(body: dict[str, Any], n: int, config: EmulatorConfig, verdict: Verdict,
                counter: TokenCounter, azure: bool) -> dict[str, Any] | None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return batch_error("invalid_request", "Missing required parameter: 'model'.", "body.model", n)
    named = verdict.deployment if azure else verdict.model
    if named is not None and model != named:
        return batch_error("mismatched_model", f"The model '{model}' differs from '{named}' used earlier in "
                           "this file; a batch may only use one model.", "body.model", n)
    if azure:
        deployment, mapped = model, config.deployment_model(model)
        if mapped is None:
            return batch_error("model_not_found", f"The deployment '{model}' does not exist; create a GlobalBatch "
                               "deployment of that name, or name one that exists.", "body.model", n)
        verdict.deployment, model = deployment, mapped
    if not config.is_known_model(model) and not (azure and not config.deployments):
        return batch_error("model_not_found", f"The model '{model}' does not exist or you do not have access to it.",
                           "body.model", n)
    if body.get("stream") is True:
        return batch_error("streaming_unsupported", "Streaming is not supported in the Batch API.", "body.stream", n)
    verdict.model = model
    verdict.tokens += prompt_tokens(body, model, counter)
    return None


def prompt_tokens(body: dict[str, Any], model: str, counter: TokenCounter) -> int:
    """The prompt tokens a request enqueues (chat messages, embedding or completion inputs)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return counter.messages([m for m in messages if isinstance(m, dict)], model)
    value = body.get("input", body.get("prompt"))
    return input_tokens(value, model, counter)


def input_tokens(value: Any, model: str, counter: TokenCounter) -> int:
    """Tokens of an embeddings/completions input: a string, strings, token ids, or lists of token ids."""
    if isinstance(value, str):
        return counter.text(value, model)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(input_tokens(v, model, counter) for v in value if isinstance(v, (str, list)))
    return 0
