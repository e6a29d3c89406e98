"""Review by a domain expert, the lesson's answer to what the filter cannot see (a wrong date, a wrong operation):
a sample of the valid examples, stratified by stage and cell, written for review (`batchgen.dataset.review_file`);
the verdicts read back into the ledger; and the pass rate that `show` and `compare` report.

The sample is a prefix of one fixed order of the job's valid examples, so it is the same for the same job, count and
seed, and a larger count only adds examples: every stratum (stage x cell) gives its first example (by a hash of the
seed and the example's key) before any gives a second, the stages taking turns, so every stage and cell that has
valid examples appears once the count reaches the number of strata.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from batchgen.dataset.review_file import FileVerdict, ReviewFileError, read_review_file, write_review_file
from batchgen.errors import BatchgenError
from batchgen.ledger import Ledger
from batchgen.ledger.reviews import ExampleKey, ReviewCandidate, ReviewedExample
from batchgen.recipe.formats import EMBEDDINGS_FORMAT, parse_example, to_turns
from batchgen.recipe.spec import JobSpec

DEFAULT_COUNT = 25
Stratum = tuple[str, str]  # (stage, variant cell as JSON text)


@dataclass
class ReviewSample:
    """What `batchgen review JOB` wrote: how many examples, from how many of the strata that have any."""

    path: Path
    job: str
    seed: int
    examples: int = 0
    prefilled: int = 0  # examples written with the verdict the ledger already holds
    stages: dict[str, dict[str, int]] = field(default_factory=dict)  # {stage: {examples, cells, cells_total}}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass
class ReviewImport:
    """What `batchgen review JOB --import FILE` read: verdicts by value, and by what they did to the ledger."""

    file: str
    job: str
    accept: int = 0
    reject: int = 0
    blank: int = 0  # rows left empty: not reviewed yet
    new: int = 0
    changed: int = 0
    unchanged: int = 0

    @property
    def verdicts(self) -> int:
        return self.accept + self.reject

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdicts": self.verdicts}


# -- the sample ------------------------------------------------------------------------------------------------


def sample_examples(candidates: Iterable[ReviewCandidate], stages: Sequence[str], count: int,
                    seed: int = 0) -> list[ReviewCandidate]:
    """The first `count` examples of the fixed review order (see the module's docstring), grouped for reading:
    stage by stage (in `stages` order, then any other), cell by cell. Keeps at most `count` examples a stratum in
    memory, whatever the size of the job."""
    kept: dict[Stratum, list[tuple[int, str, int, ReviewCandidate]]] = {}
    for found in candidates:
        heap = kept.setdefault((found.stage, found.cell_json), [])
        item = (-_rank(seed, f"{found.custom_id}#{found.position}"), found.custom_id, found.position, found)
        if len(heap) < count:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)  # drops the kept example that ranks last
    stage_index = {name: i for i, name in enumerate(stages)}
    by_stage: dict[str, list[Stratum]] = {}
    for stratum in kept:
        by_stage.setdefault(stratum[0], []).append(stratum)
    # (its rank in its stratum, its stratum's turn in its stage, its stage's place, the stage's name, the example)
    order: list[tuple[int, int, int, str, ReviewCandidate]] = []
    for stage, strata in by_stage.items():
        place = stage_index.get(stage, len(stages))
        strata.sort(key=lambda s: (_rank(seed, f"{s[0]}\0{s[1]}"), s[1]))
        for turn, stratum in enumerate(strata):
            for rank, (*_, found) in enumerate(sorted(kept[stratum], reverse=True)):
                order.append((rank, turn, place, stage, found))
    chosen = sorted(order, key=lambda o: o[:4])[:count]
    return [o[4] for o in sorted(chosen, key=lambda o: (o[2], o[3], o[4].cell_json, o[0]))]


def _rank(seed: int, text: str) -> int:
    """A number that orders `text` for this seed, the same on every machine and every run."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{text}".encode()).digest()[:8], "big")


def write_review(ledger: Ledger, spec: JobSpec, path: Path, count: int = DEFAULT_COUNT, seed: int = 0,
                 force: bool = False) -> ReviewSample:
    """Write a review sample of the job's valid examples to `path` (see the module's docstring), each with the
    verdict and note the ledger holds for it, if any. A file already there is kept unless `force`: it may hold
    verdicts not imported yet."""
    if spec.dataset_format == EMBEDDINGS_FORMAT:
        raise BatchgenError(f"Job {spec.name!r} is an embeddings job: its examples are vectors, which hold nothing "
                            "for an expert to review")
    if path.exists() and not force:
        raise BatchgenError(f"Review file {path} exists and may hold verdicts not imported yet; import it with "
                            f"'batchgen review {spec.name} --import {path}', or choose another file with -o, or "
                            "replace it with --force")
    stages = [stage.name for stage in spec.resolved_stages()]
    cells_total: dict[str, set[str]] = {}
    sample = sample_examples(_counting(ledger.review_candidates(spec.name), cells_total), stages, count, seed)
    if not sample:
        raise BatchgenError(f"Job {spec.name!r} has no valid examples to review yet; run it first")
    shown = ledger.reviewed_examples(spec.name, [(c.custom_id, c.position) for c in sample])
    written = ReviewSample(path, spec.name, seed)
    rows = []
    for chosen in sample:
        found = shown[(chosen.custom_id, chosen.position)]
        rows.append(_row(found, spec.dataset_format))
        written.examples += 1
        written.prefilled += found.verdict is not None
        stage = written.stages.setdefault(found.stage, {"examples": 0, "cells": 0,
                                                        "cells_total": len(cells_total[found.stage])})
        stage["examples"] += 1
    for name, stage in written.stages.items():
        stage["cells"] = len({c.cell_json for c in sample if c.stage == name})
    write_review_file(path, rows)
    return written


def _counting(candidates: Iterable[ReviewCandidate], cells: dict[str, set[str]]) -> Iterable[ReviewCandidate]:
    """`candidates` as they are, noting each stage's cells on the way (how many strata the sample drew from)."""
    for found in candidates:
        cells.setdefault(found.stage, set()).add(found.cell_json)
        yield found


def _row(found: ReviewedExample, fmt: str) -> list[str]:
    """One row of the review file, in the order of `review_file.COLUMNS`."""
    return [f"{found.custom_id}#{found.position}", found.verdict or "", found.note or "", found.stage,
            cell_text(found.cell), conversation_text(found.content, fmt)]


def cell_text(cell: dict[str, Any]) -> str:
    """A variant cell as people read it: `operation=create, include_errors=false`."""
    return ", ".join(f"{axis}={value if isinstance(value, str) else json.dumps(value)}"
                     for axis, value in cell.items())


def conversation_text(content: dict[str, Any] | None, fmt: str) -> str:
    """An example as plain text, one `role: content` paragraph a turn (the JSON itself if it is not of the
    format)."""
    try:
        turns = to_turns(parse_example(content, fmt))
    except ValidationError:
        return json.dumps(content, ensure_ascii=False)
    return "\n\n".join(f"{turn.role}: {turn.content}" for turn in turns)


# -- the verdicts ----------------------------------------------------------------------------------------------


def record_verdicts(ledger: Ledger, spec: JobSpec, path: Path, source: str) -> ReviewImport:
    """Record the verdicts of a filled-in review file (`source`: the file as the ledger names it) in one
    transaction (the caller's, when it holds one). Every row is checked first, so a file with a bad verdict or an
    example the job does not have (ReviewFileError, naming the file and line) records nothing; a verdict and note
    the ledger already holds change nothing."""
    rows = read_review_file(path)
    keys = {row.line: _key(path, row) for row in rows}
    known = ledger.reviewed_examples(spec.name, keys.values())
    report = ReviewImport(str(path), spec.name)
    changes: list[tuple[str, int, str, str, str]] = []
    for row in rows:
        found = known.get(keys[row.line])
        if found is None:
            raise ReviewFileError(f"{path} line {row.line}: no example {row.example} in job {spec.name}; keep the "
                                  "example column as 'batchgen review' wrote it")
        if row.verdict is None:
            report.blank += 1
            continue
        if row.verdict == "accept":
            report.accept += 1
        else:
            report.reject += 1
        if (found.verdict, found.note) == (row.verdict, row.note):
            report.unchanged += 1
            continue
        if found.verdict is None:
            report.new += 1
        else:
            report.changed += 1
        changes.append((found.custom_id, found.position, found.stage, row.verdict, row.note))
    with ledger.transaction():
        ledger.record_reviews(spec.name, source, changes)
        if changes:
            ledger.event("reviewed", job=spec.name, file=source, new=report.new, changed=report.changed)
    return report


def _key(path: Path, row: FileVerdict) -> ExampleKey:
    """The (custom_id, position) a row's example column names."""
    custom_id, _, position = row.example.rpartition("#")
    if not custom_id or not position.isdigit():
        raise ReviewFileError(f"{path} line {row.line}: {row.example!r} names no example (custom_id#position); keep "
                              "the example column as 'batchgen review' wrote it")
    return custom_id, int(position)


def review_summary(ledger: Ledger, job: str) -> dict[str, Any]:
    """The review pass rate of the job, in all and by stage: {"reviewed", "accepted", "rejected", "pass_rate",
    "stages": {stage: the same}}; pass_rate (accepted / reviewed, to 4 places) is None before any verdict."""
    stages = {stage: _rates(counts.get("accept", 0), counts.get("reject", 0))
              for stage, counts in ledger.review_counts(job).items()}
    total = _rates(sum(s["accepted"] for s in stages.values()), sum(s["rejected"] for s in stages.values()))
    return {**total, "stages": stages}


def _rates(accepted: int, rejected: int) -> dict[str, Any]:
    reviewed = accepted + rejected
    return {"reviewed": reviewed, "accepted": accepted, "rejected": rejected,
            "pass_rate": round(accepted / reviewed, 4) if reviewed else None}
