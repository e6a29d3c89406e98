"""Turn model output into training examples and decide which ones are good.

Pure functions and small values, no I/O, so that collect can call them on every response of a 50,000-line
output file. The flow for one response:

    parse_response(content, finish_reason, fmt) -> ParsedResponse  raw example dicts, or a response reason
    validate_example(raw, fmt, rules)           -> ExampleVerdict  schema, then the lesson's quality checks
    Deduper.admit(verdict, key)                 -> ExampleVerdict  duplicates across the job, copies of seeds

`validate_response` does all three. Every rejection carries a `Reason`: a stable `category` to group by, a
short `message` (the lesson's wording where it has one, e.g. "Turn 1 should be gpt, got human") and an
optional `detail`. `str(reason)` is the one-line form stored in the ledger, "message: detail"; a message never
contains ": ", so `Reason.parse` and `Summary` can group stored reasons by message again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson
from pydantic import ValidationError

from batchgen.dataset.checks import CheckRef, Example, run_checks
from batchgen.dataset.reasons import (
    CATEGORIES,
    CHECK,
    CONTENT_FILTER,
    DEDUPE_MODES,
    DUPLICATE,
    EMPTY_RESPONSE,
    EMPTY_TURN,
    EXAMPLE_CATEGORIES,
    FINISH_REASON,
    FORBIDDEN,
    FORMAT_PATTERN,
    NO_EXAMPLES,
    NOT_JSON,
    OTHER_SHAPE,
    REFUSAL,
    REGEX,
    RESPONSE_CATEGORIES,
    ROLE_ORDER,
    SCHEMA,
    SEED_COPY,
    TRUNCATED,
    TURN_COUNT,
    TURN_TOO_LONG,
    DedupeMode,
    ExampleVerdict,
    Pair,
    ParsedResponse,
    Reason,
    ResponseVerdict,
    Summary,
)
from batchgen.recipe.formats import Turn, parse_example, to_turns

EXCERPT_CHARS = 50
EXAMPLES_KEYS = ("examples",)  # the key of the answer object that holds its examples, as the schema sent asks


@dataclass(frozen=True)
class Rules:
    """The checks an example must pass. Build it with `Rules.from_values(...)` from a job's validate section.

    patterns       every assistant reply contains at least one of these substrings (empty: no check)
    regexes        every assistant reply matches at least one of these (re.search; empty: no check)
    forbidden      no turn matches any of these (re.search)
    role_order     an optional leading system turn, then user/assistant alternating, starting with user and
                   ending with assistant
    min_turns, max_turns   bounds on the number of turns, the system turn not counted
    non_empty      no turn is empty or whitespace only
    max_chars      no turn is longer than this many characters
    dedupe         "exact" (hash of roles and contents), "normalized" (casefold, NFKC, punctuation and symbols
                   removed, whitespace collapsed) or "none"
    reject_seed_copies   an example equal to a seed (in the same hash mode) is rejected
    checks         the job's rule hooks (`batchgen.dataset.checks`), run on every example the checks above pass
    reference_date what the checks get as the job's reference date
    cells          custom_id -> the cell its request asked for, what the checks get as the example's cell
    examples_keys  the keys of an answer object that hold its examples list, the first found taken
    """

    patterns: tuple[str, ...] = ()
    regexes: tuple[re.Pattern[str], ...] = ()
    forbidden: tuple[re.Pattern[str], ...] = ()
    role_order: bool = True
    min_turns: int = 2
    max_turns: int | None = None
    non_empty: bool = True
    max_chars: int | None = None
    dedupe: DedupeMode = "exact"
    reject_seed_copies: bool = True
    checks: tuple[CheckRef, ...] = ()
    reference_date: dt.date | None = None
    cells: Mapping[str, dict[str, Any]] | None = field(default=None, compare=False)
    examples_keys: tuple[str, ...] = EXAMPLES_KEYS
    _any_pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)
    _accept: dict[str, Any] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        # One alternation of the escaped substrings searches a reply in C, not in a Python loop per pattern.
        if self.patterns:
            alternation = re.compile("|".join(re.escape(pattern) for pattern in self.patterns))
            object.__setattr__(self, "_any_pattern", alternation)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled for the judging worker without its caches (the accepter is a closure); they are rebuilt there.
        return (Rules, tuple(getattr(self, f.name) for f in fields(self) if f.init))

    @classmethod
    def from_values(cls, *, patterns: Iterable[str] = (), regexes: Iterable[str] = (),
                    forbidden: Iterable[str] = (), role_order: bool = True, min_turns: int = 2,
                    max_turns: int | None = None, non_empty: bool = True, max_chars: int | None = None,
                    dedupe: str = "exact", reject_seed_copies: bool = True, checks: Iterable[CheckRef] = (),
                    reference_date: dt.date | None = None, cells: Mapping[str, dict[str, Any]] | None = None,
                    examples_keys: Iterable[str] = EXAMPLES_KEYS) -> Rules:
        """Rules from plain values (strings for regexes); raises ValueError naming the bad value."""
        if dedupe not in DEDUPE_MODES:
            raise ValueError(f"dedupe must be one of {', '.join(DEDUPE_MODES)}, not {dedupe!r}")
        if min_turns < 0 or (max_turns is not None and max_turns < min_turns):
            raise ValueError(f"need 0 <= min_turns <= max_turns, got {min_turns} and {max_turns}")
        if max_chars is not None and max_chars < 1:
            raise ValueError(f"max_chars must be positive, got {max_chars}")
        examples_keys = tuple(examples_keys)
        if not examples_keys or not all(isinstance(key, str) and key for key in examples_keys):
            raise ValueError(f"examples_keys must be a list of non-empty keys, got {list(examples_keys)!r}")
        return cls(patterns=tuple(patterns), regexes=_compile(regexes, "regexes"),
                   forbidden=_compile(forbidden, "forbidden"), role_order=role_order, min_turns=min_turns,
                   max_turns=max_turns, non_empty=non_empty, max_chars=max_chars,
                   dedupe=dedupe,  # type: ignore[arg-type]  # checked against DEDUPE_MODES above
                   reject_seed_copies=reject_seed_copies, checks=tuple(checks), reference_date=reference_date,
                   cells=cells, examples_keys=examples_keys)


def _compile(sources: Iterable[str], name: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for source in sources:
        try:
            compiled.append(re.compile(source))
        except re.error as error:
            raise ValueError(f"{name}: invalid regular expression {source!r}: {error}") from error
    return tuple(compiled)


# -- parsing a response -------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*(?:json5?|jsonc|JSON)?[ \t]*\r?\n(.*?)```", re.S)
_TOP_KEY = {"sharegpt": "conversations", "chatml": "messages", "alpaca": "instruction"}


def parse_response(content: str | None, finish_reason: str | None, fmt: str, *, refusal: str | None = None,
                   keys: tuple[str, ...] = EXAMPLES_KEYS) -> ParsedResponse:
    """The raw examples in a model's message content, and the response-level reason there are none or fewer.

    Accepts {"<key>": [...]} for each of `keys` (the job's `examples_keys`), then a bare array, a single example,
    another key holding the list, and JSON in a fenced block or embedded in prose; an answer of one of those other
    shapes keeps its examples and carries an `other_shape` reason naming its shape. An answer cut at max_tokens
    keeps every complete example it holds (see `salvage_examples`) and carries one `truncated` reason; a filtered,
    refused or empty answer holds nothing.
    """
    problem = response_problem(content, finish_reason, refusal)
    if problem is not None:
        if problem.category == TRUNCATED and content:
            examples, source, shape = salvage_examples(content, fmt, keys)
            return ParsedResponse(examples, problem, source, shape)
        return ParsedResponse([], problem)
    assert content is not None
    loaded = load_json(content)
    if isinstance(loaded, Reason):
        return ParsedResponse([], loaded)
    data, source = loaded
    found = _extract(data, fmt, depth=2, keys=keys)
    if isinstance(found, Reason):
        return ParsedResponse([], found, source)
    return ParsedResponse(found[0], other_shape(found[1]), source, found[1])


def other_shape(shape: str) -> Reason | None:
    """The `other_shape` reason of examples held another way than under one of the job's examples keys."""
    if shape == "examples":
        return None
    held = {"array": "bare list", "single": "single example object"}.get(shape)
    return Reason(OTHER_SHAPE, "Other shape", held or f"object with key {shape.removeprefix('wrapper:')}")


def salvage_examples(content: str, fmt: str, keys: tuple[str, ...] = EXAMPLES_KEYS) -> tuple[list[Any], str, str]:
    """The complete examples of an answer cut short, with where its JSON starts ("json", "fenced", "embedded") and
    the shape that held them ("examples", "array", "wrapper:<key>"; "" when none is found).

    An answer that is whole JSON after all is read as any other. Else the text is scanned from its first `{` or
    `[`: the examples array is the top-level array, or the array under the first of `keys` (failing that, the first
    key whose array opens with an object); each of its elements that closes before the cut is one example, and
    the scan stops at the cut, at the array's end, or at the first element that is not JSON.
    """
    loaded = load_json(content)
    if not isinstance(loaded, Reason):
        found = _extract(loaded[0], fmt, depth=2, keys=keys)
        return ([], loaded[1], "") if isinstance(found, Reason) else (found[0], loaded[1], found[1])
    text = content.strip().lstrip("\ufeff")
    source = "json"
    fence = _FENCE_OPEN.match(text)
    if fence is not None:
        text, source = text[fence.end():], "fenced"
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return [], source, ""
    start = min(starts)
    if start and source == "json":
        source = "embedded"
    scanned = _scan_elements(text, start, keys)
    if scanned is None:
        return [], source, ""
    elements, shape = scanned
    examples = []
    for element in elements:
        try:
            examples.append(orjson.loads(element))
        except orjson.JSONDecodeError:
            break
    return examples, source, shape


_FENCE_OPEN = re.compile(r"\s*```[ \t]*(?:json5?|jsonc|JSON)?[ \t]*\r?\n")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)  # a whole JSON string, escapes included
_OPENS_OBJECT = re.compile(r"\s*\{")


def _scan_elements(text: str, start: int, keys: tuple[str, ...]) -> tuple[list[str], str] | None:
    """The text of each complete element of the examples array of JSON cut short, and the array's shape.

    A small scanner, enough for JSON as models write it: strings (with their escapes) are skipped whole, so a
    brace or bracket inside one counts for nothing; `{` and `[` nest; `,` ends an element of the array.
    """
    stack: list[str] = []
    expect_key = False  # at a key of the top-level object
    key: str | None = None  # the last key read there
    target = 0  # the depth of the examples array, once found
    shape = ""
    element = -1  # where the element being read starts
    closed = -1  # where it ended, if it is an object, array or string that closed
    found: list[str] = []
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            match = _STRING.match(text, i)
            if match is None:
                break  # cut inside a string
            if expect_key and len(stack) == 1:
                key, expect_key = orjson.loads(match.group()), False
            if target and len(stack) == target:
                if element < 0:
                    element = i
                closed = match.end()
            i = match.end()
            continue
        if c in "{[":
            if target and len(stack) == target and element < 0:
                element = i
            stack.append(c)
            if c == "[" and not target:
                if len(stack) == 1:
                    target, shape = 1, "array"
                elif len(stack) == 2 and stack[0] == "{" and key is not None:
                    if key in keys:
                        target, shape = 2, "examples"
                    elif not shape and _OPENS_OBJECT.match(text, i + 1):
                        target, shape = 2, f"wrapper:{key}"  # another key holding a list of objects
            elif c == "{" and len(stack) == 1:
                expect_key = True
        elif c in "}]":
            if not stack or stack.pop() != ("{" if c == "}" else "["):
                break  # not JSON any more
            if target and len(stack) == target:
                closed = i + 1
            elif target and len(stack) == target - 1:  # the examples array itself closed
                if element >= 0:
                    found.append(text[element:i])
                return found, shape
        elif c == ",":
            if target and len(stack) == target and element >= 0:
                found.append(text[element:i])
                element = closed = -1
            elif len(stack) == 1 and stack[0] == "{":
                expect_key = True
        elif not c.isspace() and c != ":" and target and len(stack) == target and element < 0:
            element = i  # a number or literal: complete only once a comma or the array's end follows
        i += 1
    if not target:
        return None
    if element >= 0 and closed > element:
        found.append(text[element:closed])
    return found, shape


def response_problem(content: str | None, finish_reason: str | None, refusal: str | None = None) -> Reason | None:
    """Why an answer holds nothing to read, whatever its content: truncated, filtered, refused or empty."""
    if finish_reason == "length":
        return Reason(TRUNCATED, "Truncated at max_tokens", "finish_reason=length")
    if finish_reason == "content_filter":
        return Reason(CONTENT_FILTER, "Blocked by content filter", "finish_reason=content_filter")
    if refusal:
        return Reason(REFUSAL, "Model refused", excerpt(refusal))
    if finish_reason not in (None, "stop"):
        return Reason(FINISH_REASON, "Unexpected finish_reason", str(finish_reason))
    if content is None or not content.strip():
        return Reason(EMPTY_RESPONSE, "Empty response content")
    return None


def load_json(content: str) -> tuple[Any, str] | Reason:
    """The JSON value of an answer and where it was found ("json", a "fenced" block, "embedded" in prose), or why
    there is none."""
    text = content.strip().lstrip("\ufeff")
    try:
        return orjson.loads(text), "json"
    except orjson.JSONDecodeError as error:
        first_error = str(error)
    for match in _FENCE.finditer(text):
        try:
            return orjson.loads(match.group(1)), "fenced"
        except orjson.JSONDecodeError:
            continue
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    end = max(text.rfind("}"), text.rfind("]"))
    if starts and end > min(starts):
        try:
            return orjson.loads(text[min(starts):end + 1]), "embedded"
        except orjson.JSONDecodeError:
            pass
    return Reason(NOT_JSON, "Response is not JSON", first_error)


def _extract(data: Any, fmt: str, depth: int,
             keys: tuple[str, ...] = EXAMPLES_KEYS) -> tuple[list[Any], str] | Reason:
    if isinstance(data, list):
        return (data, "array") if data else Reason(NO_EXAMPLES, "No examples found", "empty array")
    if not isinstance(data, dict):
        return Reason(NO_EXAMPLES, "No examples found", f"JSON {type(data).__name__} value")
    for name in keys:
        if name in data and isinstance(data[name], (list, dict)):
            held = data[name]
            held = [held] if isinstance(held, dict) else held
            return (held, "examples") if held else Reason(NO_EXAMPLES, "No examples found", f"empty {name} list")
    top = _TOP_KEY[fmt]
    if top in data and not _is_list_of_examples(data[top], top):
        return [data], "single"
    lists = [key for key, value in data.items() if isinstance(value, list) and value
             and isinstance(value[0], dict)]
    lists.sort(key=lambda key: not _is_list_of_examples(data[key], top))
    if lists:
        return data[lists[0]], f"wrapper:{lists[0]}"
    if depth > 1:
        for key, value in data.items():
            if isinstance(value, dict):
                found = _extract(value, fmt, depth - 1, keys)
                if not isinstance(found, Reason):
                    return found[0], f"wrapper:{key}.{found[1]}"
    named = ", ".join(list(map(str, data))[:5]) or "none"
    return Reason(NO_EXAMPLES, "No examples found", f"object with keys {named}")


def _is_list_of_examples(value: Any, top: str) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and top in value[0]


def excerpt(text: str) -> str:
    return text[:EXCERPT_CHARS] + "..." if len(text) > EXCERPT_CHARS else text


# -- validating an example ----------------------------------------------------------------------------------

_SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
_CHATML_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
_DISPLAY = {"sharegpt": {"system": "system", "user": "human", "assistant": "gpt"}}


def validate_example(raw: Any, fmt: str, rules: Rules) -> ExampleVerdict:
    """Check one raw example: the format's schema (pydantic), then the quality rules; never raises on data."""
    pairs = _fast_pairs(raw, fmt)
    if pairs is None:
        try:
            pairs = [(turn.role, turn.content) for turn in to_turns(parse_example(raw, fmt))]
        except ValidationError as error:
            return ExampleVerdict(False, _schema_reason(error), [], None)
    reason = _check_pairs(pairs, fmt, rules)
    return ExampleVerdict(reason is None, reason, pairs, _hash_pairs(pairs, rules.dedupe))


def _fast_pairs(raw: Any, fmt: str) -> list[Pair] | None:
    """Turns of an example that plainly fits its schema; None sends it to pydantic for verdict and message.

    Accepts a strict subset of what the pydantic models accept, so the outcome never differs, only the speed.
    """
    if type(raw) is not dict:
        return None
    if fmt == "alpaca":
        instruction, output, text = raw.get("instruction"), raw.get("output"), raw.get("input", "")
        if (type(instruction) is not str or type(output) is not str or type(text) is not str
                or not raw.keys() <= {"instruction", "input", "output"}):
            return None
        return [("user", f"{instruction}\n\n{text}" if text else instruction), ("assistant", output)]
    key, role_key, text_key, roles = (("conversations", "from", "value", _SHAREGPT_ROLES) if fmt == "sharegpt"
                                      else ("messages", "role", "content", _CHATML_ROLES))
    items = raw.get(key)
    if type(items) is not list or not items or len(raw) != 1:
        return None
    pairs = []
    for item in items:
        if type(item) is not dict or len(item) != 2:
            return None
        role, content = roles.get(item.get(role_key)), item.get(text_key)  # type: ignore[arg-type]
        if role is None or type(content) is not str:
            return None
        pairs.append((role, content))
    return pairs


def judge_examples(raws: list[Any], fmt: str, rules: Rules,
                   custom_id: str = "") -> list[tuple[str, str | None, bool, str | None, str | None]]:
    """Each raw example as (compact JSON, content hash, valid, category, reason text), as `validate_example` decides,
    then the job's rule hooks (`rules.checks`) on each valid one (`custom_id`: the request the examples answer).

    An example that plainly passes every check is accepted in one pass over its turns; any other goes through
    `validate_example`, which finds the reason. The accepting pass admits exactly what the checks admit, so the
    verdicts are the same, only cheaper for the hundreds of thousands of good examples of an output file.
    """
    judged = _judge_structure(raws, fmt, rules)
    if rules.checks:
        judged = _run_hooks(judged, raws, fmt, rules, custom_id)
    return judged


def _run_hooks(judged: list[tuple[str, str | None, bool, str | None, str | None]], raws: list[Any], fmt: str,
               rules: Rules, custom_id: str) -> list[tuple[str, str | None, bool, str | None, str | None]]:
    cell = dict((rules.cells or {}).get(custom_id) or {})
    out = []
    for position, (row, raw) in enumerate(zip(judged, raws, strict=True)):
        if row[2]:
            pairs = _fast_pairs(raw, fmt) or validate_example(raw, fmt, rules).pairs
            example = Example(tuple(pairs), raw, example_key(custom_id, position), cell, rules.reference_date)
            found = run_checks(rules.checks, example)
            if found is not None:
                reason = Reason(CHECK, f"Check {found[0]}", found[1])
                row = (row[0], row[1], False, CHECK, str(reason))
        out.append(row)
    return out


def _judge_structure(raws: list[Any], fmt: str,
                     rules: Rules) -> list[tuple[str, str | None, bool, str | None, str | None]]:
    accept = rules._accept.get(fmt)
    if accept is None:
        accept = rules._accept[fmt] = _accepter(fmt, rules)
    mode, dumps, blake2b = rules.dedupe, orjson.dumps, hashlib.blake2b
    judged: list[tuple[str, str | None, bool, str | None, str | None]] = []
    for raw in raws:
        pairs = accept(raw)
        if pairs is not None:
            digest = (blake2b(dumps(pairs), digest_size=16).hexdigest() if mode != "normalized"
                      else _hash_pairs(pairs, mode))
            judged.append((dumps(raw).decode(), digest, True, None, None))
        else:
            verdict = validate_example(raw, fmt, rules)
            reason = verdict.reason
            judged.append((dumps(raw).decode(), verdict.content_hash, verdict.valid,
                           reason.category if reason is not None else None,
                           str(reason) if reason is not None else None))
    return judged


def _accepter(fmt: str, rules: Rules) -> Any:
    """A function: a raw example's turns if it passes every check of `rules` (as `_fast_pairs` then `_check_pairs`
    would find), else None, meaning "ask validate_example"."""
    if fmt not in ("sharegpt", "chatml"):
        return lambda raw: None
    key, role_key, text_key, roles = (("conversations", "from", "value", _SHAREGPT_ROLES) if fmt == "sharegpt"
                                      else ("messages", "role", "content", _CHATML_ROLES))
    min_turns, max_turns, role_order = rules.min_turns, rules.max_turns, rules.role_order
    non_empty, limit, regexes, forbidden = rules.non_empty, rules.max_chars, rules.regexes, rules.forbidden
    search = rules._any_pattern.search if rules._any_pattern is not None else None
    role_of = roles.get

    def accept(raw: Any) -> list[Pair] | None:
        if type(raw) is not dict or len(raw) != 1:
            return None
        items = raw.get(key)
        if type(items) is not list or not items:
            return None
        pairs: list[Pair] = []
        expected = "user"
        for item in items:
            if type(item) is not dict or len(item) != 2:
                return None
            role, content = role_of(item.get(role_key)), item.get(text_key)  # type: ignore[arg-type]
            if role is None or type(content) is not str:
                return None
            if role_order:
                if role == expected:
                    expected = "assistant" if role == "user" else "user"
                elif role != "system" or pairs:  # only a leading system turn is out of the alternation
                    return None
            if non_empty and (not content or content.isspace()):
                return None
            if limit is not None and len(content) > limit:
                return None
            if role == "assistant":
                if search is not None and search(content) is None:
                    return None
                if regexes and not any(regex.search(content) for regex in regexes):
                    return None
            for regex in forbidden:
                if regex.search(content):
                    return None
            pairs.append((role, content))
        body = len(pairs) - (1 if pairs[0][0] == "system" else 0)
        if body < min_turns or (max_turns is not None and body > max_turns):
            return None
        if role_order and pairs[-1][0] != "assistant":
            return None
        return pairs

    return accept


def _schema_reason(error: ValidationError) -> Reason:
    errors = error.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    detail = f"{loc}: {first['msg']}" if loc else first["msg"]
    if len(errors) > 1:
        detail += f" (+{len(errors) - 1} more)"
    return Reason(SCHEMA, "schema", detail)


def check_turns(turns: Iterable[Turn], fmt: str, rules: Rules) -> Reason | None:
    """The lesson's quality checks on an example's turns, in order: the first failure, or None."""
    return _check_pairs([(turn.role, turn.content) for turn in turns], fmt, rules)


def _check_pairs(pairs: list[Pair], fmt: str, rules: Rules) -> Reason | None:
    body = len(pairs) - (1 if pairs and pairs[0][0] == "system" else 0)
    if body < rules.min_turns:
        return Reason(TURN_COUNT, "Too few turns", f"{body} < {rules.min_turns}")
    if rules.max_turns is not None and body > rules.max_turns:
        return Reason(TURN_COUNT, "Too many turns", f"{body} > {rules.max_turns}")
    if rules.role_order:
        reason = _check_roles(pairs, _DISPLAY.get(fmt, {}))
        if reason:
            return reason
    if rules.non_empty or rules.max_chars is not None:
        limit = rules.max_chars
        for index, (_, content) in enumerate(pairs):
            if rules.non_empty and (not content or content.isspace()):
                return Reason(EMPTY_TURN, "Empty message content", f"turn {index}")
            if limit is not None and len(content) > limit:
                return Reason(TURN_TOO_LONG, "Message too long",
                              f"turn {index}: {len(content)} > {limit} chars")
    if rules.patterns or rules.regexes or rules.forbidden:
        return _check_content(pairs, rules)
    return None


def _check_roles(pairs: list[Pair], names: Mapping[str, str]) -> Reason | None:
    start = 1 if pairs and pairs[0][0] == "system" else 0
    expected = "user"
    for index in range(start, len(pairs)):
        actual = pairs[index][0]
        if actual != expected:
            return Reason(ROLE_ORDER, f"Turn {index} should be {names.get(expected, expected)}, "
                                      f"got {names.get(actual, actual)}")
        expected = "assistant" if expected == "user" else "user"
    if pairs and pairs[-1][0] != "assistant":
        last = pairs[-1][0]
        return Reason(ROLE_ORDER, f"Last turn should be {names.get('assistant', 'assistant')}, "
                                  f"got {names.get(last, last)}")
    return None


def _check_content(pairs: list[Pair], rules: Rules) -> Reason | None:
    for index, (role, content) in enumerate(pairs):
        if role == "assistant":
            if rules._any_pattern is not None and rules._any_pattern.search(content) is None:
                return Reason(FORMAT_PATTERN, "Response doesn't follow format", excerpt(content))
            if rules.regexes and not any(regex.search(content) for regex in rules.regexes):
                return Reason(REGEX, "Response doesn't match a required pattern", excerpt(content))
        for regex in rules.forbidden:
            if regex.search(content):
                return Reason(FORBIDDEN, "Matches a forbidden pattern", f"turn {index}: {regex.pattern}")
    return None


# -- hashing and duplicates ---------------------------------------------------------------------------------

NOT_WORD = re.compile(r"[^\w\s]+")  # what normalize_text removes (also used by dataset.near on many texts at once)


# For ASCII text: NFKC changes nothing, casefold is lower, and what NOT_WORD removes is these characters one by one.
ASCII_NOT_WORD = {c: None for c in range(128) if NOT_WORD.match(chr(c))}


def normalize_text(text: str) -> str:
    """Casefold, NFKC, punctuation and symbols removed, whitespace collapsed: the `normalized` dedupe form."""
    if text.isascii():  # the same, five times as fast
        return " ".join(text.lower().translate(ASCII_NOT_WORD).split())
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(NOT_WORD.sub("", folded).split())


def content_hash(turns: Iterable[Turn], mode: str = "exact") -> str:
    """128-bit hex hash of the roles and contents (normalised in "normalized" mode, else exact)."""
    return _hash_pairs([(turn.role, turn.content) for turn in turns], mode)


def _hash_pairs(pairs: list[Pair], mode: str) -> str:
    if mode == "normalized":
        pairs = [(role, normalize_text(content)) for role, content in pairs]
    return hashlib.blake2b(orjson.dumps(pairs), digest_size=16).hexdigest()


def example_key(custom_id: str, position: int) -> str:
    """The key that names one example in a job: its request's custom_id and its index in the response."""
    return f"{custom_id}#{position}"


class Deduper:
    """Duplicate and seed-copy detection across a whole job, one example at a time.

    `known` maps content hash -> key of its first occurrence; `seeds` maps each seed's hash -> "seed:<i>".
    To carry on in a new process, rebuild it from the hashes and keys the ledger stored for valid examples:
    `Deduper(known={hash: key, ...}, seeds=seed_hashes(seeds, fmt, rules))`. Checking the same key again with
    the same hash is not a duplicate, so collecting a response twice is harmless.
    """

    def __init__(self, known: Mapping[str, str] | None = None, *, seeds: Mapping[str, str] | None = None,
                 dedupe: bool = True) -> None:
        self._first: dict[str, str] = dict(known or {})
        self._seeds: dict[str, str] = dict(seeds or {})
        self._dedupe = dedupe

    @classmethod
    def for_rules(cls, rules: Rules, fmt: str, seeds: Iterable[Any] = (),
                  known: Mapping[str, str] | None = None) -> Deduper:
        """A Deduper that applies a job's dedupe mode and seed-copy rule."""
        seed_map = seed_hashes(seeds, fmt, rules) if rules.reject_seed_copies else {}
        return cls(known, seeds=seed_map, dedupe=rules.dedupe != "none")

    @property
    def known(self) -> Mapping[str, str]:
        return self._first

    def __len__(self) -> int:
        return len(self._first)

    def is_seed(self, digest: str) -> bool:
        return digest in self._seeds

    def check(self, digest: str, key: str) -> Reason | None:
        """Why this example is not new (seed copy, duplicate), or None after recording it as first seen."""
        seed = self._seeds.get(digest)
        if seed is not None:
            return Reason(SEED_COPY, "Copy of a seed example", seed)
        if not self._dedupe:
            return None
        first = self._first.setdefault(digest, key)
        return None if first == key else Reason(DUPLICATE, "Duplicate", first)

    def admit(self, verdict: ExampleVerdict, key: str) -> ExampleVerdict:
        """The verdict, turned invalid if a valid example repeats an earlier one or a seed."""
        if not verdict.valid or verdict.content_hash is None:
            return verdict
        reason = self.check(verdict.content_hash, key)
        if reason is None:
            return verdict
        return replace(verdict, valid=False, reason=reason, duplicate_of=reason.detail)


def seed_hashes(seeds: Iterable[Any], fmt: str, rules: Rules) -> dict[str, str]:
    """Content hash -> "seed:<i>" for each seed (ValueError for a seed that breaks the schema)."""
    hashes: dict[str, str] = {}
    for index, seed in enumerate(seeds):
        verdict = validate_example(seed, fmt, Rules(min_turns=0, role_order=False, non_empty=False))
        if verdict.content_hash is None:
            raise ValueError(f"seed {index} is not a valid {fmt} example: {verdict.reason}")
        hashes.setdefault(_hash_pairs(verdict.pairs, rules.dedupe), f"seed:{index}")
    return hashes


def validate_response(content: str | None, finish_reason: str | None, fmt: str, rules: Rules,
                      deduper: Deduper | None = None, *, custom_id: str = "",
                      refusal: str | None = None) -> ResponseVerdict:
    """Parse one response and judge each example in it, deduplicating against the job when given a Deduper."""
    parsed = parse_response(content, finish_reason, fmt, refusal=refusal, keys=rules.examples_keys)
    verdicts = []
    for position, raw in enumerate(parsed.examples):
        verdict = validate_example(raw, fmt, rules)
        if deduper is not None:
            verdict = deduper.admit(verdict, example_key(custom_id, position))
        verdicts.append(verdict)
    return ResponseVerdict(parsed.reason, verdicts, parsed)


__all__ = ["CATEGORIES", "CHECK", "CONTENT_FILTER", "DEDUPE_MODES", "DUPLICATE", "EMPTY_RESPONSE", "EMPTY_TURN",
           "EXAMPLES_KEYS", "EXAMPLE_CATEGORIES", "FINISH_REASON", "FORBIDDEN", "FORMAT_PATTERN", "NO_EXAMPLES",
           "NOT_JSON", "OTHER_SHAPE", "REFUSAL", "REGEX", "RESPONSE_CATEGORIES", "ROLE_ORDER", "SCHEMA", "SEED_COPY",
           "TRUNCATED", "TURN_COUNT", "TURN_TOO_LONG", "DedupeMode", "Deduper", "ExampleVerdict", "Pair",
           "ParsedResponse", "Reason", "ResponseVerdict", "Rules", "Summary", "check_turns", "content_hash",
           "example_key", "judge_examples", "normalize_text", "other_shape", "parse_response", "salvage_examples",
           "seed_hashes", "validate_example", "validate_response"]
