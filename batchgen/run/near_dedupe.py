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

from collections.abc import Iterable
from typing import Any

import orjson

from batchgen.dataset.lineage import example_texts
from batchgen.dataset.near import NearIndex, Shingled, jaccard, rounded
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
    rows = ledger.near_dedupe_candidates(spec.name, stage)
    found = shingled(orjson.loads(content) for _, _, content, _, _, _ in rows)
    verdicts: list[tuple[str, str, str] | None] = []
    for i, (_, _, _, parent, _, _) in enumerate(rows):
        similarity = (jaccard(found.set(i), parent_sets.set(parents[parent]))
                      if parent is not None and parent in parents else 0.0)
        verdicts.append((UNCHANGED_EVOLUTION, f"Unchanged evolution: {parent} ({rounded(similarity)})", str(parent))
                        if similarity >= threshold else None)
    matches = index.admit_all([key for _, key, _, _, _, _ in rows], found, skip=[v is not None for v in verdicts])
    changes = []
    for (row_id, _, _, _, valid, category), verdict, match in zip(rows, verdicts, matches, strict=True):
        if match is not None:
            verdict = (NEAR_DUPLICATE, f"Near duplicate: {match.key} ({rounded(match.similarity)})", match.key)
        now = (1, None, None, None) if verdict is None else (0, *verdict)
        if (valid, category) != now[:2] or (verdict is not None and category is None):
            changes.append((*now, row_id))
    ledger.set_near_verdicts(changes)
    return len(changes)
