"""Training examples made from the seed examples found in a prompt, with seeded, controlled variation.

Seeds are JSON objects (or arrays of them) embedded in the message text: ShareGPT `conversations`, ChatML
`messages`, Alpaca `instruction`/`output`, or anything matching the requested item schema. A variant keeps the
seed's answer format (its assistant side only gets consistent substitutions: dates shifted by the same number of
days, weekday names moved along, a priority changed when the request names one) and rewrites the request side:
an opener, a context qualifier and a closer around the original request.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import re
from collections.abc import Callable
from typing import Any

import orjson

from batchgen.emulator.synth_words import (
    CLOSERS,
    OPENERS,
    QUALIFIERS,
    STYLE_CLOSERS,
    STYLE_OPENERS,
    STYLES,
    fill_qualifier,
)

_DECODER = json.JSONDecoder()
_SCAN_LIMIT = 200_000
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_COMMON_RE = re.compile(r"\b(?:(?P<date>(\d{4})-(\d{2})-(\d{2}))|(?P<weekday>" + "|".join(_WEEKDAYS)
                        + r")|(?i:low|medium|high|urgent))\b")
_WORD_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30, "fifty": 50}
_COUNT_RE = re.compile(
    r"\b(?:generate|create|write|produce|give(?: me)?|return|make|output|provide|holding)\s+(?:exactly\s+|me\s+)?"
    r"(\d{1,4}|" + "|".join(_WORD_NUMBERS) + r")\s+(?:[A-Za-z-]+,?\s+){0,4}?"  # "NEW, SIMPLE", "more diverse"
    r"(?:examples?|conversations?|samples?|items?|pairs?|instructions?|questions?|dialogues?|records?)\b",
    re.IGNORECASE)
USER_ROLES = ("human", "user")


def requested_count(text: str) -> int | None:
    """The number of examples a prompt asks for ("Generate 10 NEW examples"), if it says."""
    match = _COUNT_RE.search(text)
    if match is None:
        return None
    raw = match.group(1).lower()
    return int(raw) if raw.isdigit() else _WORD_NUMBERS[raw]


def find_json_values(text: str) -> list[Any]:
    """Every top-level JSON object or array embedded in a text."""
    found: list[Any] = []
    index, end = 0, min(len(text), _SCAN_LIMIT)
    while index < end:
        starts = [p for p in (text.find("{", index, end), text.find("[", index, end)) if p >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, stop = _DECODER.raw_decode(text, start)
        except ValueError:
            index = start + 1
            continue
        if isinstance(value, (dict, list)) and value:
            found.append(value)
        index = stop
    return found


def candidate_examples(values: list[Any]) -> list[dict[str, Any]]:
    """Flatten found values into example-like objects (lists and {"examples": [...]} are opened)."""
    out: list[dict[str, Any]] = []
    for value in values:
        if isinstance(value, list):
            out.extend(v for v in value if isinstance(v, dict))
        elif isinstance(value, dict) and isinstance(value.get("examples"), list) and len(value) == 1:
            out.extend(v for v in value["examples"] if isinstance(v, dict))
        elif isinstance(value, dict):
            out.append(value)
    return out


def kind_of(example: Any) -> str | None:
    """sharegpt, chatml, alpaca or None."""
    if not isinstance(example, dict):
        return None
    turns = example.get("conversations")
    if isinstance(turns, list) and turns and all(isinstance(t, dict) and "from" in t and "value" in t
                                                 for t in turns):
        return "sharegpt"
    turns = example.get("messages")
    if isinstance(turns, list) and turns and all(isinstance(t, dict) and "role" in t and "content" in t
                                                 for t in turns):
        return "chatml"
    if "instruction" in example and "output" in example:
        return "alpaca"
    return None


def kind_of_schema(schema: Any) -> str | None:
    """The example format an item schema describes, by its property names."""
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    for name, key in (("sharegpt", "conversations"), ("chatml", "messages"), ("alpaca", "instruction")):
        if key in props:
            return name
    return None


def convert(example: dict[str, Any], target: str) -> dict[str, Any] | None:
    """An example rewritten in another known format (None when it does not fit, e.g. multi-turn as Alpaca)."""
    source = kind_of(example)
    if source is None or source == target:
        return example if source == target else None
    turns = turns_of(example, source)
    if target == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        return {"conversations": [{"from": names.get(r, "human"), "value": c} for r, c in turns]}
    if target == "chatml":
        return {"messages": [{"role": r, "content": c} for r, c in turns]}
    body = [(r, c) for r, c in turns if r != "system"]
    if len(body) != 2 or body[0][0] != "user" or body[1][0] != "assistant":
        return None
    return {"instruction": body[0][1], "input": "", "output": body[1][1]}


def turns_of(example: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    """The (role, text) turns of an example of a known format, with the roles system, user and assistant."""
    if kind == "sharegpt":
        roles = {"human": "user", "gpt": "assistant", "system": "system"}
        return [(roles.get(str(t["from"]), "user"), str(t["value"])) for t in example["conversations"]]
    if kind == "chatml":
        return [(str(t["role"]), str(t["content"])) for t in example["messages"]]
    prompt = str(example["instruction"])
    if example.get("input"):
        prompt = f"{prompt}\n\n{example['input']}"
    return [("user", prompt), ("assistant", str(example["output"]))]


class Variation:
    """One consistent set of changes applied to a seed: a date shift, a priority, and wording for the request (in
    the phrasing style a prompt asks for, when it names one the simulator knows)."""

    def __init__(self, rng: random.Random, style: str | None = None) -> None:
        self.style = style if style in STYLES else None
        openers = STYLE_OPENERS[self.style] if self.style else OPENERS
        closers = STYLE_CLOSERS[self.style] if self.style else CLOSERS
        bits = rng.getrandbits(64)
        bits, self.days = divmod(bits, 45)
        self.days += 1
        bits, priority = divmod(bits, 3)
        self.priority = ("low", "medium", "high")[priority]
        bits, opener = divmod(bits, len(openers))
        self.opener = openers[opener]
        bits, closer = divmod(bits, len(closers))
        self.closer = closers[closer]
        bits, qualifier = divmod(bits, len(QUALIFIERS) * 10)
        self.qualifier = fill_qualifier(QUALIFIERS[qualifier // 10], bits) if qualifier % 10 < 7 else ""
        self.touch_priority = bool(bits & 1 << 40)

    def common(self, text: str) -> str:
        """Changes made alike to both sides: dates, weekdays, priority words."""
        parts = _template(text)
        if len(parts) == 1:
            return text
        out = []
        for kind, value in parts:
            if kind == "date":
                out.append((value + dt.timedelta(days=self.days)).isoformat())
            elif kind == "weekday":
                out.append(_WEEKDAYS[(value + self.days) % 7])
            elif kind == "priority" and self.touch_priority:
                out.append(self.priority.capitalize() if value[:1].isupper() else self.priority)
            else:
                out.append(value)
        return "".join(out)

    def request(self, text: str) -> str:
        """The request side: the common changes plus new wording around it."""
        core = self.common(text).strip()
        end = ""
        while core and core[-1] in ".!?":
            end, core = core[-1] + end, core[:-1]
        if self.style is not None:
            return self._styled(core, end)
        if self.opener.text.endswith((", ", ": ", "- ")) or self.opener.question or self.opener.text == "Please ":
            lower = True
        else:
            lower = self.opener.text.endswith(" ") and not self.opener.text.rstrip().endswith((".", "!"))
        if lower and core[:1].isupper() and core[1:2].islower() and not core.startswith(("I ", "I'")):
            core = core[:1].lower() + core[1:]
        end = "?" if self.opener.question else (end or "")
        return f"{self.opener.text}{core}{self.qualifier}{self.closer}{end}".strip()

    def _styled(self, core: str, end: str) -> str:
        """The request in the prompt's phrasing style. A request that is a question already stays one (a question
        opener in front of it would not be English), and one that speaks of the user ("I need ...") is asked about
        rather than prefixed."""
        asked = "?" in end or core.split(" ", 1)[0].lower() in _QUESTION_WORDS
        personal = core.startswith(("I ", "I'", "My ", "my "))
        if self.style == "question":
            if asked:
                return f"{core}{self.qualifier}?"
            if personal:
                return f"{core}{self.qualifier}, can you help with that?"
            return f"{self.opener.text}{_lowered(core)}{self.qualifier}{self.closer}?"
        opener = "" if asked or personal else self.opener.text
        closer = "" if asked and "." in self.closer else self.closer  # no "Thank you in advance?"
        if opener or self.style == "casual":
            core = _lowered(core)
        if asked:
            stop = "?"
        elif self.style == "casual":
            stop = ""
        else:
            stop = "." if self.style == "formal" else end
        return f"{opener}{core}{self.qualifier}{closer}{stop}".strip()


_QUESTION_WORDS = frozenset({"what", "what's", "which", "who", "when", "where", "how", "why", "can", "could", "would",
                             "will", "is", "are", "do", "does", "did", "should", "may", "any", "anything"})


def _lowered(core: str) -> str:
    """The request with its first letter in lower case, to follow an opener ("Please add ..."); a name, "I" or an
    acronym keeps its capital."""
    if core[:1].isupper() and core[1:2].islower() and not core.startswith(("I ", "I'")):
        return core[:1].lower() + core[1:]
    return core


@functools.lru_cache(maxsize=65_536)
def _template(text: str) -> tuple[tuple[str, Any], ...]:
    """A text cut into literal runs and the parts a variation changes (dates, weekdays, priority words)."""
    parts: list[tuple[str, Any]] = []
    last = 0
    for match in _COMMON_RE.finditer(text):
        if match.group("date"):
            try:
                value: Any = dt.date(int(match.group(2)), int(match.group(3)), int(match.group(4)))
            except ValueError:
                continue
            kind = "date"
        elif match.group("weekday"):
            kind, value = "weekday", _WEEKDAYS.index(match.group(0))
        else:
            kind, value = "priority", match.group(0)
        parts.append(("text", text[last:match.start()]))
        parts.append((kind, value))
        last = match.end()
    if not parts:
        return (("text", text),)
    parts.append(("text", text[last:]))
    return tuple(parts)


def vary(example: dict[str, Any], rng: random.Random, kind: str | None = None,
         style: str | None = None) -> dict[str, Any]:
    """A variant of a seed example in the same format (`kind` as found by `kind_of`, if known), its request worded
    in `style` when that is a phrasing style the simulator knows."""
    change = Variation(rng, style)
    kind = kind or kind_of(example)
    if kind == "sharegpt":
        return {**example, "conversations": _vary_turns(example["conversations"], "from", "value", change)}
    if kind == "chatml":
        return {**example, "messages": _vary_turns(example["messages"], "role", "content", change)}
    if kind == "alpaca":
        out = {**example, "instruction": change.request(str(example["instruction"])),
               "output": change.common(str(example["output"]))}
        if isinstance(example.get("input"), str) and example["input"]:
            out["input"] = change.common(example["input"])
        return out
    varied: dict[str, Any] = _vary_leaves(example, change, [True])
    return varied


def _vary_turns(turns: list[dict[str, Any]], role_key: str, text_key: str, change: Variation) -> list[dict[str, Any]]:
    out, first_request = [], True
    for turn in turns:
        text = str(turn.get(text_key, ""))
        if turn.get(role_key) in USER_ROLES and first_request:
            text, first_request = change.request(text), False
        elif turn.get(role_key) != "system":
            text = change.common(text)
        out.append({**turn, text_key: text})
    return out


def _vary_leaves(value: Any, change: Variation, first: list[bool]) -> Any:
    if isinstance(value, dict):
        return {k: _vary_leaves(v, change, first) for k, v in value.items()}
    if isinstance(value, list):
        return [_vary_leaves(v, change, first) for v in value]
    if isinstance(value, str) and value:
        if first[0]:
            first[0] = False
            return change.request(value)
        return change.common(value)
    return value


def distinct_variants(seeds: list[dict[str, Any]], count: int, rng: random.Random,
                      avoid: Callable[[bytes], bool] | None = None,
                      kinds: list[str | None] | None = None) -> list[dict[str, Any]]:
    """`count` variants rotating over the seeds, none equal to a seed or to each other (`kinds`: the seeds'
    formats, when already known)."""
    taken = {orjson.dumps(s) for s in seeds}
    out: list[dict[str, Any]] = []
    kinds = kinds if kinds is not None else [kind_of(s) for s in seeds]
    start = rng.randrange(len(seeds))
    for i in range(count):
        seed, kind = seeds[(start + i) % len(seeds)], kinds[(start + i) % len(seeds)]
        for _ in range(6):
            variant = vary(seed, rng, kind)
            key = orjson.dumps(variant)
            if key not in taken and not (avoid and avoid(key)):
                break
        taken.add(key)
        out.append(variant)
    return out
