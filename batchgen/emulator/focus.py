"""Reading a prompt as a model reads it: the axis values it names, the answer formats it lists, its seeds.

A generation prompt often says what this one request is for, and which answer format each kind of example takes:

    - Operation: update                                   (also "operation = update", "the operation: update")
    - Phrasing style: casual                              (formal, casual, imperative, question)
    - Error cases: no, every request in this batch succeeds   (or "yes, about a third", "half", "20 %")
    - For updates: "Updated task: '[title]' | [field]: changed to [value]"

`read_focus` finds them in one message, `merged` over a whole prompt; `Seed.read` tells a seed example's operation
(the answer format its first answer matches, else that answer's first word) and whether it is an error case.
Nothing here knows batchgen's recipe: the prompt's text is all there is.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from batchgen.emulator.synth import turns_of

_IS = r"""["']?[ \t]*[:=][ \t]*"""  # between a label and its value: "Operation: ", "'operation': ", "style = "
_OPERATION_RE = re.compile(r"(?im)\b(?:operation|intent|action)" + _IS + r"""["']?([A-Za-z][\w-]*)""")
_STYLE_RE = re.compile(r"(?im)\b(?:phrasing[ _]style|phrasing|style|tone)" + _IS + r"""["']?([A-Za-z][\w-]*)""")
_ERRORS_RE = re.compile(r"(?im)\b(?:error[ _]cases|include[ _]errors|errors)" + _IS + r"(.+)$")
_FORMAT_RE = re.compile(r"""(?im)^[ \t]*[-*]?[ \t]*for[ \t]+([a-z][a-z -]{0,40}?)[ \t]*:[ \t]*"(.+)"[ \t]*$""")
_TODAY_RE = re.compile(r"(?i)\btoday\b[^\n]{0,40}?\b(\d{4})-(\d{2})-(\d{2})\b")
PLACEHOLDER_RE = re.compile(r"\[([^\[\]]+)\]")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z']*")
_NO = frozenset({"no", "none", "false", "never", "without", "zero", "0", "off"})
_YES = frozenset({"yes", "true", "include", "including", "with", "some", "on", "1"})
_SHARES = {"all": Fraction(1), "every": Fraction(1), "half": Fraction(1, 2), "third": Fraction(1, 3),
           "quarter": Fraction(1, 4), "fifth": Fraction(1, 5), "tenth": Fraction(1, 10)}
_DEFAULT_ERROR_SHARE = Fraction(1, 3)


@functools.lru_cache(maxsize=4096)
def stem(word: str) -> str:
    """A word's stem, enough to tell that "updates", "update" and "Updated" (or "completions" and "complete") name
    one operation."""
    word = word.lower().strip("'\"")
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    for suffix in ("ion", "ed", "ing", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


@dataclass(frozen=True)
class AnswerFormat:
    """One answer format a prompt lists: `For <label>: "<template>"`, the template's [placeholders] to be filled."""

    label: str
    template: str
    pattern: re.Pattern[str] = field(compare=False)

    @classmethod
    def of(cls, label: str, template: str) -> AnswerFormat:
        parts = PLACEHOLDER_RE.split(template)  # literal, placeholder, literal, ...
        regex = "".join(re.escape(part) if i % 2 == 0 else ".+?" for i, part in enumerate(parts))
        return cls(label.strip(), template.strip(), re.compile(regex, re.IGNORECASE | re.DOTALL))

    @functools.cached_property
    def stem(self) -> str:
        return stem(self.label.split()[-1])

    @functools.cached_property
    def is_error(self) -> bool:
        return self.stem == "error" or self.template.lower().startswith("error")

    def matches(self, answer: str) -> bool:
        return self.pattern.fullmatch(answer.strip()) is not None

    @functools.cached_property
    def literal_words(self) -> tuple[str, ...]:
        """The words of the template outside its placeholders, in order."""
        return tuple(_WORD_RE.findall(PLACEHOLDER_RE.sub(" ", self.template)))


@dataclass(frozen=True)
class Focus:
    """What a prompt asks of its examples (None: it does not say)."""

    operation: str | None = None
    style: str | None = None
    errors: Fraction | None = None  # the share of error examples wanted
    formats: tuple[AnswerFormat, ...] = ()
    today: dt.date | None = None

    @property
    def asks(self) -> bool:
        return self.operation is not None or self.style is not None or self.errors is not None


def read_focus(text: str) -> Focus:
    """The axis values and answer formats one message names (the last mention of each wins)."""
    operation = _last(_OPERATION_RE, text)
    style = _last(_STYLE_RE, text)
    shares = [error_share(m.group(1)) for m in _ERRORS_RE.finditer(text)]
    errors = next((share for share in reversed(shares) if share is not None), None)
    formats = tuple(AnswerFormat.of(m.group(1), m.group(2)) for m in _FORMAT_RE.finditer(text))
    today = None
    found = _TODAY_RE.search(text)
    if found:
        try:
            today = dt.date(int(found.group(1)), int(found.group(2)), int(found.group(3)))
        except ValueError:
            today = None
    return Focus(operation and operation.lower(), style and style.lower(), errors, formats, today)


def merged(parts: Iterable[Focus]) -> Focus:
    """The focus of a whole prompt: a later message's values win, formats add up."""
    out = Focus()
    for part in parts:
        out = Focus(part.operation or out.operation, part.style or out.style,
                    part.errors if part.errors is not None else out.errors, out.formats + part.formats,
                    part.today or out.today)
    return out


def error_share(value: str) -> Fraction | None:
    """The share of error examples a value asks for: "no" 0, "yes, about a third" 1/3, "20 %" 1/5; None when the
    value says neither (an answer template such as "Error: [message]")."""
    words = re.findall(r"\d+(?:\.\d+)?\s*%|[a-z0-9]+", value.lower())
    if not words or words[0] in _NO:
        return Fraction(0) if words else None
    if words[0] not in _YES:
        return None
    for word in words[1:]:
        if word.endswith("%"):
            return min(Fraction(word.rstrip("% ")) / 100, Fraction(1))
        if word.rstrip("s") in _SHARES:
            return _SHARES[word.rstrip("s")]
    return _DEFAULT_ERROR_SHARE


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(text)
    return str(found[-1]) if found else None


@dataclass(frozen=True)
class Seed:
    """A seed example as the simulator reads it: its format, first request and answer, operation and error-ness."""

    example: dict[str, Any]
    kind: str
    request: str
    answer: str
    operation: str | None  # a stem
    error: bool

    @classmethod
    def read(cls, example: dict[str, Any], kind: str, formats: tuple[AnswerFormat, ...]) -> Seed | None:
        turns = turns_of(example, kind)
        request = next((text for role, text in turns if role == "user"), None)
        answer = next((text for role, text in turns if role == "assistant"), None)
        if request is None or answer is None:
            return None
        matched = next((f for f in formats if f.matches(answer)), None)
        if matched is not None:
            return cls(example, kind, request, answer, matched.stem, matched.is_error)
        first = _WORD_RE.findall(answer)[:1]
        operation = stem(first[0]) if first else None
        return cls(example, kind, request, answer, operation, operation == "error")

    def names(self, operation: str) -> bool:
        """Whether the request says the operation in a word of its own ("Delete the gym task": delete)."""
        return any(stem(word) == operation for word in _WORD_RE.findall(self.request))
