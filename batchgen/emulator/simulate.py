"""The `simulate` executor: offline, deterministic for a seed, $0.

Chat completions get content from `compose` (schema-valid JSON built from the prompt's seed examples, or text),
usage counted with the real tokenizer (prompt tokens exactly as `batchgen.recipe.tokens.count_messages`, plus
`response_format_tokens` for a json_schema format; cached tokens as OpenAI's prompt caching gives them, see
`promptcache`), and
`finish_reason: "length"` when `max_tokens` / `max_completion_tokens` cuts the answer. Embeddings are deterministic
unit vectors (float lists, or base64 float32 as the SDK asks by default).
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from collections.abc import Callable
from typing import Any

import orjson

from batchgen.emulator import ids
from batchgen.emulator.compose import Composer
from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.executor import SYNC_BATCH, LineRequest, LineResult, error_body, line_rng
from batchgen.emulator.promptcache import CACHE_MIN_TOKENS, PromptCache
from batchgen.emulator.tokencount import TokenCounter, _content_text
from batchgen.emulator.validate import input_tokens
from batchgen.recipe.tokens import response_format_tokens

_MAX_CHOICES = 8


def _invalid(message: str, param: str | None, code: str | None = "invalid_value") -> LineResult:
    return LineResult(400, error_body(message, "invalid_request_error", code, param))


class SimulateExecutor:
    """Answers chat and embeddings requests without a model."""

    name = "simulate"

    def __init__(self, config: Callable[[], EmulatorConfig], counter: TokenCounter) -> None:
        self._config = config
        self._counter = counter
        self._composer = Composer()
        self.prompt_cache = PromptCache(counter)

    def prepare(self, batch_id: str, first_index: int, lines: list[bytes]) -> bool:
        """Note the prompt prefixes of a batch's input lines before any of them runs (input order decides which
        line of a batch is the first to have a prefix); False when the earlier lines are needed first."""
        if not self._config().prompt_caching:
            return True
        return self.prompt_cache.prepare(batch_id, first_index, [self._line_hashes(raw) for raw in lines])

    def forget(self, batch_id: str) -> None:
        self.prompt_cache.forget(batch_id)

    def _line_hashes(self, raw: bytes) -> tuple[str, list[bytes]]:
        try:
            item = orjson.loads(raw)
            body = item["body"]
            model, messages = body.get("model"), body.get("messages")
            if item.get("url") != "/v1/chat/completions" or not isinstance(model, str) \
                    or not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                return "", []
            response_format = body.get("response_format")
            if self._counter.messages(messages, model) + response_format_tokens(response_format, model) \
                    < CACHE_MIN_TOKENS:  # counting is cheaper than hashing (the counter keeps chunk counts)
                return model, []
            return model, self.prompt_cache.hashes(messages, model, response_format)
        except (ValueError, KeyError, TypeError, AttributeError):
            return "", []

    def execute(self, request: LineRequest) -> LineResult:
        body = request.body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
        if request.endpoint == "/v1/chat/completions":
            return self._chat(request, model)
        if request.endpoint == "/v1/embeddings":
            return self._embeddings(request, model)
        return LineResult(400, error_body(f"The simulate executor does not serve {request.endpoint}.",
                                          "invalid_request_error", "unsupported_endpoint"))

    def _chat(self, request: LineRequest, model: str) -> LineResult:
        body = request.body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return _invalid("'messages' must be a non-empty array of message objects.", "messages")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            return _invalid("max_tokens must be a positive integer.", "max_tokens")
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
            return _invalid("n must be between 1 and 128.", "n")
        config = self._config()
        analysis = self._composer.prompt([_content_text(m.get("content")) for m in messages])
        count = min(analysis.count or config.default_examples, config.max_examples)
        rng = line_rng(config.seed, "chat", request.custom_id)
        choices, completion = [], 0
        for index in range(min(n, _MAX_CHOICES)):
            text = self._composer.content(analysis, body.get("response_format"), count, rng,
                                          (config.judge_low_rate, config.seed))
            text, tokens, reason = self._truncate(text, model, limit)
            completion += tokens
            choices.append({"index": index, "message": {"role": "assistant", "content": text, "refusal": None,
                                                        "annotations": []},
                            "logprobs": None, "finish_reason": reason})
        prompt = self._counter.messages(messages, model) + response_format_tokens(body.get("response_format"), model)
        cached = 0
        if config.prompt_caching and prompt >= CACHE_MIN_TOKENS:
            hashes = self.prompt_cache.hashes(messages, model, body.get("response_format"))
            batch = None if request.batch_id == SYNC_BATCH else request.batch_id
            cached = self.prompt_cache.cached(model, hashes, request.created, config.prompt_cache_ttl_seconds,
                                              batch, request.index)
        return LineResult(200, {
            "id": ids.completion_id(config.seed, request.batch_id, request.index, request.custom_id),
            "object": "chat.completion", "created": request.created, "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0,
                                                    "rejected_prediction_tokens": 0}},
            "service_tier": "default", "system_fingerprint": "fp_emulator",
        })

    def _truncate(self, text: str, model: str, limit: int | None) -> tuple[str, int, str]:
        tokens = self._counter.text(text, model, unique=True)
        if limit is None or tokens <= limit:
            return text, tokens, "stop"
        encoding = self._counter.encoding(model)
        return encoding.decode(encoding.encode_ordinary(text)[:limit]), limit, "length"

    def _embeddings(self, request: LineRequest, model: str) -> LineResult:
        body = request.body
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)) \
            else raw
        if not isinstance(inputs, list) or not inputs or any(i in ("", []) for i in inputs):
            return _invalid("'input' must be a non-empty string or array.", "input")
        if len(inputs) > 2048:
            return _invalid("'input' holds more than 2048 items.", "input")
        dims = body.get("dimensions") or (3072 if model.endswith("-large") else 1536)
        if not isinstance(dims, int) or not 1 <= dims <= 3072:
            return _invalid("'dimensions' must be an integer between 1 and 3072.", "dimensions")
        as_base64 = body.get("encoding_format") == "base64"
        seed = self._config().seed
        data = [{"object": "embedding", "index": i, "embedding": _vector(seed, model, item, dims, as_base64)}
                for i, item in enumerate(inputs)]
        tokens = input_tokens(inputs, model, self._counter)
        return LineResult(200, {"object": "list", "data": data, "model": model,
                                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _vector(seed: int, model: str, item: Any, dims: int, as_base64: bool) -> Any:
    rng = line_rng(seed, "embedding", model, item)
    raw = array("h", rng.randbytes(2 * dims))
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    values = [v / norm for v in raw]
    if not as_base64:
        return values
    packed = array("f", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
