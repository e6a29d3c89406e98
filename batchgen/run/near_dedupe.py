"""Near-duplicate verdicts of a stage, settled from the ledger after each collection (see `dataset.near`).

The order is the canonical one exact dedupe and the export use: the seeds first, then the earlier stages' valid
examples, then the stage's own in variant, attempt and position order. Walking it once, an example is

  an unchanged evolution   if it nearly equals its own parent (an example of the stage it was evolved from);
  a near-duplicate         if it nearly repeats a seed or an example kept before it (the first such);
  kept                     otherwise, and later examples are compared with it.

The index is rebuilt from the ledger every time, from what the ledger holds and in that order, so the verdicts do
not depend on the order in which lines or batches arrive, and a restart (or a collection cut short by a crash,
which left no trace) gives the same ones. Only the verdicts that changed are written.

Shingling and signing 300,000 examples is most of the work, so a batch judged in the worker process
(`dataset.result_lines`) comes with its valid examples signed there while collect records them (`SignedByKey`,
from the very text the ledger then stores), and their band keys are grouped in a thread while the last rows are
written; only the examples of earlier collections are read back and signed here. The verdicts are the same as
signing everything here (`tests/run/test_near_brute_force.py` checks both against brute force).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson

from batchgen.dataset.lineage import example_texts
from batchgen.dataset.near import Buckets, NearIndex, Shingled, Signed, SignedByKey, jaccard, rounded
from batchgen.dataset.reasons import NEAR_DUPLICATE, UNCHANGED_EVOLUTION
from batchgen.ledger import Ledger
from batchgen.recipe.spec import EMBEDDINGS, JobSpec


def near_settings(spec: JobSpec) -> tuple[float, int] | None:
    """The job's near-dedupe threshold and shingle ngrams, or None when it has no near-dedupe (turned off, or an
    embeddings job)."""
    threshold = spec.validate_.near_threshold
    if threshold is None or spec.endpoint == EMBEDDINGS:
        return None
    return threshold, spec.validate_.near_dedupe_ngrams


def settle_near_duplicates(ledger: Ledger, spec: JobSpec, stage: str, signed: SignedByKey | None = None) -> int:
    """Settle the stage's near-duplicate verdicts (call inside the collect transaction); how many changed.
    `signed`: examples of the stage signed already (by the worker that judged the batch just recorded); the others
    are read from the ledger and signed here. Either way they are signed from the same text."""
    settings = near_settings(spec)
    if settings is None:
        return 0
    (threshold, ngrams), fmt = settings, spec.dataset_format
    index = NearIndex(threshold, ngrams)

    def shingled(contents: Iterable[Any]) -> Shingled:
        return Shingled.of_texts((example_texts(content, fmt) for content in contents), ngrams)

    index.add_all([f"seed:{i}" for i in range(len(spec.seeds))], shingled(spec.seeds))
    names = [s.name for s in spec.resolved_stages()]
    source = spec.stage(stage).source
    parents: dict[str, int] = {}  # key of an example of the source stage -> its place in parent_sets
    parent_sets = Shingled.of_sets([])
    for earlier in names[:names.index(stage)]:
        kept = ledger.kept_examples(spec.name, earlier)
        found = shingled(orjson.loads(content) for _, content in kept)
        index.add_all([key for key, _ in kept], found)
        if earlier == source:
            parents, parent_sets = {key: i for i, (key, _) in enumerate(kept)}, found
    presigned = signed is not None and len(signed) > 0
    rows = ledger.near_dedupe_candidates(spec.name, stage, content=not presigned)
    keys = [row[1] for row in rows]
    if presigned:
        assert signed is not None
        ours, order, buckets = _signed(ledger, index, signed, keys, rows, shingled)
    else:
        ours, order, buckets = index.signed(shingled(orjson.loads(row[5]) for row in rows)), None, None
    verdicts: list[tuple[str, str, str] | None] = []
    for row, (_, _, parent, _, _, *_) in zip(range(len(rows)) if order is None else order.tolist(), rows, strict=True):
        similarity = (jaccard(ours.shingled.set(row), parent_sets.set(parents[parent]))
                      if parent is not None and parent in parents else 0.0)
        verdicts.append((UNCHANGED_EVOLUTION, f"Unchanged evolution: {parent} ({rounded(similarity)})", str(parent))
                        if similarity >= threshold else None)
    matches = index.admit_all(keys, ours, skip=[v is not None for v in verdicts], order=order, buckets=buckets,
                              last=True)
    changes = []
    for (row_id, _, _, valid, category, *_), verdict, match in zip(rows, verdicts, matches, strict=True):
        if match is not None:
            verdict = (NEAR_DUPLICATE, f"Near duplicate: {match.key} ({rounded(match.similarity)})", match.key)
        now = (1, None, None, None) if verdict is None else (0, *verdict)
        if (valid, category) != now[:2] or (verdict is not None and category is None):
            changes.append((*now, row_id))
    ledger.set_near_verdicts(changes)
    return len(changes)


def _signed(ledger: Ledger, index: NearIndex, signed: SignedByKey, keys: list[str], rows: list[tuple[Any, ...]],
            shingled: Callable[[Iterable[Any]], Shingled]) -> tuple[Signed, np.ndarray, Buckets]:
    """The stage's candidates signed, the row of each of `rows` there, and their band keys grouped: those `signed`
    holds taken from there, the others (recorded by earlier collections) read from the ledger and signed here."""
    at = signed.rows(keys)
    joined, buckets = signed.joined()
    missing = np.flatnonzero(at < 0)
    if not len(missing):
        return joined, at, buckets
    contents = ledger.example_contents([rows[i][0] for i in missing.tolist()])
    fresh = index.signed(shingled(orjson.loads(content) for content in contents))
    at[missing] = len(joined) + np.arange(len(missing))  # after every example `signed` holds
    return Signed.joined([joined, fresh], index.bands), at, buckets.joined(Buckets.of_signed(fresh))
