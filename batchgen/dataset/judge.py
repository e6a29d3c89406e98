"""A judge stage's answers: one score for each example shown, and the verdicts they give. Pure, no I/O.

A judge request shows examples 0 .. n-1 of its source stage (the request's `parents`, in that order) and asks for
`{"scores": [{"index": i, "score": s, "reason": "..."}, ...]}` (`recipe.formats.JUDGMENTS_SCHEMA`), scores from 1 to
10. `parse_judgments` reads an answer, also in the judging worker: a bare list of scores, or one other key holding
the list, is read too, and JSON in a fenced block or in prose, as for examples. `incomplete` checks it against what
the request showed: one score for each index, none twice, none beyond.

An answer that fails either is rejected whole (category `judge_answer`) and retried like any invalid answer, so a
judge never keeps an example it did not score for want of an answer. A complete answer's scores are recorded (the
ledger's `judgments`), and each example scored below the stage's threshold is rejected with the judge's reason
(category `judge`): the export, coverage, review and report leave it out like any rejected example.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from batchgen.dataset.reasons import JUDGE, JUDGE_ANSWER, Reason
from batchgen.dataset.validate import excerpt, load_json, response_problem
from batchgen.recipe.spec import JUDGE_SCALE

Judgment = tuple[int, float, str]
"""(index among the examples shown, score, the judge's reason)."""

REASON_LIMIT = 300  # characters of a judge's reason kept in an example's rejection


@dataclass(frozen=True, slots=True)
class JudgeRules:
    """How a judge stage's answers are read (picklable, for the judging worker). A judge's answers hold no examples,
    so there is nothing of theirs to deduplicate."""

    dedupe: str = "none"


def parse_judgments(content: str | None, finish_reason: str | None,
                    refusal: str | None = None) -> tuple[Reason | None, list[Judgment]]:
    """The scores in a judge's answer, or the reason it has none that can be read."""
    problem = response_problem(content, finish_reason, refusal)
    if problem is not None:
        return problem, []
    assert content is not None
    loaded = load_json(content)
    if isinstance(loaded, Reason):
        return loaded, []
    items = _score_list(loaded[0])
    if items is None:
        return Reason(JUDGE_ANSWER, "Judge answer holds no list of scores", excerpt(content)), []
    found: list[Judgment] = []
    low, high = JUDGE_SCALE
    for item in items:
        if not isinstance(item, dict):
            return Reason(JUDGE_ANSWER, "Judge answer holds a score that is not an object", excerpt(str(item))), []
        index, score, why = item.get("index"), item.get("score"), item.get("reason", "")
        if not isinstance(index, int | float) or isinstance(index, bool) or index != int(index):
            return Reason(JUDGE_ANSWER, "Judge score without an index", excerpt(str(item))), []
        if not isinstance(score, int | float) or isinstance(score, bool) or not low <= score <= high:
            return Reason(JUDGE_ANSWER, "Judge score out of range",
                          f"{score!r} for example {int(index)} (scores run from {low} to {high})"), []
        found.append((int(index), score, why if isinstance(why, str) else str(why)))
    return None, found


def _score_list(data: Any) -> list[Any] | None:
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        return None
    scores = data.get("scores")
    if isinstance(scores, list):
        return scores
    lists = [value for value in data.values() if isinstance(value, list)]
    return lists[0] if len(lists) == 1 else None


def incomplete(judgments: list[Judgment], shown: int) -> Reason | None:
    """Why the scores do not give each of the `shown` examples exactly one, or None."""
    counts = Counter(index for index, _, _ in judgments)
    beyond = sorted(i for i in counts if not 0 <= i < shown)
    if beyond:
        return Reason(JUDGE_ANSWER, "Judge scored an example it was not shown",
                      f"index {beyond[0]} of {shown} example(s)")
    twice = sorted(i for i, n in counts.items() if n > 1)
    if twice:
        return Reason(JUDGE_ANSWER, "Judge scored an example twice", f"index {twice[0]}")
    if len(counts) < shown:
        missing = next(i for i in range(shown) if i not in counts)
        return Reason(JUDGE_ANSWER, "Judge answer scores too few examples",
                      f"{len(counts)} of {shown}, not index {missing}")
    return None


def rejection(stage: str, score: float, threshold: int, why: str) -> Reason:
    """The rejection of an example scored below the threshold, with the judge's reason."""
    shown = int(score) if score == int(score) else score
    said = " ".join(why.split())
    if len(said) > REASON_LIMIT:
        said = said[:REASON_LIMIT - 3] + "..."
    return Reason(JUDGE, "Low judge score", f"{shown} below {threshold} ({stage})" + (f": {said}" if said else ""))


__all__ = ["JudgeRules", "Judgment", "incomplete", "parse_judgments", "rejection"]
