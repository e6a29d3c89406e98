"""Simulated judge answers: scores for the examples a judge request shows, deterministic and with a set share of low
ones, so that a test can force rejections.

A request is a judge's when its json_schema asks for a list of objects with a numeric `score` (as a judge stage's
`{"scores": [{"index", "score", "reason"}]}` does), or, without a schema, when its last message asks for `"scores"`
(then each item has an index, a score and a reason). It is answered with one item a shown example (the examples
found in the prompt, of their most common format): `index` its place, a `score` and a `reason`. An example's score
depends on the emulator's seed and the example itself, never on the request, so a retry scores it the same: it
is low (in the bottom three points of the scale) for about `judge_low_rate` of the examples, high (the top three)
for the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from batchgen.emulator.schema_fill import resolve

SCALE = (1, 10)  # a schema's minimum and maximum of `score` replace it
_LOW = ("The assistant's reply does not do what the request asks",
        "The reply states a result the request gives no ground for",
        "The date or the task in the reply does not match the request")
_HIGH = ("The reply does what the request asks, in the expected format",
         "Clear request, and a correct reply in the expected format",
         "The reply follows from the request and keeps the response format")


JUDGMENT_ITEMS: dict[str, Any] = {"type": "object", "properties": {
    "index": {"type": "integer"}, "score": {"type": "integer"}, "reason": {"type": "string"}}}


def judgment_array(schema: Any) -> tuple[str | None, dict[str, Any]] | None:
    """(the key holding the list, None when the schema is the list; the item schema) of a judge's schema, else
    None."""
    root = schema if isinstance(schema, dict) else {}
    found = resolve(schema, root)
    if not isinstance(found, Mapping):
        return None
    if found.get("type") == "array" and _scores(resolve(found.get("items"), root)):
        return None, resolve(found.get("items"), root)
    for key, value in (found.get("properties") or {}).items():
        value = resolve(value, root)
        if isinstance(value, Mapping) and value.get("type") == "array":
            items = resolve(value.get("items"), root)
            if _scores(items):
                return key, items
    return None


def _scores(items: Any) -> bool:
    if not isinstance(items, Mapping):
        return False
    score = (items.get("properties") or {}).get("score")
    return isinstance(score, Mapping) and score.get("type") in ("integer", "number")


def judgments(examples: list[dict[str, Any]], key: str | None, items: dict[str, Any], low_rate: float,
              seed: int) -> Any:
    """The answer of a judge shown `examples` (see the module docstring)."""
    score_schema = items["properties"]["score"]
    low, high = int(score_schema.get("minimum", SCALE[0])), int(score_schema.get("maximum", SCALE[1]))
    out = []
    for index, example in enumerate(examples):
        digest = hashlib.sha256(f"{seed}\0".encode() + orjson.dumps(example, option=orjson.OPT_SORT_KEYS)).digest()
        draw = int.from_bytes(digest[:8], "big") / 2 ** 64
        step = digest[8] % 3
        poor = draw < low_rate
        item: dict[str, Any] = {}
        for name in items.get("properties", {}):
            if name == "index":
                item[name] = index
            elif name == "score":
                item[name] = min(low + step, high) if poor else max(high - step, low)
            elif name == "reason":
                item[name] = (_LOW if poor else _HIGH)[digest[9] % 3]
        out.append(item)
    return out if key is None else {key: out}
