"""The values validation produces: rejection reasons and their categories, verdicts, and the quality summary.

`batchgen.dataset.validate` computes them and re-exports everything here; import from there.

Categories, response level (the whole response yields no example, but for two notes that come with the examples
it kept: truncated, an answer cut at max_tokens, and other_shape, examples held another way than under the job's
examples keys): truncated, content_filter, finish_reason, refusal, empty_response, not_json, no_examples,
other_shape; for an embeddings answer no_embedding, embedding_size,
embedding_value; for a judge stage's answer judge_answer (not one score for each example shown). Example level:
schema, turn_count, role_order, empty_turn, turn_too_long, format_pattern, regex, forbidden, duplicate, seed_copy,
near_duplicate, unchanged_evolution, check, judge (scored below a judge stage's threshold).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from batchgen.recipe.formats import Turn, from_turns

# Response-level categories: the whole response yields no example.
TRUNCATED = "truncated"
CONTENT_FILTER = "content_filter"
FINISH_REASON = "finish_reason"
REFUSAL = "refusal"
EMPTY_RESPONSE = "empty_response"
NOT_JSON = "not_json"
NO_EXAMPLES = "no_examples"
OTHER_SHAPE = "other_shape"  # the examples came as a bare list, one example, or under another key (kept)
# Response-level categories of an embeddings answer: its one vector is missing, of the wrong size, or not numbers.
NO_EMBEDDING = "no_embedding"
EMBEDDING_SIZE = "embedding_size"
EMBEDDING_VALUE = "embedding_value"
JUDGE_ANSWER = "judge_answer"  # a judge stage's answer that does not score each example it was shown once
# Example-level categories.
SCHEMA = "schema"
TURN_COUNT = "turn_count"
ROLE_ORDER = "role_order"
EMPTY_TURN = "empty_turn"
TURN_TOO_LONG = "turn_too_long"
FORMAT_PATTERN = "format_pattern"
REGEX = "regex"
FORBIDDEN = "forbidden"
DUPLICATE = "duplicate"
SEED_COPY = "seed_copy"
NEAR_DUPLICATE = "near_duplicate"  # nearly repeats an earlier example or a seed (dataset/near.py)
UNCHANGED_EVOLUTION = "unchanged_evolution"  # an evolved example nearly equal to its own parent
CHECK = "check"  # a rule hook of the job had something against it (dataset/checks.py)
JUDGE = "judge"  # a judge stage scored it below its threshold (dataset/judge.py)

RESPONSE_CATEGORIES = (TRUNCATED, CONTENT_FILTER, FINISH_REASON, REFUSAL, EMPTY_RESPONSE, NOT_JSON,
                       NO_EXAMPLES, OTHER_SHAPE, NO_EMBEDDING, EMBEDDING_SIZE, EMBEDDING_VALUE, JUDGE_ANSWER)
EXAMPLE_CATEGORIES = (SCHEMA, TURN_COUNT, ROLE_ORDER, EMPTY_TURN, TURN_TOO_LONG, FORMAT_PATTERN, REGEX,
                      FORBIDDEN, DUPLICATE, SEED_COPY, NEAR_DUPLICATE, UNCHANGED_EVOLUTION, CHECK, JUDGE)
CATEGORIES = RESPONSE_CATEGORIES + EXAMPLE_CATEGORIES

DedupeMode = Literal["exact", "normalized", "none"]
DEDUPE_MODES: tuple[str, ...] = ("exact", "normalized", "none")

@dataclass(frozen=True, slots=True)
class Reason:
    """Why a response or an example was rejected: group by `category` or `message`, show `str(reason)`."""

    category: str
    message: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.message}: {self.detail}" if self.detail else self.message

    @classmethod
    def parse(cls, category: str, text: str) -> Reason:
        """Rebuild a reason from its category and its stored one-line form."""
        message, _, detail = text.partition(": ")
        return cls(category, message, detail)


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """The raw examples found in one response, and the response-level `reason` there are none (or, for a
    truncated answer or one of another shape, a note on the examples it kept).

    `source` is where the JSON came from ("json", "fenced" block, "embedded" in prose); `shape` is how the
    examples were held ("examples" key, bare "array", a "single" example, or "wrapper:<key>").
    """

    examples: list[Any]
    reason: Reason | None = None
    source: str = ""
    shape: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


Pair = tuple[str, str]
"""One turn as (role, content)."""


@dataclass(slots=True)
class ExampleVerdict:
    """The outcome for one example; `content_hash` (in the rules' dedupe mode) is None for schema failures.

    `pairs` holds the example's (role, content) turns, roles system/user/assistant; `turns` builds `Turn`s
    from them on demand (validation stays off pydantic for the hundreds of thousands of examples that pass).
    """

    valid: bool
    reason: Reason | None
    pairs: list[Pair]
    content_hash: str | None
    duplicate_of: str | None = None

    @property
    def category(self) -> str | None:
        return self.reason.category if self.reason else None

    @property
    def turns(self) -> list[Turn]:
        return [Turn(role=role, content=content) for role, content in self.pairs]  # type: ignore[arg-type]

    def example(self, fmt: str) -> dict[str, Any]:
        """The example as a JSON-ready dict of a format (raises formats.NotRepresentable)."""
        return from_turns(self.turns, fmt)


@dataclass(frozen=True, slots=True)
class ResponseVerdict:
    """The outcome for one response: a response-level `reason`, or one verdict per example found."""

    reason: Reason | None
    examples: list[ExampleVerdict]
    parsed: ParsedResponse

    @property
    def valid_count(self) -> int:
        return sum(1 for verdict in self.examples if verdict.valid)



@dataclass
class Summary:
    """Counts for the lesson's report: "Valid: 487/500" and "Invalid reasons: {...}".

    A rejected response counts as one invalid item, since it yielded no example to count.
    """

    total: int = 0
    valid: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)

    @property
    def invalid(self) -> int:
        return self.total - self.valid

    def add(self, reason: Reason | None, count: int = 1) -> None:
        """Count `count` valid items (reason None) or invalid ones with this reason."""
        self.total += count
        if reason is None:
            self.valid += count
        else:
            # Other shapes are told apart by the shape (a job may map that key; see [validate] examples_keys).
            self.reasons[str(reason) if reason.category == OTHER_SHAPE else reason.message] += count
            self.categories[reason.category] += count

    def add_response(self, verdict: ResponseVerdict) -> None:
        if verdict.reason is not None:
            self.add(verdict.reason)
        for example in verdict.examples:
            self.add(example.reason)

    def merge(self, other: Summary) -> Summary:
        return Summary(self.total + other.total, self.valid + other.valid, self.reasons + other.reasons,
                       self.categories + other.categories)

    def render(self) -> str:
        """The lesson's two lines, reasons by message, most frequent first."""
        reasons = dict(sorted(self.reasons.items(), key=lambda item: (-item[1], item[0])))
        return f"Valid: {self.valid}/{self.total}\nInvalid reasons: {reasons!r}"

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "valid": self.valid, "invalid": self.invalid,
                "reasons": dict(self.reasons.most_common()),
                "categories": dict(self.categories.most_common())}
