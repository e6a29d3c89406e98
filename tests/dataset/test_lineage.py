"""Choosing an example's parent among the candidates its request showed, and evolved requests grouped by cell."""

from __future__ import annotations

from batchgen.dataset.lineage import ParentChooser, seed_candidates, similarity, words
from batchgen.recipe.variants import SourcesByCell


def sharegpt(human: str, gpt: str) -> dict[str, object]:
    return {"conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}


CALL = sharegpt("I need to remember to call mom on Sunday", "Created task: 'Call mom' | Due: 2025-01-19")
BUDGET = sharegpt("Create a task to review the quarterly budget by Friday", "Created task: 'Review budget'")
GYM = sharegpt("Delete the task about the gym membership", "Deleted task: 'Cancel gym membership'")
SOURCES = {"s-1#0": CALL, "s-1#1": BUDGET, "s-2#0": GYM}
SHOWN = [["s-1#0", "seed:2"], ["s-1#1", "seed:0"], ["s-2#0", "seed:7"]]


def test_the_parent_is_the_candidate_the_example_most_resembles_whatever_its_position() -> None:
    chooser = ParentChooser(SOURCES, "sharegpt")
    child = sharegpt("Heads up: create a task to review the quarterly budget by Friday at 9am, high priority",
                     "Created task: 'Review budget' | Priority: high")
    assert chooser.choose(child, 0, SHOWN, "m-0#0") == ("s-1#1", "seed:0")
    assert chooser.choose(child, 2, SHOWN, "m-0#2") == ("s-1#1", "seed:0")


def test_a_tie_goes_to_the_candidate_at_the_examples_position() -> None:
    chooser = ParentChooser(SOURCES, "sharegpt")
    unlike = sharegpt("zebra", "quantum")
    assert chooser.choose(unlike, 1, SHOWN, "m-0#1") == ("s-1#1", "seed:0")
    assert chooser.choose(unlike, 7, SHOWN, "m-0#7") == ("s-1#0", "seed:2")  # past the candidates: the first


def test_seeds_are_their_own_roots_and_a_request_without_candidates_starts_a_chain() -> None:
    seeds = {"seed:0": BUDGET, "seed:3": CALL}
    chooser = ParentChooser(seeds, "sharegpt")
    child = sharegpt("Remind me to call mom on Sunday evening", "Created task: 'Call mom'")
    assert chooser.choose(child, 0, seed_candidates([0, 3]), "s-0#0") == ("seed:3", "seed:3")
    assert chooser.choose(child, 0, [], "s-0#0") == (None, "s-0#0")
    assert chooser.choose(child, 0, [["s-0#0", None]], "m-0#0") == ("s-0#0", "s-0#0")


def test_word_sets_ignore_case_and_punctuation() -> None:
    assert words(["Call MOM, please!"]) == words(["call mom please"])
    assert similarity(words(["a b c d"]), words(["a b c e"])) == 3 / 5


def test_evolved_requests_take_sources_of_one_cell_and_carry_it() -> None:
    cells = [{"op": "create"}, {"op": "update"}, {"op": "create"}, {"op": "create"}, {"op": "update"},
             {"op": "list"}, {"op": "create"}]
    plan = SourcesByCell(cells, 2)
    first_pass = [plan.variant(i) for i in range(len(plan.order))]
    covered = sorted(s for _, sources in first_pass for s in sources)
    assert set(covered) == set(range(len(cells)))  # every source evolved in the first pass
    for cell, sources in first_pass:
        assert all(cells[s] == cell for s in sources)
    assert [cell["op"] for cell, _ in first_pass[:3]] == ["create", "update", "list"]  # the cells take turns
    cell, sources = plan.variant(len(plan.order))  # a second pass goes on round the cell's sources
    assert cell == {"op": "create"} and sources == (0, 2)
