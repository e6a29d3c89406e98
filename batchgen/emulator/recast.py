"""Recasting: an example of an operation that none of the prompt's seeds shows, made from the answer format the
prompt lists for it, as a model writes one from the instructions alone.

`For updates: "Updated task: '[title]' | [field]: changed to [value]"` is filled from what the prompt holds: a title
quoted in a seed's answer, one of the options of `[low/medium/high]`, a date after the prompt's "today", a field
and a value from another format's `Label: [...]` parts, a number and as many list items for `[N] ... [... for each
...]`. The request names the operation and the details filled in ("Update the task 'Team meeting' with priority
high"). An error case answers with an error seed's message about the title, or with the error format filled in
(a request that names no title: "A task needs a title").
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import re
from typing import Any

from batchgen.emulator.focus import PLACEHOLDER_RE, AnswerFormat, Focus, Seed, stem
from batchgen.emulator.schema_fill import sentence

_QUOTED_RE = re.compile(r"'([^'\n]{2,60})'")
_DATE_RE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_LABEL_BEFORE_RE = re.compile(r"(?:^|[|,;(]\s*)([A-Z][A-Za-z ]{0,20}?):\s*$")
_WORD_RE = re.compile(r"[A-Za-z]+")
_FALLBACK_TODAY = dt.date(2025, 1, 1)
_ALTERNATIVE_SHARE = 0.25  # how often `[date or 'not set']` takes the quoted alternative


class Recaster:
    """Makes examples of the operations a prompt's answer formats describe."""

    def __init__(self, focus: Focus, seeds: list[Seed]) -> None:
        self.formats = focus.formats
        self.today = focus.today or _first_date(seeds) or _FALLBACK_TODAY
        quoted = (t for s in seeds for t in _QUOTED_RE.findall(s.answer))
        self.titles: list[str] = list(dict.fromkeys(t for t in quoted if t[:1].isupper()))  # not 'list my tasks'
        self.fields = _fields(self.formats)
        self.messages = [s.answer for s in seeds if s.error]
        self.words = [w for s in seeds for w in _WORD_RE.findall(s.answer)]
        self.error_format = next((f for f in self.formats if f.is_error), None)
        self._format_of: dict[str, AnswerFormat | None] = {}

    def format_for(self, operation: str) -> AnswerFormat | None:
        """The answer format of an operation: by its label ("For updates"), else by a word of its text."""
        if operation not in self._format_of:
            self._format_of[operation] = self._find_format(operation)
        return self._format_of[operation]

    def _find_format(self, operation: str) -> AnswerFormat | None:
        wanted = stem(operation)
        plain = [f for f in self.formats if not f.is_error]
        return next((f for f in plain if f.stem == wanted), None) or next(
            (f for f in plain if any(stem(w) == wanted for w in f.literal_words)), None)

    def example(self, source: Seed, operation: str | None, rng: random.Random, error: bool) -> dict[str, Any] | None:
        """An example of `operation` (an error case of it, if `error`) in the source seed's format, or None when
        the prompt lists no format for it (nor, for an error case, an error format or error seed)."""
        fmt = self.format_for(operation) if operation else None
        if fmt is None and (operation or not error):
            return None
        filler = _Filler(self, rng, rng.choice(self.titles) if self.titles else _title_of(source.request))
        if fmt is None:  # an error case of no operation in particular: the seed's request, refused
            request, answer = source.request, self._error(filler, None, "", rng)
        else:
            answer = filler.fill(fmt.template)
            titled = _names_title(fmt)
            if error:
                titled = titled and bool(self._titled_messages())
                answer = self._error(filler, fmt if not titled else None, operation or "", rng)
            request = _request(operation or "", _noun(fmt, operation or ""), filler.title if titled else None,
                               filler.details, single=error and _names_title(fmt))
        return None if answer is None else _build(source.kind, request, answer)

    def _titled_messages(self) -> list[str]:
        return [m for m in self.messages if _QUOTED_RE.search(m)]

    def _error(self, filler: _Filler, untitled: AnswerFormat | None, operation: str,
               rng: random.Random) -> str | None:
        """An error answer: an error seed's message about the filler's title, or the error format filled with a
        message that fits a request naming no title (`untitled`: the operation's format)."""
        titled = self._titled_messages()
        if untitled is None and titled:
            return _QUOTED_RE.sub(f"'{filler.title}'", rng.choice(titled), count=1)
        if self.error_format is None:
            return rng.choice(self.messages) if self.messages else None
        noun = _noun(untitled, operation) if untitled is not None else None
        if untitled is not None and _names_title(untitled):
            filler.message = f"A {noun or 'request'} needs a title. Which {noun or 'one'} do you mean?"
        else:
            filler.message = f"Nothing matches that request{f' among your {noun}s' if noun else ''}."
        return filler.fill(self.error_format.template)


class _Filler:
    """Fills one example's placeholders, consistently: one count for `[N]` and its list, one field for
    `[field]` and `[value]`; records the details a request should name."""

    def __init__(self, recaster: Recaster, rng: random.Random, title: str) -> None:
        self.recaster, self.rng, self.title = recaster, rng, title
        self.count = rng.randint(2, 4)
        self.listed: set[str] = set()  # titles already in this answer's list
        self.field: str | None = None
        self.message: str | None = None
        self.details: list[tuple[str, str]] = []

    def fill(self, template: str) -> str:
        out, last = [], 0
        for match in PLACEHOLDER_RE.finditer(template):
            out.append(template[last:match.start()])
            value, detail = self.value(match.group(1))
            label = _LABEL_BEFORE_RE.search(template[:match.start()])
            if detail and label is not None:
                self.details.append((label.group(1), value))
            out.append(value)
            last = match.end()
        out.append(template[last:])
        return "".join(out)

    def value(self, placeholder: str) -> tuple[str, bool]:
        """A placeholder's value, and whether a request should name it as a detail."""
        text = placeholder.strip()
        low = text.lower()
        if "for each" in low:
            item = text[:low.index("for each")].strip()
            return ", ".join(self.phrase(item) for _ in range(self.count)), False
        if low in ("n", "#", "count") or low.startswith("number"):
            return str(self.count), False
        if " or " in low:
            left, right = text[:low.index(" or ")], text[low.index(" or ") + 4:].strip()
            if right[:1] in "'\"" and self.rng.random() < _ALTERNATIVE_SHARE:
                return right.strip("'\""), False
            return self.value(left)
        if "/" in text and " " not in text:
            return self.rng.choice([option for option in text.split("/") if option]), True
        if "title" in low or low == "name":
            return self.title, False
        if "date" in low:
            return self.date(), True
        if low == "field":
            self.field = self.rng.choice(sorted(self.recaster.fields)) if self.recaster.fields else "Title"
            return self.field, False
        if low == "value":
            return self._field_value(), False
        return self.message or sentence(self.rng, self.recaster.words, 3, 8), False

    def _field_value(self) -> str:
        """The new value of the chosen field (a new title for a title)."""
        spec = self.recaster.fields.get(self.field or "")
        value = self.value(spec)[0] if spec else f"'{self.rng.choice(self.recaster.titles or [self.title])}'"
        self.details.append((self.field or "title", value))
        return value

    def phrase(self, item: str) -> str:
        """One list item: `title (priority, due date)` with a title, a field's value and a date in place."""
        labels = {label.lower(): label for label in self.recaster.fields}

        def fill(match: re.Match[str]) -> str:
            word = match.group(0).lower()
            if word in ("title", "name"):
                return f"'{self.fresh_title()}'"
            if word == "date":
                return self.date()
            if word in labels and not item[match.end():].lstrip().lower().startswith("date"):
                return self.value(self.recaster.fields[labels[word]])[0]
            return match.group(0)

        return _WORD_RE.sub(fill, item)

    def fresh_title(self) -> str:
        """A title not in this answer's list yet (while the prompt has any left)."""
        left = [t for t in self.recaster.titles if t not in self.listed] or self.recaster.titles or [self.title]
        title = self.rng.choice(left)
        self.listed.add(title)
        return title

    def date(self) -> str:
        return (self.recaster.today + dt.timedelta(days=self.rng.randint(1, 30))).isoformat()


@functools.lru_cache(maxsize=256)
def _fields(formats: tuple[AnswerFormat, ...]) -> dict[str, str]:
    """Label -> placeholder of every `Label: [placeholder]` part of the (non-error) formats: Priority, Due."""
    found: dict[str, str] = {}
    for fmt in formats:
        if fmt.is_error:
            continue
        for match in PLACEHOLDER_RE.finditer(fmt.template):
            label = _LABEL_BEFORE_RE.search(fmt.template[:match.start()])
            if label is not None and match.group(1).lower() not in ("field", "value"):
                found.setdefault(label.group(1), match.group(1))
    return found


def _names_title(fmt: AnswerFormat) -> bool:
    """Whether the format names one item by its title (an update does; a list of items does not)."""
    return any(("title" in p.lower() or p.lower() == "name") and "for each" not in p.lower()
               for p in PLACEHOLDER_RE.findall(fmt.template))


def _noun(fmt: AnswerFormat, operation: str) -> str | None:
    """What the format's items are called: the word after the operation's ("Updated task:" task), else its first
    plural ("tasks found": task)."""
    words = fmt.literal_words
    wanted = stem(operation) if operation else None
    for i, word in enumerate(words[:-1]):
        if wanted and stem(word) == wanted and words[i + 1].islower():
            return words[i + 1]
    plural = next((w for w in words if w.islower() and len(w) > 3 and w.endswith("s")), None)
    return plural[:-1] if plural else None


def _request(operation: str, noun: str | None, title: str | None, details: list[tuple[str, str]],
             single: bool = False) -> str:
    """A request that names the operation, the item (by its title, or `single`: one item left unnamed, or all of
    them) and the details of the answer."""
    verb = operation[:1].upper() + operation[1:]
    if title is not None:
        text = f"{verb} the {noun} '{title}'" if noun else f"{verb} '{title}'"
    elif noun:
        text = f"{verb} a {noun}" if single or details else f"{verb} my {noun}s"
    else:
        text = verb
    if details:
        text += " with " + " and ".join(f"{label.lower()} {value}" for label, value in details)
    return text


def _title_of(request: str) -> str:
    words = _WORD_RE.findall(request)[:3]
    return " ".join(words).capitalize() if words else "Item"


def _first_date(seeds: list[Seed]) -> dt.date | None:
    for seed in seeds:
        for match in _DATE_RE.finditer(seed.answer):
            try:
                return dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
            except ValueError:
                continue
    return None


def _build(kind: str, request: str, answer: str) -> dict[str, Any] | None:
    if kind == "sharegpt":
        return {"conversations": [{"from": "human", "value": request}, {"from": "gpt", "value": answer}]}
    if kind == "chatml":
        return {"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]}
    if kind == "alpaca":
        return {"instruction": request, "input": "", "output": answer}
    return None
