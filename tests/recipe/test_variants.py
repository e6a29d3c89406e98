"""Variants: deterministic, balanced over the axes, rebuilt from their index alone."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from itertools import product
from pathlib import Path
from typing import Any

import pytest

from batchgen.recipe.loader import load_spec
from batchgen.recipe.variants import VariantPlan, coverage, expand_variants, request_count

ROOT = Path(__file__).resolve().parents[2]
TASK_API = ROOT / "jobs" / "task_api"


def job_with(tmp_path: Path, old: str, new: str) -> Path:
    job = tmp_path / "job"
    shutil.copytree(TASK_API, job)
    text = (job / "job.toml").read_text()
    assert old in text
    (job / "job.toml").write_text(text.replace(old, new))
    return job


def test_request_count_is_exact() -> None:
    spec = load_spec(TASK_API)
    # 500 / 10 * 1.1 = 55 exactly; a float product would give 55.000000000000007 and round up to 56.
    assert request_count(spec, spec.stage()) == 55


def test_cross_covers_every_cell_before_repeating() -> None:
    spec = load_spec(TASK_API)
    variants = list(expand_variants(spec))
    assert [v.index for v in variants] == list(range(55))
    first = {v.cell_key for v in variants[:40]}
    assert len(first) == 40  # 5 operations x 4 styles x 2 = every cell once
    counts = Counter(coverage(variants).values())
    assert counts == {1: 25, 2: 15}
    # Consecutive requests always differ in the first axis, and mostly in every axis.
    pairs = list(zip(variants, variants[1:], strict=False))
    assert all(a.cell["operation"] != b.cell["operation"] for a, b in pairs)
    assert sum(all(a.cell[k] != b.cell[k] for k in a.cell) for a, b in pairs) >= 0.8 * len(pairs)


def test_cross_prefix_is_balanced_per_axis() -> None:
    spec = load_spec(TASK_API)
    first = list(expand_variants(spec, indices=range(20)))
    assert set(Counter(v.cell["operation"] for v in first).values()) == {4}
    assert set(Counter(v.cell["style"] for v in first).values()) == {5}
    assert set(Counter(v.cell["include_errors"] for v in first).values()) == {10}


def test_variants_are_deterministic_and_indexable() -> None:
    spec = load_spec(TASK_API)
    plan = VariantPlan(spec, spec.stage())
    again = VariantPlan(load_spec(TASK_API), spec.stage())
    assert [plan.variant(i) for i in range(55)] == [again.variant(i) for i in range(55)]
    subset = list(plan.variants([40, 3, 3, 17]))
    assert [v.index for v in subset] == [3, 17, 40]
    assert subset[1] == plan.variant(17)
    with pytest.raises(IndexError):
        plan.variant(-1)


def test_indices_after_the_plan_continue_every_rotation() -> None:
    """A top-up asks for the variants after the last one: the cells, seeds and temperatures go on cycling."""
    spec = load_spec(TASK_API)
    plan = VariantPlan(spec, spec.stage())
    cells = plan.cells.cell_count
    assert plan.count == 55 and cells == 40
    after = plan.variant(plan.count)
    assert after.index == 55 and after.cell == plan.variant(55 - cells).cell
    assert after.temperature == plan.variant(55 % len(spec.stage().temperatures)).temperature
    assert [plan.variant(i) for i in range(55, 60)] == list(plan.variants(range(55, 60)))


def test_seed_rotation_and_temperature() -> None:
    spec = load_spec(TASK_API)
    variants = list(expand_variants(spec))
    assert variants[0].seeds == (0, 1, 2, 3, 4) and variants[1].seeds == (5, 6, 7, 8, 9)
    assert variants[4].seeds == (1, 2, 3, 4, 5)  # one seed further after a full pass over the 20 seeds
    assert all(len(set(v.seeds)) == 5 for v in variants)
    uses = Counter(i for v in variants for i in v.seeds)
    assert len(uses) == 20 and max(uses.values()) - min(uses.values()) <= 2
    assert [v.temperature for v in variants[:4]] == [0.7, 0.9, 1.0, 0.7]


def test_rotate_strategy_balances_each_axis(tmp_path: Path) -> None:
    spec = load_spec(job_with(tmp_path, 'strategy = "cross"', 'strategy = "rotate"'))
    variants = list(expand_variants(spec))
    for axis, size in (("operation", 5), ("style", 4), ("include_errors", 2)):
        counts = Counter(v.cell[axis] for v in variants)
        assert len(counts) == size and max(counts.values()) - min(counts.values()) <= 2, (axis, counts)
    pairs = Counter((v.cell["style"], v.cell["include_errors"]) for v in variants)
    assert len(pairs) == 8  # style and include_errors do not lock together


def test_weighted_strategy_allocates_by_weight(tmp_path: Path) -> None:
    weights = (
        'strategy = "weighted"\n\n[axes.weights]\noperation = { create = 3, list = 0 }\n'
        "include_errors = { true = 1, false = 3 }"
    )
    spec = load_spec(job_with(tmp_path, 'strategy = "cross"', weights))
    variants = list(expand_variants(spec))
    ops = Counter(v.cell["operation"] for v in variants)
    assert "list" not in ops
    assert ops["create"] == pytest.approx(55 * 3 / 6, abs=3)  # per-cell rounding moves the marginals a little
    errors = Counter(v.cell["include_errors"] for v in variants)
    assert errors[False] == pytest.approx(55 * 3 / 4, abs=3)
    assert sum(ops.values()) == 55


def whole_weighted_order(plan: Any) -> list[int]:
    """The weighted order as first written: every slot (2j + 1) / 2n of every cell, sorted at once."""
    counts = plan._weighted_counts
    return [p for _, p in sorted(((2 * j + 1) / (2 * n), p) for p, n in enumerate(counts) for j in range(n))]


@pytest.mark.parametrize("seed", range(6))
def test_weighted_order_found_by_blocks_is_the_whole_sort(seed: int) -> None:
    """The order is found a block (or one position) at a time in a window around it, without sorting every
    request; it must be the very order of the whole sort, ties between cells included, past the end too."""
    from batchgen.recipe.spec import AxesSpec
    from batchgen.recipe.variants import CellPlan

    rng = random.Random(seed)
    for _ in range(25):
        sizes = [rng.randint(1, 5) for _ in range(rng.randint(1, 3))]
        weights = {f"a{i}": {str(v): rng.choice([0, 0.5, 1, 1, 2, 3]) for v in range(size)}
                   for i, size in enumerate(sizes)}
        axes = AxesSpec.model_validate({"strategy": "weighted", "weights": weights,
                                        "values": {f"a{i}": list(range(size)) for i, size in enumerate(sizes)}})
        requests = rng.choice([1, 2, 3, 7, 55, 1000, rng.randint(1, 9000)])
        whole = whole_weighted_order(CellPlan(axes, requests))
        for block in (1, 7, 4096):
            plan = CellPlan(axes, requests, block)
            assert [plan._weighted_position(i) for i in range(requests)] == whole, (sizes, weights, requests)
            for index in rng.sample(range(3 * requests), min(40, 3 * requests)):  # scattered, and top-ups
                assert plan._weighted_position(index) == whole[index % requests]


def test_balanced_cross_order_is_a_bijection() -> None:
    from batchgen.recipe.spec import AxesSpec
    from batchgen.recipe.variants import CellPlan

    axes = AxesSpec(values={"a": [1, 2, 3], "b": ["x", "y"], "c": [True, False], "d": ["p", "q", "r", "s"]})
    plan = CellPlan(axes, 48)
    cells = {tuple(plan.cell(i).values()) for i in range(48)}
    assert cells == set(product([1, 2, 3], ["x", "y"], [True, False], ["p", "q", "r", "s"]))


def test_job_without_axes_has_one_cell(tmp_path: Path) -> None:
    job = tmp_path / "plain"
    shutil.copytree(TASK_API, job)
    text = (job / "job.toml").read_text()
    text = text[: text.index("[axes]")] + text[text.index("[validate]") :]
    (job / "job.toml").write_text(text)
    (job / "prompt.j2").write_text(
        "Write {{ count }} examples like these:\n{{ seed_examples }}\nJSON please.\n"
    )
    variants = list(expand_variants(load_spec(job)))
    assert len(variants) == 55 and all(v.cell == {} for v in variants)


@pytest.mark.parametrize(("strategy", "weights"), [("cross", {}), ("rotate", {}),
                                                   ("weighted", {"operation": {"create": 3, "list": 0}})])
@pytest.mark.parametrize("requests", [1, 7, 40, 55, 301])
def test_planned_counts_are_what_the_indices_give_each_cell(strategy: str, weights: dict, requests: int) -> None:
    from batchgen.recipe.spec import AxesSpec
    from batchgen.recipe.variants import CellPlan, cell_key

    axes = AxesSpec.model_validate({"strategy": strategy, "weights": weights, "values": {
        "operation": ["create", "update", "complete", "delete", "list"], "style": ["formal", "casual"],
        "include_errors": [False, True]}})
    plan = CellPlan(axes, requests)
    walked = Counter(cell_key(plan.cell(i)) for i in range(requests))
    assert plan.planned_counts() == dict(walked)
    first = [cell_key(plan.cell(i)) for i in range(requests)]
    assert list(plan.planned_counts()) == list(dict.fromkeys(first))  # in the order of the cells' first request


def test_a_cells_share_is_its_part_of_the_target_rounded_down() -> None:
    from batchgen.recipe.variants import cell_shares

    spec = load_spec(TASK_API)
    shares = cell_shares(spec, spec.stage())
    assert len(shares) == 40 and Counter(shares.values()) == {9: 25, 18: 15}  # 55 requests: 15 cells get two
    assert sum(shares.values()) <= 500


def test_indices_for_a_cell_are_the_next_ones_of_that_cell() -> None:
    from batchgen.recipe.variants import CellPlan, cell_key

    spec = load_spec(TASK_API)
    plan = CellPlan(spec.axes, 55)
    cell = cell_key({"operation": "update", "style": "casual", "include_errors": False})
    other = cell_key({"operation": "list", "style": "question", "include_errors": True})
    found = plan.indices_for({cell: 3, other: 1}, 55, 1000)
    assert len(found[cell]) == 3 and len(found[other]) == 1
    for key, indices in found.items():
        assert all(cell_key(plan.cell(i)) == key for i in indices) and min(indices) >= 55
        before = [i for i in range(55, max(indices)) if cell_key(plan.cell(i)) == key]
        assert before == indices[:len(before)]  # none of the cell's indices was skipped
    first = found[cell][0]
    assert plan.indices_for({cell: 2}, 55, first - 55)[cell] == []  # not within the indices looked at
    assert plan.indices_for({cell: 2}, 55, first - 54)[cell] == [first]
