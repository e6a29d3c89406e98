"""Judge an embeddings answer: one vector, of the size its request asked for, of finite numbers.

Pure functions and small values, no I/O, as in `validate` (collect calls them on every line of an output file).
An answer (the `response.body` of an output line: an OpenAI `list` of `embedding` objects) yields one example,
`{"input": <the text its request sent>, "embedding": [numbers]}`, or a response-level reason and no example:

    no_embedding     no `data`, or not exactly one embedding in it (a request embeds one text)
    embedding_size   a vector of another size than the model's, or than the `dimensions` the request asked for
    embedding_value  a value that is not a number, NaN or infinite, or base64 that is not float32 values

None of the chat checks (roles, turns, patterns, JSON examples) apply. A base64 vector (`encoding_format =
"base64"`) is decoded as little-endian float32, the API's encoding. The content hash that dedupe compares is the
input text's (normalised in the "normalized" mode), so one text embedded twice is a duplicate whatever the vectors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchgen.dataset.reasons import EMBEDDING_SIZE, EMBEDDING_VALUE, NO_EMBEDDING, DedupeMode, Reason
from batchgen.dataset.validate import normalize_text

# A judged example, as `validate.judge_examples` gives them: (compact JSON, content hash, valid, category, reason).
JudgedExample = tuple[str, str | None, bool, str | None, str | None]


@dataclass(frozen=True)
class EmbeddingRules:
    """What the answers of one batch must be, and what their requests sent.

    size     numbers in every vector; None when the model's size is not known (then any non-empty vector passes)
    dedupe   how the input text is hashed for duplicate detection: "normalized", else exactly
    inputs   custom_id -> the input text its request sent (an answer does not repeat it)
    """

    size: int | None
    dedupe: DedupeMode = "exact"
    inputs: Mapping[str, str] = field(default_factory=dict)


def decode_vector(value: Any) -> list[float] | Reason:
    """The numbers of one `embedding` field (a JSON array, or base64 of float32s), or why it holds none."""
    if isinstance(value, str):
        return _from_base64(value)
    if not isinstance(value, list):
        return Reason(EMBEDDING_VALUE, "Embedding is neither numbers nor base64", _kind(value))
    if all(type(item) is float for item in value):
        return value
    for index, item in enumerate(value):
        if type(item) is not float and type(item) is not int:  # bool is a subclass of int, not a number here
            return Reason(EMBEDDING_VALUE, "Embedding value is not a number", f"{_kind(item)} at {index}")
    return [float(item) for item in value]


def _from_base64(text: str) -> list[float] | Reason:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        return Reason(EMBEDDING_VALUE, "Embedding is not valid base64", str(error))
    if len(raw) % 4:
        return Reason(EMBEDDING_VALUE, "Embedding is not float32 values", f"{len(raw)} bytes, not a multiple of 4")
    values = array("f")
    values.frombytes(raw)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def check_vector(vector: list[float], size: int | None) -> Reason | None:
    """Why a decoded vector is not a usable embedding of `size` numbers (None: any non-empty size), or None."""
    if size is not None and len(vector) != size:
        return Reason(EMBEDDING_SIZE, "Wrong embedding size", f"{len(vector)} numbers, expected {size}")
    if not vector:
        return Reason(EMBEDDING_SIZE, "Empty embedding")
    # One C-speed sum finds NaN and infinities (they make it non-finite); only then is the vector searched, since
    # finite numbers large enough to overflow the sum would make it infinite too.
    if not math.isfinite(sum(vector)):
        for index, value in enumerate(vector):
            if not math.isfinite(value):
                return Reason(EMBEDDING_VALUE, "Embedding value is not finite", f"{value} at {index}")
    return None


def judge_embedding(body: Any, text: str, rules: EmbeddingRules) -> tuple[Reason | None, list[JudgedExample]]:
    """The answer to one embeddings request of `text`: (None, [the example]) or (the reason, [])."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        return Reason(NO_EMBEDDING, "No embedding in the answer"), []
    if len(data) != 1:
        return Reason(NO_EMBEDDING, "Wrong number of embeddings", f"{len(data)}, expected 1"), []
    item = data[0]
    if not isinstance(item, dict) or "embedding" not in item:
        return Reason(NO_EMBEDDING, "No embedding in the answer", "data[0] has no embedding"), []
    vector = decode_vector(item["embedding"])
    if isinstance(vector, Reason):
        return vector, []
    reason = check_vector(vector, rules.size)
    if reason is not None:
        return reason, []
    content = orjson.dumps({"input": text, "embedding": vector}).decode()
    return None, [(content, input_hash(text, rules.dedupe), True, None, None)]


def input_hash(text: str, mode: str = "exact") -> str:
    """128-bit hex hash of an input text (normalised in "normalized" mode, else exact): the dedupe key."""
    key = normalize_text(text) if mode == "normalized" else text
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _kind(value: Any) -> str:
    """A JSON value's type, as JSON names it."""
    if value is None:
        return "null"
    return {bool: "boolean", str: "string", dict: "object", list: "array"}.get(type(value), type(value).__name__)


__all__ = ["EmbeddingRules", "JudgedExample", "check_vector", "decode_vector", "input_hash", "judge_embedding"]
