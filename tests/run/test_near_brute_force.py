"""Near-duplicate verdicts against brute force: a four-stage job's (seeds, unchanged evolutions, near-duplicates
across stages) are what exact Jaccard similarities against everything before each example give, as collected and
when settled again from the ledger."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from workspaces import EVOL_STAGES, multi_shard_job, ran_evol

from batchgen.cli import cli
from batchgen.dataset import result_lines
from batchgen.dataset.lineage import example_texts
from batchgen.dataset.near import jaccard, shingles
from batchgen.ledger import Ledger
from batchgen.ledger.workspace import Workspace
from batchgen.run import near_dedupe
from batchgen.run.near_dedupe import settle_near_duplicates
from batchgen.run.session import Session
from batchgen.run.tick import job_spec

STAGES = EVOL_STAGES


@pytest.fixture(scope="module")
def evol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ran_evol(tmp_path_factory.mktemp("evol_near"))


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
    for _, key, parent, _, _, content in ledger.near_dedupe_candidates(spec.name, stage):  # type: ignore[attr-defined]
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


def test_verdicts_are_brute_force_jaccards(evol: Path) -> None:
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
        with ledger.transaction():  # forget every verdict, then settle the stages from scratch
            ledger.db.conn.execute("UPDATE examples SET valid = 1, category = NULL, reason = NULL, duplicate_of = NULL "
                                   "WHERE category IN ('unchanged_evolution', 'near_duplicate')")
            for stage in STAGES:
                settle_near_duplicates(ledger, spec, stage)
        assert {stage: ledger_verdicts(ledger, stage) for stage in STAGES} == expected


def test_examples_signed_by_the_judging_worker_give_the_brute_force_verdicts(tmp_path, monkeypatch) -> None:
    """Every result file judged by the worker, which signs its valid examples for near-dedupe: in a job of many
    batches a stage settles from examples signed there and from those of earlier batches read from the ledger."""
    workspace = tmp_path / ".batchgen"
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(workspace))
    monkeypatch.setattr(result_lines, "PARALLEL_BYTES", 0)
    mixes: list[tuple[int, int]] = []  # (signed by the worker, read from the ledger) of each settle
    signed_by_worker = near_dedupe._signed

    def observed(ledger, index, signed, keys, rows, shingled):  # type: ignore[no-untyped-def]
        found, at, buckets = signed_by_worker(ledger, index, signed, keys, rows, shingled)
        mixes.append((int((at < len(signed)).sum()), int((at >= len(signed)).sum())))
        return found, at, buckets

    monkeypatch.setattr(near_dedupe, "_signed", observed)
    job = multi_shard_job(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(job), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert any(ours and theirs for ours, theirs in mixes) and len(mixes) >= 8
    store = Workspace(workspace)
    with Ledger.open(store.ledger_path) as ledger, Session(ledger, store) as session:
        spec = job_spec(session, "evol_task_api")
        expected = {stage: brute_force(ledger, spec, list(spec.seeds), stage) for stage in STAGES}
        assert sum(1 for v in expected.values() for verdict in v.values() if verdict) > 0
        assert {stage: ledger_verdicts(ledger, stage) for stage in STAGES} == expected
