"""Near-duplicate verdicts against brute force, and the prefetch worker that signs a batch's examples while collect
records them: what it makes is what this process makes, so the verdicts are the same with it, without it, and
with it holding only some of a stage's examples, in another order."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import orjson
import pytest
from workspaces import EVOL, batchgen, fresh_workspace

from batchgen.dataset.lineage import example_texts
from batchgen.dataset.near import NearIndex, Shingled, jaccard, shingles
from batchgen.ledger import Ledger
from batchgen.ledger.workspace import Workspace
from batchgen.run.near_dedupe import NearPrefetch, settle_near_duplicates
from batchgen.run.session import Session
from batchgen.run.tick import job_spec

STAGES = ["simple", "moderate", "complex", "edge_case"]
PAIRS = [json.loads(line) for line in
         (Path(__file__).parent.parent / "fixtures" / "near_duplicates" / "pairs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def evol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = fresh_workspace(tmp_path_factory.mktemp("evol_near"))
    batchgen(workspace, "run", str(EVOL), "--quiet", check=True)
    return workspace


def contents() -> list[str]:
    return [json.dumps(pair[k]) for pair in PAIRS for k in "ab"]


def test_the_worker_signs_as_this_process_does() -> None:
    texts = contents()
    prefetch = NearPrefetch(0.8, 2, "sharegpt")
    prefetch.feed((f"req-{i}", 0, text) for i, text in enumerate(texts[:150]))
    prefetch.feed((f"req-{i}", 0, text) for i, text in enumerate(texts[150:], 150))
    result = prefetch.result()
    assert result is not None
    where, made = result
    here = NearIndex(0.8).signed(Shingled.of_texts(example_texts(json.loads(t), "sharegpt") for t in texts))
    assert where == {f"req-{i}#0": i for i in range(len(texts))}
    for field in ("sigs", "bands", "counts", "clipped"):
        assert np.array_equal(getattr(made, field), getattr(here, field)), field
    assert np.array_equal(made.shingled.values, here.shingled.values)
    assert np.array_equal(made.shingled.offsets, here.shingled.offsets)


def test_a_worker_that_died_gives_no_result() -> None:
    prefetch = NearPrefetch(0.8, 2, "sharegpt")
    prefetch.feed([("req-0", 0, contents()[0])])
    prefetch._worker.kill()
    assert prefetch.result() is None
    prefetch.close()  # twice is harmless


def brute_force(ledger: Ledger, spec: object, seeds: list[object], stage: str) -> dict[str, str | None]:
    """What each candidate of the stage is by exact Jaccard against everything before it: 'unchanged_evolution:
    parent', 'near_duplicate: key' (the first kept) or None (kept)."""
    fmt, threshold = spec.dataset_format, spec.validate_.near_threshold  # type: ignore[attr-defined]

    def sets(rows: list[tuple[str, str]]) -> list[tuple[str, frozenset[int]]]:
        return [(key, shingles(example_texts(orjson.loads(content), fmt))) for key, content in rows]

    kept = [(f"seed:{i}", shingles(example_texts(seed, fmt))) for i, seed in enumerate(seeds)]
    source = spec.stage(stage).source  # type: ignore[attr-defined]
    parents: dict[str, frozenset[int]] = {}
    for earlier in STAGES[:STAGES.index(stage)]:
        found = sets(ledger.kept_examples(spec.name, earlier))  # type: ignore[attr-defined]
        kept += found
        if earlier == source:
            parents = dict(found)
    verdicts: dict[str, str | None] = {}
    for _, key, content, parent, _, _ in ledger.near_dedupe_candidates(spec.name, stage):  # type: ignore[attr-defined]
        mine = shingles(example_texts(orjson.loads(content), fmt))
        if parent in parents and jaccard(mine, parents[parent]) >= threshold:
            verdicts[key] = f"unchanged_evolution: {parent}"
            continue
        first = next((other for other, theirs in kept if jaccard(mine, theirs) >= threshold), None)
        verdicts[key] = None if first is None else f"near_duplicate: {first}"
        if first is None:
            kept.append((key, mine))
    return verdicts


def ledger_verdicts(ledger: Ledger, stage: str) -> dict[str, str | None]:
    rows = ledger.rows("SELECT custom_id || '#' || position AS key, category, duplicate_of FROM examples "
                       "WHERE stage = ? AND content_json IS NOT NULL AND (valid = 1 OR category IN "
                       "('near_duplicate', 'unchanged_evolution'))", [stage])
    return {row["key"]: None if row["category"] is None else f"{row['category']}: {row['duplicate_of']}"
            for row in rows}


def test_verdicts_are_brute_force_jaccards_with_and_without_a_prefetch(evol: Path) -> None:
    workspace = Workspace(evol)
    with Ledger.open(workspace.ledger_path) as ledger, Session(ledger, workspace) as session:
        spec = job_spec(session, "evol_task_api")
        seeds = list(spec.seeds)
        expected = {stage: brute_force(ledger, spec, seeds, stage) for stage in STAGES}
        kinds = [v.split(":")[0] for verdicts in expected.values() for v in verdicts.values() if v]
        assert kinds.count("unchanged_evolution") > 0 and kinds.count("near_duplicate") > 0
        assert any(v and v.startswith("near_duplicate: seed:") for v in expected["simple"].values())
        assert sum(len(v) for v in expected.values()) >= 300
        assert {stage: ledger_verdicts(ledger, stage) for stage in STAGES} == expected
        rng = random.Random(5)
        with ledger.transaction():  # forget every verdict, then settle each stage with a prefetch of some rows
            ledger.db.conn.execute("UPDATE examples SET valid = 1, category = NULL, reason = NULL, duplicate_of = NULL "
                                   "WHERE category IN ('unchanged_evolution', 'near_duplicate')")
            for stage in STAGES:
                rows = ledger.near_dedupe_candidates(spec.name, stage)
                some = [(*_split(key), content) for _, key, content, *_ in rows
                        if rng.random() < 0.7]
                rng.shuffle(some)
                prefetch = NearPrefetch(spec.validate_.near_threshold, spec.validate_.near_dedupe_ngrams,
                                        spec.dataset_format)
                prefetch.feed(some[:len(some) // 2])
                prefetch.feed(some[len(some) // 2:])
                settle_near_duplicates(ledger, spec, stage, prefetch)
        assert {stage: ledger_verdicts(ledger, stage) for stage in STAGES} == expected


def _split(key: str) -> tuple[str, int]:
    custom_id, position = key.rsplit("#", 1)
    return custom_id, int(position)
