"""Lineage end to end: the Evol-Instruct job runs through its four stages on the embedded emulator, and every
example of its dataset names its parent, so that each edge case leads back, stage by stage, to a seed; an evolved
example keeps its parent's cell. Real `batchgen` processes, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workspaces import EVOL, EVOL_STAGES, batchgen, ran_evol

from batchgen.ledger import Ledger

STAGES = EVOL_STAGES


@pytest.fixture(scope="module")
def evol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ran_evol(tmp_path_factory.mktemp("evol"))


def examples(workspace: Path) -> dict[str, dict[str, object]]:
    """Every example the ledger holds, by key, with its stage, parent, root and its request's cell."""
    with Ledger.open(workspace / "ledger.db") as ledger:
        rows = ledger.rows("SELECT e.custom_id || '#' || e.position AS key, e.stage, e.parent, e.root, e.valid, "
                           "r.cell_json FROM examples e JOIN requests r ON r.custom_id = e.custom_id")
    return {row["key"]: {**row, "cell": json.loads(row["cell_json"])} for row in rows}


def test_every_edge_case_names_its_parent_chain_back_to_a_seed(evol: Path) -> None:
    lines = [json.loads(line) for line in (evol / "datasets" / "evol_task_api.sharegpt.jsonl").read_text().splitlines()]
    known = examples(evol)
    seeds = len((EVOL / "seeds.jsonl").read_text().splitlines())
    edge_cases = [line["_provenance"] for line in lines if line["_provenance"]["stage"] == "edge_case"]
    assert len(edge_cases) == 125
    for provenance in edge_cases:
        chain, key = [], provenance["parent"]
        while not key.startswith("seed:"):
            chain.append(known[key]["stage"])
            key = known[key]["parent"]
        assert chain == ["complex", "moderate", "simple"]
        assert key == provenance["root"] and 0 <= int(key.split(":")[1]) < seeds
    assert {line["_provenance"]["stage"] for line in lines} == set(STAGES)


def test_an_evolved_example_keeps_its_parents_cell(evol: Path) -> None:
    known = examples(evol)
    evolved = [e for e in known.values() if e["stage"] != "simple"]
    assert len(evolved) >= 3 * 125
    for example in evolved:
        parent = known[example["parent"]]
        assert STAGES.index(parent["stage"]) == STAGES.index(example["stage"]) - 1
        assert example["cell"] == parent["cell"]
        assert example["root"] == parent["root"]


def test_show_counts_lineage_per_stage(evol: Path) -> None:
    shown = json.loads(batchgen(evol, "show", "evol_task_api", "--json", check=True).stdout)
    assert list(shown["lineage"]) == STAGES
    for counts in shown["lineage"].values():
        assert counts["valid"] >= 125 and counts["with_parent"] == counts["with_root"] == counts["valid"]
    text = batchgen(evol, "show", "evol_task_api", check=True).stdout
    assert "Lineage: simple " in text and "edge_case" in text.split("Lineage:")[1].splitlines()[0]


def verdicts(workspace: Path) -> list[tuple[object, ...]]:
    with Ledger.open(workspace / "ledger.db") as ledger:
        return [tuple(row.values()) for row in ledger.rows(
            "SELECT id, valid, category, reason, duplicate_of FROM examples ORDER BY id")]


def test_unchanged_evolutions_and_near_duplicates_are_rejected_with_what_they_repeat(evol: Path) -> None:
    known = examples(evol)
    with Ledger.open(evol / "ledger.db") as ledger:
        rows = ledger.rows("SELECT custom_id || '#' || position AS key, category, reason, duplicate_of, parent "
                           "FROM examples WHERE category IN ('unchanged_evolution', 'near_duplicate')")
    unchanged = [r for r in rows if r["category"] == "unchanged_evolution"]
    near = [r for r in rows if r["category"] == "near_duplicate"]
    assert unchanged and near
    for row in unchanged:  # the child of its own parent, one stage up, never counted as a mere duplicate
        assert row["duplicate_of"] == row["parent"]
        assert row["reason"].startswith("Unchanged evolution: " + row["parent"])
        assert STAGES.index(known[row["parent"]]["stage"]) == STAGES.index(known[row["key"]]["stage"]) - 1
    for row in near:  # a seed, or an example kept before it
        of = row["duplicate_of"]
        assert of.startswith("seed:") or known[of]["valid"] == 1
    shown = json.loads(batchgen(evol, "show", "evol_task_api", "--json", check=True).stdout)
    assert shown["quality"]["reasons"]["Unchanged evolution"] == len(unchanged)
    assert shown["status"] == "done" and not shown["short"]


def test_settling_again_from_the_ledger_gives_the_same_verdicts(evol: Path) -> None:
    from batchgen.run.near_dedupe import settle_near_duplicates
    from batchgen.run.session import Session
    from batchgen.run.tick import job_spec

    before = verdicts(evol)
    from batchgen.ledger.workspace import Workspace
    workspace = Workspace(evol)
    with Ledger.open(workspace.ledger_path) as ledger, Session(ledger, workspace) as session:
        spec = job_spec(session, "evol_task_api")
        with ledger.transaction():
            for stage in STAGES:
                assert settle_near_duplicates(ledger, spec, stage) == 0  # nothing to change
        with ledger.transaction():  # forget every near-duplicate verdict, then settle the stages from scratch
            ledger.db.conn.execute("UPDATE examples SET valid = 1, category = NULL, reason = NULL, duplicate_of = NULL "
                                   "WHERE category IN ('unchanged_evolution', 'near_duplicate')")
            assert sum(settle_near_duplicates(ledger, spec, stage) for stage in STAGES) > 0
    assert verdicts(evol) == before
    assert batchgen(evol, "ledger", "check").returncode == 0
