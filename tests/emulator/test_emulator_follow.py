"""The simulate executor follows the axis values a prompt names (operation, error cases, phrasing style), reading
only the prompt's text; and `malformed_when_prompt_contains` spoils the answers of the prompts that hold a text."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from emulator_fixtures import running

from batchgen.emulator.focus import error_share, read_focus, stem
from batchgen.recipe.formats import response_format

MODEL = "gpt-4o-mini"
SEEDS = [
    {"conversations": [{"from": "human", "value": "Create a task to review the quarterly budget by Friday"},
                       {"from": "gpt", "value": "Created task: 'Review quarterly budget' | Priority: medium | "
                                               "Due: 2025-01-17 (Friday)"}]},
    {"conversations": [{"from": "human", "value": "Add a high priority task for the team meeting tomorrow"},
                       {"from": "gpt", "value": "Created task: 'Team meeting' | Priority: high | Due: 2025-01-16 "
                                               "(tomorrow)"}]},
    {"conversations": [{"from": "human", "value": "I finished the expense report, mark it done"},
                       {"from": "gpt", "value": "Completed task: 'Expense report'"}]},
    {"conversations": [{"from": "human", "value": "Mark 'Book flights' as done"},
                       {"from": "gpt", "value": "Error: Task 'Book flights' not found."}]},
    {"conversations": [{"from": "human", "value": "What's on my plate this week?"},
                       {"from": "gpt", "value": "2 tasks found: 'Team meeting' (high, due 2025-01-16) | "
                                               "'Expense report' (low, no due date)"}]},
]
FORMATS = """## Output Format
- For creates: "Created task: '[title]' | Priority: [low/medium/high] | Due: [date or 'not set']"
- For updates: "Updated task: '[title]' | [field]: changed to [value]"
- For completions: "Completed task: '[title]'"
- For deletions: "Deleted task: '[title]'"
- For lists: "[N] tasks found: [title (priority, due date) for each task]"
- For errors: "Error: [clear error message]"
"""
PREFIXES = {"Created task:": "create", "Updated task:": "update", "Completed task:": "complete",
            "Deleted task:": "delete", "Error:": "error"}


def _prompt(focus: str, count: int = 9, formats: str = FORMATS) -> list[dict]:
    text = ("You are generating training examples for a Task API assistant.\nToday is Wednesday, 2025-01-15.\n\n"
            f"{formats}\n## Examples\n{json.dumps(SEEDS, indent=2)}\n\n## Your Task\nGenerate {count} NEW examples."
            f"\n\nFor THIS batch, focus on:\n{focus}\n")
    return [{"role": "system", "content": "You generate training data in JSON format."},
            {"role": "user", "content": text}]


def _operation(answer: str) -> str | None:
    if "tasks found" in answer:
        return "list"
    return next((op for prefix, op in PREFIXES.items() if answer.startswith(prefix)), None)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with running(tmp_path_factory.mktemp("follow") / "emu", seed=3) as emu:
        yield emu


def _examples(emu, messages: list[dict]) -> list[tuple[str, str]]:
    answer = emu.client.chat.completions.create(model=MODEL, messages=messages,
                                                response_format=response_format("sharegpt"))
    examples = json.loads(answer.choices[0].message.content)["examples"]
    return [(e["conversations"][0]["value"], e["conversations"][1]["value"]) for e in examples]


@pytest.mark.parametrize("operation", ["create", "update", "complete", "delete", "list"])
def test_every_example_is_of_the_operation_the_prompt_names(emu, operation):
    """Updates and deletions have no seed in the prompt: they are written from the prompt's answer formats."""
    pairs = _examples(emu, _prompt(f"- Operation: {operation}\n- Error cases: no, every request succeeds"))
    assert len(pairs) == 9 and len(set(pairs)) == 9
    assert [_operation(answer) for _, answer in pairs] == [operation] * 9, pairs
    if operation in ("update", "delete"):
        assert all(operation in request.lower() for request, _ in pairs), pairs


def test_error_cases_yes_gives_about_a_third_and_no_gives_none(emu):
    with_errors = _examples(emu, _prompt("- Operation: update\n- Error cases: yes, make about a third of the "
                                         "examples error cases"))
    kinds = [_operation(answer) for _, answer in with_errors]
    assert kinds.count("error") == 3 and kinds.count("update") == 6, with_errors
    assert all("update" in request.lower() for request, answer in with_errors if answer.startswith("Error:"))
    without = _examples(emu, _prompt("- Operation: complete\n- Error cases: no, every request in this batch "
                                     "succeeds"))
    assert not any(answer.startswith("Error") for _, answer in without)


@pytest.mark.parametrize(("style", "check"), [
    ("question", lambda request: request.endswith("?")),
    ("formal", lambda request: request.endswith((".", "?"))),
    ("imperative", lambda request: not request.startswith(("Could you", "Can you", "Would you"))),
])
def test_the_request_is_phrased_in_the_style_the_prompt_names(emu, style, check):
    pairs = _examples(emu, _prompt(f"- Operation: create\n- Phrasing style: {style}\n- Error cases: no"))
    assert all(check(request) for request, _ in pairs), pairs


def test_a_prompt_that_names_no_axis_gets_the_seeds_mixture(emu):
    pairs = _examples(emu, _prompt("- anything you like", count=20))
    kinds = {_operation(answer) for _, answer in pairs}
    assert {"create", "complete", "error", "list"} <= kinds


def test_without_answer_formats_an_unshown_operation_falls_back_to_the_seeds(emu):
    """No "For updates:" line and no update seed: nothing to write an update from, so the answer keeps the seeds'
    own formats (never an invented one)."""
    pairs = _examples(emu, _prompt("- Operation: update\n- Error cases: no", formats=""))
    assert all(_operation(answer) in ("create", "complete", "list") for _, answer in pairs), pairs


def test_what_a_prompt_names_is_read_from_its_text():
    text = _prompt("- Operation: Update\n- Phrasing style: casual\n- Error cases: no, every request succeeds")[1]
    focus = read_focus(text["content"])
    assert (focus.operation, focus.style, focus.errors) == ("update", "casual", Fraction(0))
    assert [f.label for f in focus.formats] == ["creates", "updates", "completions", "deletions", "lists", "errors"]
    assert str(focus.today) == "2025-01-15"
    assert read_focus("Focus on the operation: delete. Return JSON.").operation == "delete"
    assert read_focus("cell: {'include_errors': True, 'operation': 'list'}").operation == "list"
    assert not read_focus("Error: Task 'gym' not found").asks  # an answer, not an axis value


@pytest.mark.parametrize(("value", "share"), [
    ("no, every request in this batch succeeds", Fraction(0)), ("false", Fraction(0)), ("true", Fraction(1, 3)),
    ("yes, make about a third of the examples error cases", Fraction(1, 3)), ("yes, half of them", Fraction(1, 2)),
    ("yes (20 %)", Fraction(1, 5)), ("[clear error message]", None),
])
def test_the_share_of_error_cases_a_value_asks_for(value, share):
    assert error_share(value) == share


def test_an_operation_and_its_answer_format_share_a_stem():
    assert {stem(w) for w in ("update", "updates", "Updated")} == {"updat"}
    assert {stem(w) for w in ("complete", "completions", "Completed")} == {"complet"}
    assert {stem(w) for w in ("delete", "deletions", "Deleted")} == {"delet"}
    assert stem("lists") == stem("list") != stem("listen")


def test_answers_to_prompts_holding_a_text_are_spoiled_and_no_others(tmp_path):
    needle = "- Operation: update\n- Error cases: no"
    with running(tmp_path / "emu", malformed_when_prompt_contains=[needle], seed=5) as emu:
        for focus, spoiled in [(needle, True), ("- Operation: create\n- Error cases: no", False),
                               ("- Operation: update\n- Error cases: yes", False)]:
            for i in range(4):
                messages = _prompt(focus)
                messages[1]["content"] += f" ({i})"
                content = emu.client.chat.completions.create(
                    model=MODEL, messages=messages,
                    response_format=response_format("sharegpt")).choices[0].message.content
                try:
                    turns = [t for e in json.loads(content)["examples"] for t in e["conversations"]]
                    broken = turns[0]["from"] != "human" or any(not t["value"] for t in turns)
                except (json.JSONDecodeError, KeyError, TypeError):
                    broken = True
                assert broken == spoiled, (focus, content[:200])


def test_the_fault_needs_an_array_of_texts(tmp_path):
    from batchgen.emulator import ConfigError, EmulatorConfig

    with pytest.raises(ConfigError, match=r"malformed_when_prompt_contains must be an array of texts \(none empty\)"):
        EmulatorConfig().updated({"malformed_when_prompt_contains": "Operation: update"})
    with pytest.raises(ConfigError, match="none empty"):
        EmulatorConfig().updated({"malformed_when_prompt_contains": [""]})
