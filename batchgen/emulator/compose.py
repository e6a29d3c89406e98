"""The content of a simulated chat answer: schema-valid JSON built from the prompt's seed examples (following the
axis values the prompt names, see `follow`), a generic JSON object, or plain text. Results of the costly prompt
analysis are cached per distinct message text.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchgen.emulator.focus import Focus, merged, read_focus
from batchgen.emulator.follow import follow_examples
from batchgen.emulator.judging import JUDGMENT_ITEMS, judgment_array, judgments
from batchgen.emulator.schema_fill import conforms, generate, resolve, sentence
from batchgen.emulator.synth import (
    candidate_examples,
    convert,
    distinct_variants,
    find_json_values,
    kind_of,
    kind_of_schema,
    requested_count,
)

_WORD_RE = re.compile(r"[A-Za-z][a-z]{2,}")


@dataclass(frozen=True)
class Analysis:
    """What a prompt offers: seed examples, a requested count, a vocabulary, what it asks of each example."""

    seeds: tuple[dict[str, Any], ...]
    count: int | None
    words: tuple[str, ...]
    focus: Focus = Focus()
    asks_scores: bool = False  # the prompt asks for {"scores": [...]}: a judge's, answered with scores
    shown: tuple[dict[str, Any], ...] = ()  # the examples of the last message: what a judge is asked to score
    matches: dict[bytes, tuple[list[dict[str, Any]], list[str | None]]] = field(
        default_factory=dict, compare=False, hash=False)


class Composer:
    """Builds answer content for chat requests."""

    def __init__(self, max_cache: int = 4096) -> None:
        self._cache: dict[str, Analysis] = {}
        self._prompts: dict[tuple[str, ...], Analysis] = {}
        self._max = max_cache
        self._lock = threading.Lock()

    def analyse(self, text: str) -> Analysis:
        found = self._cache.get(text)
        if found is None:
            seeds = tuple(candidate_examples(find_json_values(text)))
            words = tuple(dict.fromkeys(_WORD_RE.findall(text[:20_000])))[:300]
            found = Analysis(seeds, requested_count(text), words, read_focus(text), '"scores"' in text)
            with self._lock:
                if len(self._cache) >= self._max:
                    self._cache.clear()
                self._cache[text] = found
        return found

    def prompt(self, texts: list[str]) -> Analysis:
        """Seeds from every message, the count from the last message that states one."""
        key = tuple(texts)
        found = self._prompts.get(key)
        if found is not None:
            return found
        parts = [self.analyse(t) for t in texts if t]
        seeds = tuple(s for p in parts for s in p.seeds)
        count = next((p.count for p in reversed(parts) if p.count is not None), None)
        words = tuple(w for p in parts[-1:] for w in p.words) or tuple(w for p in parts for w in p.words)
        found = Analysis(seeds, count, words, merged(p.focus for p in parts), bool(parts) and parts[-1].asks_scores,
                         tuple(s for p in parts[-1:] for s in p.seeds))
        with self._lock:
            if len(self._prompts) >= self._max:
                self._prompts.clear()
            self._prompts[key] = found
        return found

    def content(self, analysis: Analysis, response_format: Any, count: int, rng: random.Random,
                judge: tuple[float, int] = (0.0, 0)) -> str:
        """The answer text for a response_format (None, json_object or json_schema); a judge's scores for a schema
        that asks for them (`judge`: the share of low scores and the seed, see `judging`)."""
        kind = response_format.get("type") if isinstance(response_format, Mapping) else None
        if kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            if isinstance(schema, dict):
                scores = judgment_array(schema)
                if scores is not None:
                    return dump(judgments(_majority(list(analysis.shown)), *scores, *judge))
                return dump(_Builder(analysis, count, rng, schema).build(schema, 0))
        seeds = _majority(list(analysis.seeds))
        if analysis.asks_scores and analysis.shown:  # a judge asked without a schema: the scores it asks for
            return dump(judgments(_majority(list(analysis.shown)), "scores", JUDGMENT_ITEMS, *judge))
        if kind == "json_object":
            if seeds:
                return dump({"examples": _examples(seeds, None, count, rng, analysis.focus)})
            return dump({"response": sentence(rng, list(analysis.words), 8, 24)})
        if seeds:
            return dump(_examples(seeds, None, count, rng, analysis.focus))
        return " ".join(sentence(rng, list(analysis.words), 6, 16) for _ in range(rng.randint(2, 4)))


def _examples(seeds: list[dict[str, Any]], kinds: list[str | None] | None, count: int, rng: random.Random,
              focus: Focus, fits: Any = None) -> list[dict[str, Any]]:
    """`count` new examples from the seeds: following what the prompt asks, when it asks anything; else variants
    rotating over the seeds."""
    kinds = kinds if kinds is not None else [kind_of(s) for s in seeds]
    followed = follow_examples(seeds, kinds, count, rng, focus, fits)
    return followed if followed is not None else distinct_variants(seeds, count, rng, kinds=kinds)


def _fit_lengths(value: Any, schema: Any, root: dict[str, Any]) -> Any:
    """`value` with its lists stretched or cut to the schema's minItems/maxItems, as a constrained decoder would
    write them: a conversation too short for the schema repeats its last exchange (so roles keep alternating), one
    too long loses turns from its end, an even number of them when that still fits."""
    schema = resolve(schema, root)
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _fit_lengths(v, props[k], root) if k in props else v for k, v in value.items()}
    if not isinstance(value, list):
        return value
    items = [_fit_lengths(v, schema.get("items", {}), root) for v in value]
    low, high = int(schema.get("minItems", 0)), schema.get("maxItems")
    while items and len(items) < low:
        items.extend(items[-2:])
    if high is not None and len(items) > int(high):
        cut = len(items) - int(high)
        cut += cut % 2 if len(items) - cut - cut % 2 >= low else 0
        items = items[:len(items) - cut]
    return items[:int(high)] if high is not None else items


def _majority(seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seeds of the most common known format (all seeds when none is known)."""
    kinds: dict[str | None, list[dict[str, Any]]] = {}
    for seed in seeds:
        kinds.setdefault(kind_of(seed), []).append(seed)
    known = [group for kind, group in kinds.items() if kind is not None]
    return max(known, key=len) if known else seeds


class _Builder:
    """Fills a schema, using seed variants wherever an array's items (or an object) match the seeds."""

    def __init__(self, analysis: Analysis, count: int, rng: random.Random, root: dict[str, Any]) -> None:
        self.analysis = analysis
        self.root_key = orjson.dumps(root)
        self.seeds = list(analysis.seeds)
        self.words = list(analysis.words)
        self.count = count
        self.rng = rng
        self.root = root
        self.used_count = False

    def matching(self, schema: Any) -> tuple[list[dict[str, Any]], list[str | None]]:
        """The seeds (converted to the schema's format if need be) valid against `schema`, and their formats."""
        key = self.root_key + b"\x00" + orjson.dumps(schema)
        found = self.analysis.matches.get(key)
        if found is None:
            pool = self._matching(schema)
            found = (pool, [kind_of(s) for s in pool])
            self.analysis.matches[key] = found
        return found

    def _matching(self, schema: Any) -> list[dict[str, Any]]:
        direct = [s for s in self.seeds if conforms(s, schema, self.root)]
        if direct:
            return direct
        target = kind_of_schema(resolve(schema, self.root))
        if target is None:
            return []
        converted = [c for c in (convert(s, target) for s in self.seeds) if c is not None]
        matching = [c for c in converted if conforms(c, schema, self.root)]
        if matching:
            return matching
        fitted = [_fit_lengths(c, schema, self.root) for c in converted]
        return [f for f in fitted if conforms(f, schema, self.root)]

    def build(self, schema: Any, depth: int) -> Any:
        schema = resolve(schema, self.root)
        if not isinstance(schema, dict):
            return None
        kind = schema.get("type")
        if kind == "array" or (kind is None and "items" in schema):
            return self._array(schema, depth)
        if kind == "object" or (kind is None and "properties" in schema):
            pool, kinds = self.matching(schema) if depth == 0 and self.seeds else ([], [])
            if pool:
                return distinct_variants(pool, 1, self.rng, kinds=kinds)[0]
            return {k: self.build(v, depth + 1) for k, v in schema.get("properties", {}).items()}
        return generate(schema, self.rng, self.words, self.root)

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        items = schema.get("items", {})
        pool, kinds = self.matching(items) if self.seeds else ([], [])
        size = self.count if (pool or not self.used_count) and depth <= 2 else self.rng.randint(1, 3)
        self.used_count = True
        size = max(int(schema.get("minItems", 0)), min(size, int(schema.get("maxItems", size))))
        if pool:
            return _examples(pool, kinds, size, self.rng, self.analysis.focus,
                             lambda example: conforms(example, items, self.root))
        return [self.build(items, depth + 1) for _ in range(size)]


def dump(value: Any) -> str:
    """JSON text; a list of objects (at the top or under one key) gets one item per line, as models often write."""
    if isinstance(value, dict) and len(value) == 1:
        key, inner = next(iter(value.items()))
        if isinstance(inner, list) and inner and all(isinstance(v, dict) for v in inner):
            return "{" + orjson.dumps(key).decode() + ": " + _lines(inner) + "}"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _lines(value)
    return orjson.dumps(value).decode()


def _lines(items: list[dict[str, Any]]) -> str:
    return "[\n" + ",\n".join(_item(v) for v in items) + "\n]"


def _item(item: dict[str, Any]) -> str:
    """One example; a conversation gets one turn per line (repeated turns then count from the token cache)."""
    if len(item) == 1:
        key, turns = next(iter(item.items()))
        if isinstance(turns, list) and turns and all(isinstance(t, dict) for t in turns):
            return ("{" + orjson.dumps(key).decode() + ": [\n"
                    + ",\n".join(orjson.dumps(t).decode() for t in turns) + "]}")
    return orjson.dumps(item).decode()
