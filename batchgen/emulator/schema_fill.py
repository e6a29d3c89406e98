"""A small JSON-schema subset, enough for structured-output schemas: check a value, or make one up.

Covers `type` (one or a list), `enum`, `const`, `properties`/`required`/`additionalProperties`, `items`,
`anyOf`/`oneOf`, `minItems`/`maxItems` and local `$ref`s (`#/$defs/...`, `#/definitions/...`).
"""

from __future__ import annotations

import random
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


def resolve(schema: Any, root: dict[str, Any]) -> Any:
    """Follow a local $ref (one level at a time, as often as needed)."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema, seen = target, seen + 1
    return schema


def conforms(value: Any, schema: Any, root: dict[str, Any] | None = None) -> bool:
    """Whether `value` is valid against `schema` (the subset above; unknown keywords pass)."""
    root = root if root is not None else (schema if isinstance(schema, dict) else {})
    schema = resolve(schema, root)
    if not isinstance(schema, dict):
        return True
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(conforms(value, s, root) for s in schema[key]):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if "type" in schema and not _type_ok(value, schema["type"]):
        return False
    if isinstance(value, dict):
        return _object_ok(value, schema, root)
    if isinstance(value, list):
        items = schema.get("items")
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return False
        return items is None or all(conforms(v, items, root) for v in value)
    return True


def _type_ok(value: Any, expected: Any) -> bool:
    names = expected if isinstance(expected, list) else [expected]
    for name in names:
        kinds = _TYPES.get(name, ())
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if isinstance(value, kinds):
            return True
    return False


def _object_ok(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any]) -> bool:
    props = schema.get("properties", {})
    if any(key not in value for key in schema.get("required", [])):
        return False
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            if not conforms(item, props[key], root):
                return False
        elif extra is False:
            return False
        elif isinstance(extra, dict) and not conforms(item, extra, root):
            return False
    return True


def generate(schema: Any, rng: random.Random, words: list[str], root: dict[str, Any] | None = None,
             depth: int = 0) -> Any:
    """A value valid against `schema`, with strings made of `words`."""
    root = root if root is not None else (schema if isinstance(schema, dict) else {})
    schema = resolve(schema, root)
    if not isinstance(schema, dict) or depth > 12:
        return None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [s for s in schema[key] if resolve(s, root).get("type") != "null"] or schema[key]
            return generate(options[0], rng, words, root, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {key: generate(sub, rng, words, root, depth + 1) for key, sub in props.items()}
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = max(low, min(int(schema.get("maxItems", 3)), 3))
        return [generate(schema.get("items", {}), rng, words, root, depth + 1)
                for _ in range(rng.randint(low, high))]
    return _scalar(kind, rng, words)


def _scalar(kind: str, rng: random.Random, words: list[str]) -> Any:
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return sentence(rng, words)


def sentence(rng: random.Random, words: list[str], low: int = 4, high: int = 12) -> str:
    """A made-up sentence from the given vocabulary."""
    pool = words or ["sample", "value", "text", "item", "data", "example"]
    chosen = [rng.choice(pool) for _ in range(rng.randint(low, high))]
    text = " ".join(chosen)
    return text[:1].upper() + text[1:] + "."
