"""The quality report of a job (`batchgen report`): per stage and per axis cell, what was asked for, what came back
valid and why the rest did not, and per stage how varied and how long the valid examples are, how many know their
lineage, what a domain expert thought of them and what one valid example cost.

The counts and money come from what exists: the stage figures of `compare` (requests, yield, near-duplicates,
cost per valid example), the cells of `coverage`, the lineage and review counts `show` reports. What this module
adds is measured in one streaming pass over the job's valid examples (`ledger.valid_example_contents`):

- distinct-1 and distinct-2 of the human (user) turns and of the assistant turns: distinct word unigrams (bigrams)
  over all of them, words being the lower-cased `\\w+` tokens of a turn (an apostrophe inside a word kept), bigrams
  never crossing from one turn to the next. The pass keeps each distinct word once and each distinct bigram as one
  integer, never the list of all bigrams.
- lengths in words: per example (all its turns) and per human and assistant turn: min, p25, median, p75, max and
  mean, exact, from a count of each length (quantiles interpolated between the two nearest lengths).

An embeddings job has no turns: its distinct-n and lengths are None. Rates are shares to 4 places, None where there
is nothing to divide by; money is exact (cost per valid example to the nano-dollar, half to even), written in the
report's dict as fixed-point decimal text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batchgen.dataset.compare import StageFigures, job_figures, share
from batchgen.dataset.coverage import CellCoverage, job_coverage
from batchgen.dataset.report import lineage
from batchgen.ledger import Ledger
from batchgen.money import format_usd
from batchgen.recipe.formats import EMBEDDINGS_FORMAT
from batchgen.recipe.spec import JobSpec, ResolvedStage

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
ROLES = ("human", "assistant")  # the report's names of the user and assistant turns
LENGTHS = ("words_per_example", "words_per_human_turn", "words_per_assistant_turn")


def tokens(text: str) -> list[str]:
    """The lower-cased word tokens of a text: `Don't panic!` is ["don't", "panic"]."""
    return _WORD.findall(text.lower())


def role_texts(raw: Any, fmt: str) -> list[tuple[str, str]]:
    """The turns of an example as stored (a dict in format `fmt`) as (role, text), roles system/user/assistant;
    an Alpaca example is its instruction and input (the user's) and its output (the assistant's)."""
    if not isinstance(raw, dict):
        return []
    if fmt == "sharegpt":
        return [(_SHAREGPT_ROLES.get(t.get("from", ""), ""), _text(t.get("value")))
                for t in raw.get("conversations", []) if isinstance(t, dict)]
    if fmt == "chatml":
        return [(str(t.get("role", "")), _text(t.get("content")))
                for t in raw.get("messages", []) if isinstance(t, dict)]
    if fmt == "alpaca":
        prompt = "\n\n".join(_text(raw.get(key)) for key in ("instruction", "input") if raw.get(key))
        return [("user", prompt), ("assistant", _text(raw.get("output")))]
    return []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class DistinctN:
    """Distinct-1 and distinct-2 of some texts, counted as they are added: each distinct word kept once (with a
    number), each distinct bigram as one integer made of its two words' numbers."""

    def __init__(self) -> None:
        self.unigrams = 0
        self.bigrams = 0
        self._words: dict[str, int] = {}
        self._pairs: set[int] = set()

    def add(self, words: list[str]) -> None:
        """Count the words of one text (one turn): its unigrams and the bigrams inside it."""
        previous = -1
        for word in words:
            number = self._words.setdefault(word, len(self._words))
            if previous >= 0:
                self._pairs.add(previous << 32 | number)
            previous = number
        self.unigrams += len(words)
        self.bigrams += max(len(words) - 1, 0)

    def to_dict(self) -> dict[str, float | None]:
        return {"distinct_1": share(len(self._words), self.unigrams),
                "distinct_2": share(len(self._pairs), self.bigrams)}


class Lengths:
    """A distribution of lengths, kept as a count of each length: exact quantiles in memory that grows with the
    number of different lengths, not of examples."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()

    def add(self, length: int) -> None:
        self.counts[length] += 1

    def to_dict(self) -> dict[str, Any] | None:
        """{count, min, p25, median, p75, max, mean} (quantiles and mean to 1 place); None for no lengths."""
        total = sum(self.counts.values())
        if not total:
            return None
        ordered = sorted(self.counts.items())
        mean = sum(length * n for length, n in ordered) / total
        return {"count": total, "min": ordered[0][0], "p25": _quantile(ordered, total, 0.25),
                "median": _quantile(ordered, total, 0.5), "p75": _quantile(ordered, total, 0.75),
                "max": ordered[-1][0], "mean": round(mean, 1)}


def _quantile(ordered: list[tuple[int, int]], total: int, q: float) -> float:
    """The q-quantile of the lengths, interpolated between the two nearest (numpy's and statistics' "inclusive"
    method), from (length, count) pairs in length order."""
    position = q * (total - 1)
    low, high = int(position), min(int(position) + 1, total - 1)
    return round(_nth(ordered, low) + (_nth(ordered, high) - _nth(ordered, low)) * (position - low), 1)


def _nth(ordered: list[tuple[int, int]], index: int) -> int:
    """The length at `index` (from 0) of the lengths in order."""
    seen = 0
    for length, n in ordered:
        seen += n
        if index < seen:
            return length
    return ordered[-1][0]


@dataclass
class StageTexts:
    """What the valid examples of one stage say in words: distinct-n of each role's turns and their lengths."""

    distinct: dict[str, DistinctN] = field(default_factory=lambda: {role: DistinctN() for role in ROLES})
    lengths: dict[str, Lengths] = field(default_factory=lambda: {name: Lengths() for name in LENGTHS})

    def add(self, turns: Iterable[tuple[str, str]]) -> None:
        """Count one example's turns, as (role, text)."""
        words = 0
        for role, text in turns:
            found = tokens(text)
            words += len(found)
            name = "human" if role == "user" else "assistant" if role == "assistant" else None
            if name is not None:
                self.distinct[name].add(found)
                self.lengths[f"words_per_{name}_turn"].add(len(found))
        self.lengths["words_per_example"].add(words)

    def to_dict(self) -> dict[str, Any]:
        return {"distinct": {role: counts.to_dict() for role, counts in self.distinct.items()},
                "lengths": {name: counts.to_dict() for name, counts in self.lengths.items()}}


def stage_texts(examples: Iterable[tuple[str, Any]], fmt: str) -> dict[str, StageTexts]:
    """Distinct-n and lengths by stage of examples given as (stage, content in format `fmt`), in one pass."""
    stages: dict[str, StageTexts] = {}
    for stage, content in examples:
        found = stages.get(stage)
        if found is None:
            found = stages[stage] = StageTexts()
        found.add(role_texts(content, fmt))
    return stages


# -- the report -----------------------------------------------------------------------------------------------


@dataclass
class CellReport:
    coverage: CellCoverage
    reasons: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        found = self.coverage.to_dict()
        return {key: found[key] for key in ("cell", "share", "requests", "requested", "valid", "yield")} | {
            "reasons": self.reasons}


@dataclass
class StageReport:
    figures: StageFigures
    reasons: dict[str, int]
    lineage: dict[str, int] | None  # None: an embeddings job, whose examples have no parents
    cells: list[CellReport]
    texts: StageTexts | None  # None: an embeddings job, whose examples have no turns
    judge: dict[str, Any] | None = None  # of a judge stage: what it scored (`judge_figures`)

    def to_dict(self) -> dict[str, Any]:
        f = self.figures.to_dict()
        if self.judge is not None:
            return {"name": f["name"], "requests": f["requests"], "judge": self.judge, "reasons": self.reasons,
                    "cost_usd": money(f["cost_usd"]), "cells": []}
        texts = self.texts.to_dict() if self.texts is not None else {"distinct": None, "lengths": None}
        return {"name": f["name"], "requests": f["requests"], "requested": f["requested"], "found": f["found"],
                "valid": f["valid"], "yield": f["yield"], "reasons": self.reasons,
                "near_duplicate_rate": f["near_duplicate_rate"], **texts,
                "lineage": None if self.lineage is None else {
                    **self.lineage, "parent_rate": share(self.lineage["with_parent"], f["valid"]),
                    "root_rate": share(self.lineage["with_root"], f["valid"])},
                "review": _review(self.figures.review), "cost_usd": money(f["cost_usd"]),
                "cost_per_valid_usd": money(f["cost_per_valid_usd"]), "cells": [cell.to_dict() for cell in self.cells]}


@dataclass
class JobReport:
    job: str
    status: str
    model: str
    format: str
    axes: list[str]  # the axes of the job's cells, in the spec's order
    stages: list[StageReport]
    totals: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "status": self.status, "model": self.model, "format": self.format,
                "axes": self.axes, "stages": [stage.to_dict() for stage in self.stages], "totals": self.totals}


def job_report(ledger: Ledger, spec: JobSpec) -> JobReport:
    """The quality report of a job, every stage of its spec in order (see the module docstring)."""
    figures = job_figures(ledger, spec)
    rejected = ledger.rejections_by_cell(spec.name)
    known = lineage(ledger, spec.name)
    embeddings = spec.dataset_format == EMBEDDINGS_FORMAT
    texts = {} if embeddings else stage_texts(ledger.valid_example_contents(spec.name), spec.dataset_format)
    cells: dict[str, list[CellReport]] = {}
    for row in job_coverage(ledger, spec):
        reasons = rejected.get(row.stage, {}).get(row.key, {})
        cells.setdefault(row.stage, []).append(CellReport(row, reasons))
    judged = ledger.judgment_counts(spec.name)
    judges = {stage.name: stage for stage in spec.resolved_stages() if stage.judges}
    stages = [StageReport(stage, _sum(rejected.get(stage.name, {}).values()),
                          None if embeddings else known.get(stage.name, {"valid": 0, "with_parent": 0,
                                                                         "with_root": 0}),
                          cells.get(stage.name, []), None if embeddings else texts.get(stage.name, StageTexts()),
                          judge_figures(judges[stage.name], judged.get(stage.name)) if stage.name in judges else None)
              for stage in figures.stages]
    job = figures.to_dict()
    totals = {key: job[key] for key in ("requests", "requested", "found", "valid", "yield", "near_duplicate_rate")}
    totals.update(reasons=_sum(stage.reasons for stage in stages), review=_review(figures.review),
                  cost_usd=money(job["cost_usd"]), cost_per_valid_usd=money(job["cost_per_valid_usd"]))
    return JobReport(spec.name, figures.status, spec.model, spec.dataset_format, list(spec.axes.values), stages,
                     totals)


def judge_figures(stage: ResolvedStage, counts: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a judge stage scored: its source and threshold, the examples scored, passed and rejected, the mean
    score (None before any)."""
    found = counts or {"judged": 0, "passed": 0, "rejected": 0, "mean_score": None}
    return {"source": stage.source, "threshold": stage.threshold, **found,
            "pass_rate": share(found["passed"], found["judged"])}


def judge_line(stage: Mapping[str, Any]) -> str:
    """`Stage judge (scores main, threshold 7): 55 requests, 540 examples scored, 480 passed (88.9%), 60
    rejected, mean score 8.10`."""
    judge = stage["judge"]
    mean = f", mean score {judge['mean_score']}" if judge["mean_score"] is not None else ""
    return (f"Stage {stage['name']} (scores {judge['source']}, threshold {judge['threshold']}): "
            f"{stage['requests']:,} requests, {judge['judged']:,} examples scored, {judge['passed']:,} passed "
            f"({percent(judge['pass_rate'])}), {judge['rejected']:,} rejected{mean}")


def money(amount: Decimal | None) -> str | None:
    """Money for JSON: the exact decimal as fixed-point text (`0.000000094`, never `9.4E-8`)."""
    return None if amount is None else format(amount, "f")


def _sum(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Counts by category added up, the most frequent first."""
    total: Counter[str] = Counter()
    for found in counts:
        total.update(found)
    return dict(sorted(total.items(), key=lambda item: (-item[1], item[0])))


def _review(review: Mapping[str, Any]) -> dict[str, Any]:
    """A review summary without its per-stage part, zeros before any verdict."""
    return {"reviewed": review.get("reviewed", 0), "accepted": review.get("accepted", 0),
            "rejected": review.get("rejected", 0), "pass_rate": review.get("pass_rate")}


# -- as people read it ----------------------------------------------------------------------------------------


def stage_line(stage: Mapping[str, Any]) -> str:
    """`Stage main: 58 requests, 580 examples asked for, 558 valid (96.2%)` (a stage, or the totals)."""
    name = f"Stage {stage['name']}" if "name" in stage else "Total"
    return (f"{name}: {stage['requests']:,} requests, {stage['requested']:,} examples asked for, "
            f"{stage['valid']:,} valid ({percent(stage['yield'])})")


def cost_line(stage: Mapping[str, Any]) -> str:
    """`Cost: $0.01424445 at batch price, $0.000025528 per valid example` (a stage, or the totals)."""
    per_valid = stage["cost_per_valid_usd"]
    return (f"Cost: {format_usd(Decimal(stage['cost_usd']))} at batch price, "
            f"{'-' if per_valid is None else format_usd(Decimal(per_valid))} per valid example")


def cell_rows(cells: list[Mapping[str, Any]], axes: Iterable[str] = ()) -> tuple[list[str], list[list[str]]]:
    """The cells of a stage as a table: one column per axis (those of `axes` first, in that order), then
    requests, examples asked for, valid, yield, rejected."""
    axes = list(dict.fromkeys([*axes, *(axis for cell in cells for axis in cell["cell"])])) or ["cell"]
    headers = [*axes, "requests", "asked", "valid", "yield", "rejected"]
    rows = [[*(_value(cell["cell"], axis) for axis in axes), f"{cell['requests']:,}", f"{cell['requested']:,}",
             f"{cell['valid']:,}", percent(cell["yield"]), reasons_text(cell["reasons"])] for cell in cells]
    return headers, rows


def _value(cell: Mapping[str, Any], axis: str) -> str:
    if axis not in cell:
        return "-" if cell else "(all)"
    value = cell[axis]
    return value if isinstance(value, str) else json.dumps(value)


def text_rows(stage: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Lengths in words and distinct-n of a stage's valid examples, one row per example / human turn / assistant
    turn (empty for an embeddings job)."""
    if stage["lengths"] is None:
        return [], []
    headers = ["words", "min", "p25", "median", "p75", "max", "mean", "distinct-1", "distinct-2"]
    rows = []
    for label, name, role in (("per example", "words_per_example", None),
                              ("per human turn", "words_per_human_turn", "human"),
                              ("per assistant turn", "words_per_assistant_turn", "assistant")):
        found = stage["lengths"][name]
        numbers = ["-"] * 6 if found is None else [_number(found[key]) for key in
                                                   ("min", "p25", "median", "p75", "max", "mean")]
        distinct = stage["distinct"][role] if role else {"distinct_1": None, "distinct_2": None}
        rows.append([label, *numbers, _rate(distinct["distinct_1"]), _rate(distinct["distinct_2"])])
    return headers, rows


def figure_lines(stage: Mapping[str, Any]) -> list[str]:
    """The other figures of a stage (or of the totals), a line each: rejections, near-duplicates, lineage (of a
    stage), review, cost."""
    lines = [f"Rejected: {reasons_text(stage['reasons'])}",
             f"Near-duplicates: {percent(stage['near_duplicate_rate'])} of {stage['found']:,} examples judged"]
    if "lineage" in stage:
        valid, known = stage["valid"], stage["lineage"]
        lines.append("Lineage: does not apply to an embeddings job" if known is None else
                     f"Lineage: {known['with_parent']:,}/{valid:,} with a parent, {known['with_root']:,}/{valid:,} "
                     "to a seed")
    review = stage["review"]
    lines.append("Review: no verdicts yet" if not review["reviewed"] else
                 f"Review: {review['accepted']}/{review['reviewed']} accepted ({percent(review['pass_rate'])}), "
                 f"{review['rejected']} rejected")
    return [*lines, cost_line(stage)]


def reasons_text(reasons: Mapping[str, int]) -> str:
    return ", ".join(f"{category} {count:,}" for category, count in reasons.items()) or "-"


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.3f}"


def _number(value: float | int) -> str:
    return f"{value:,.1f}".removesuffix(".0") if isinstance(value, float) else f"{value:,}"


__all__ = ["CellReport", "DistinctN", "JobReport", "Lengths", "StageReport", "StageTexts", "cell_rows", "cost_line",
           "figure_lines", "job_report", "judge_figures", "judge_line", "money", "percent", "reasons_text",
           "role_texts", "stage_line", "stage_texts", "text_rows", "tokens"]
