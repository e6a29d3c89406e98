"""Near-duplicate verdicts of a stage, settled from the ledger after each collection (see `dataset.near`).

The order is the canonical one exact dedupe and the export use: the seeds first, then the earlier stages' valid
examples, then the stage's own in variant, attempt and position order. Walking it once, an example is

  an unchanged evolution   if it nearly equals its own parent (an example of the stage it was evolved from);
  a near-duplicate         if it nearly repeats a seed or an example kept before it (the first such);
  kept                     otherwise, and later examples are compared with it.

The index is rebuilt from the ledger every time, from what the ledger holds and in that order, so the verdicts do
not depend on the order in which lines or batches arrive, and a restart (or a collection cut short by a crash,
which left no trace) gives the same ones. Only the verdicts that changed are written.
"""

from __future__ import annotations

from typing import Any

import orjson

from batchgen.dataset.lineage import example_texts
from batchgen.dataset.near import NearIndex, jaccard, rounded, shingles
from batchgen.dataset.reasons import NEAR_DUPLICATE, UNCHANGED_EVOLUTION
from batchgen.ledger import Ledger
from batchgen.recipe.spec import EMBEDDINGS, JobSpec


def settle_near_duplicates(ledger: Ledger, spec: JobSpec, stage: str) -> int:
    """Settle the stage's near-duplicate verdicts (call inside the collect transaction); how many changed."""
    threshold = spec.validate_.near_threshold
    if threshold is None or spec.endpoint == EMBEDDINGS:
        return 0
    ngrams, fmt = spec.validate_.near_dedupe_ngrams, spec.dataset_format
    index = NearIndex(threshold, ngrams)

    def shingled(content: Any) -> frozenset[int]:
        return shingles(example_texts(content, fmt), ngrams)

    for i, seed in enumerate(spec.seeds):
        index.add(f"seed:{i}", shingled(seed))
    names = [s.name for s in spec.resolved_stages()]
    source = spec.stage(stage).source
    parents: dict[str, frozenset[int]] = {}
    for earlier in names[:names.index(stage)]:
        for key, content in ledger.kept_examples(spec.name, earlier):
            found = shingled(orjson.loads(content))
            index.add(key, found)
            if earlier == source:
                parents[key] = found
    changes = []
    for row_id, key, content, parent, valid, category in ledger.near_dedupe_candidates(spec.name, stage):
        verdict = _verdict(index, shingled(orjson.loads(content)), key, parent, parents, threshold)
        now = (1, None, None, None) if verdict is None else (0, *verdict)
        if (valid, category) != now[:2] or (verdict is not None and category is None):
            changes.append((*now, row_id))
    ledger.set_near_verdicts(changes)
    return len(changes)


def _verdict(index: NearIndex, found: frozenset[int], key: str, parent: str | None,
             parents: dict[str, frozenset[int]], threshold: float) -> tuple[str, str, str] | None:
    """(category, reason, duplicate_of) of one example in the walk, or None (kept, and added to the index)."""
    if parent is not None and parent in parents:
        similarity = jaccard(found, parents[parent])
        if similarity >= threshold:
            return (UNCHANGED_EVOLUTION, f"Unchanged evolution: {parent} ({rounded(similarity)})", parent)
    match = index.admit(key, found)
    if match is not None:
        return (NEAR_DUPLICATE, f"Near duplicate: {match.key} ({rounded(match.similarity)})", match.key)
    return None
