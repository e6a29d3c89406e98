from __future__ import annotations

import copy
import random
import unicodedata

import orjson
import pytest

from batchgen.dataset.lineage import words
from batchgen.dataset.validate import (
    CATEGORIES,
    NOT_WORD,
    Deduper,
    ExampleVerdict,
    Reason,
    Rules,
    Summary,
    check_turns,
    content_hash,
    example_key,
    normalize_text,
    parse_response,
    seed_hashes,
    validate_example,
    validate_response,
)
from batchgen.recipe.formats import Turn, from_turns, parse_example

# The lesson's seed examples and its format patterns (Stage 1 and Stage 4).
SEEDS = [
    {"conversations": [
        {"from": "human", "value": "Create a task to review the quarterly budget by Friday"},
        {"from": "gpt", "value": "Created task: 'Review quarterly budget' | Priority: medium | Due: 2025-01-17 (Friday)"},
    ]},
    {"conversations": [
        {"from": "human", "value": "Add a high priority task for the team meeting tomorrow"},
        {"from": "gpt", "value": "Created task: 'Team meeting' | Priority: high | Due: 2025-01-16 (tomorrow)"},
    ]},
    {"conversations": [
        {"from": "human", "value": "I need to remember to call mom on Sunday"},
        {"from": "gpt", "value": "Created task: 'Call mom' | Priority: medium | Due: 2025-01-19 (Sunday)"},
    ]},
]
PATTERNS = ["Created task:", "Updated task:", "Completed task:", "Deleted task:", "Error:", "tasks found"]
LESSON = Rules.from_values(patterns=PATTERNS)


def sharegpt(*turns: tuple[str, str]) -> dict[str, object]:
    return {"conversations": [{"from": role, "value": value} for role, value in turns]}


GOOD = sharegpt(("human", "Mark the dentist task as done"), ("gpt", "Completed task: 'Dentist appointment'"))


# -- parse_response: accepted shapes ------------------------------------------------------------------------

@pytest.mark.parametrize("content, source, shape", [
    (orjson.dumps({"examples": SEEDS}).decode(), "json", "examples"),
    (orjson.dumps(SEEDS).decode(), "json", "array"),
    (orjson.dumps(SEEDS[0]).decode(), "json", "single"),
    (orjson.dumps({"data": SEEDS}).decode(), "json", "wrapper:data"),
    (orjson.dumps({"note": "three", "training_examples": SEEDS}).decode(), "json", "wrapper:training_examples"),
    (orjson.dumps({"result": {"examples": SEEDS}}).decode(), "json", "wrapper:result.examples"),
    (orjson.dumps({"conversations": SEEDS}).decode(), "json", "wrapper:conversations"),
    ("Here you go:\n```json\n" + orjson.dumps({"examples": SEEDS}).decode() + "\n```\nEnjoy!", "fenced", "examples"),
    ("```\n" + orjson.dumps(SEEDS).decode() + "\n```", "fenced", "array"),
    ("Sure! " + orjson.dumps({"examples": SEEDS}).decode() + " Hope this helps.", "embedded", "examples"),
    ("\ufeff  " + orjson.dumps({"examples": SEEDS}).decode() + "\n", "json", "examples"),
])
def test_parse_response_accepts_every_shape(content: str, source: str, shape: str) -> None:
    parsed = parse_response(content, "stop", "sharegpt")
    if shape == "examples":
        assert parsed.ok and parsed.reason is None
    else:  # kept, with a note of the shape that held them
        assert parsed.reason is not None and parsed.reason.category == "other_shape"
    assert (parsed.source, parsed.shape) == (source, shape)
    expected = SEEDS[:1] if shape == "single" else SEEDS
    assert parsed.examples == expected


def test_parse_response_single_examples_of_each_format() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Error: no task"}]}
    alpaca = {"instruction": "List my tasks", "input": "", "output": "3 tasks found"}
    assert parse_response(orjson.dumps(chat).decode(), None, "chatml").examples == [chat]
    assert parse_response(orjson.dumps(alpaca).decode(), None, "alpaca").examples == [alpaca]
    assert parse_response(orjson.dumps({"examples": alpaca}).decode(), None, "alpaca").examples == [alpaca]


def test_parse_response_keeps_unicode() -> None:
    example = sharegpt(("human", "Créer une tâche « réunion » 会议 🚀"), ("gpt", "Created task: 'réunion 会议 🚀'"))
    parsed = parse_response(orjson.dumps({"examples": [example]}).decode(), "stop", "sharegpt")
    assert parsed.examples == [example]
    verdict = validate_example(parsed.examples[0], "sharegpt", LESSON)
    assert verdict.valid and verdict.pairs[1] == ("assistant", "Created task: 'réunion 会议 🚀'")


# -- parse_response: response-level rejections --------------------------------------------------------------

@pytest.mark.parametrize("content, finish, refusal, category, text", [
    ('{"examples": [{"conversations": [', "length", None, "truncated",
     "Truncated at max_tokens: finish_reason=length"),
    ("", "content_filter", None, "content_filter", "Blocked by content filter: finish_reason=content_filter"),
    (None, "stop", "I can't help with that.", "refusal", "Model refused: I can't help with that."),
    (None, "tool_calls", None, "finish_reason", "Unexpected finish_reason: tool_calls"),
    (None, "stop", None, "empty_response", "Empty response content"),
    ("   \n ", None, None, "empty_response", "Empty response content"),
    ("Sorry, I cannot produce that.", "stop", None, "not_json",
     "Response is not JSON: "),  # then orjson's own message, which varies by version
    ("```json\n{broken\n```", "stop", None, "not_json", None),
    ("[]", "stop", None, "no_examples", "No examples found: empty array"),
    ('{"examples": []}', "stop", None, "no_examples", "No examples found: empty examples list"),
    ('{"status": "ok", "count": 0}', "stop", None, "no_examples",
     "No examples found: object with keys status, count"),
    ('"just a string"', "stop", None, "no_examples", "No examples found: JSON str value"),
    ("42", "stop", None, "no_examples", "No examples found: JSON int value"),
])
def test_parse_response_rejections(content: str | None, finish: str | None, refusal: str | None,
                                   category: str, text: str | None) -> None:
    parsed = parse_response(content, finish, "sharegpt", refusal=refusal)
    assert not parsed.ok and parsed.examples == []
    assert parsed.reason is not None and parsed.reason.category == category
    assert category in CATEGORIES
    if text is not None and text.endswith(": "):
        assert str(parsed.reason).startswith(text) and len(str(parsed.reason)) > len(text)
    elif text is not None:
        assert str(parsed.reason) == text


def test_non_dict_items_are_kept_and_fail_the_schema() -> None:
    parsed = parse_response('{"examples": ["not an example", 3]}', "stop", "sharegpt")
    assert parsed.ok and parsed.examples == ["not an example", 3]
    verdict = validate_example(parsed.examples[0], "sharegpt", LESSON)
    assert verdict.category == "schema" and verdict.content_hash is None


# -- validate_example: the lesson's checks ------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_lesson_seeds_are_valid(seed: dict[str, object]) -> None:
    verdict = validate_example(seed, "sharegpt", LESSON)
    assert verdict.valid and verdict.reason is None and verdict.category is None
    assert [turn.role for turn in verdict.turns] == ["user", "assistant"]
    assert verdict.content_hash is not None and len(verdict.content_hash) == 32


@pytest.mark.parametrize("example, category, text", [
    (sharegpt(("human", "Create a task"), ("human", "Created task: 'x'")), "role_order",
     "Turn 1 should be gpt, got human"),
    (sharegpt(("gpt", "Created task: 'x'"), ("human", "thanks")), "role_order", "Turn 0 should be human, got gpt"),
    (sharegpt(("human", "a"), ("gpt", "Created task: 'a'"), ("human", "and b?")), "role_order",
     "Last turn should be gpt, got human"),
    (sharegpt(("human", "a"), ("system", "be nice"), ("gpt", "Created task: 'a'")), "role_order",
     "Turn 1 should be gpt, got system"),
    (sharegpt(("human", "   "), ("gpt", "Created task: 'x'")), "empty_turn", "Empty message content: turn 0"),
    (sharegpt(("human", "Create a task"), ("gpt", "")), "empty_turn", "Empty message content: turn 1"),
    (sharegpt(("human", "Create a task for the budget review"),
              ("gpt", "Sure! I have added the budget review to your list of things to do.")),
     "format_pattern", "Response doesn't follow format: Sure! I have added the budget review to your list ..."),
    (sharegpt(("human", "Create a task")), "turn_count", "Too few turns: 1 < 2"),
    ({"conversations": [{"from": "user", "value": "hi"}]}, "schema",
     "schema: conversations.0.from: Input should be 'system', 'human' or 'gpt'"),
    ({"conversation": []}, "schema", None),
    ({"conversations": []}, "schema", "schema: conversations: List should have at least 1 item after validation, not 0"),
    ({"conversations": [{"from": "human", "value": "x", "extra": 1}]}, "schema",
     "schema: conversations.0.extra: Extra inputs are not permitted"),
    ({"conversations": [{"from": "human", "value": 5}]}, "schema",
     "schema: conversations.0.value: Input should be a valid string"),
    ("a string", "schema", None),
])
def test_bad_examples_fail_with_the_lessons_reasons(example: object, category: str, text: str | None) -> None:
    verdict = validate_example(example, "sharegpt", LESSON)
    assert not verdict.valid and verdict.category == category
    if text is not None:
        assert str(verdict.reason) == text


def test_system_turn_then_alternation_is_valid() -> None:
    example = sharegpt(("system", "You manage tasks."), ("human", "Delete the gym task"),
                       ("gpt", "Deleted task: 'Gym'"), ("human", "And list the rest"), ("gpt", "2 tasks found"))
    verdict = validate_example(example, "sharegpt", LESSON)
    assert verdict.valid
    assert [role for role, _ in verdict.pairs] == ["system", "user", "assistant", "user", "assistant"]


def test_every_assistant_turn_must_follow_the_format() -> None:
    example = sharegpt(("human", "a"), ("gpt", "Created task: 'a'"), ("human", "b"), ("gpt", "OK, done."))
    assert str(validate_example(example, "sharegpt", LESSON).reason) == "Response doesn't follow format: OK, done."


def test_chatml_reasons_use_chatml_role_names() -> None:
    example = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    assert str(validate_example(example, "chatml", LESSON).reason) == "Turn 1 should be assistant, got user"
    bad = {"messages": [{"role": "human", "content": "a"}]}
    assert validate_example(bad, "chatml", LESSON).category == "schema"


def test_alpaca_examples() -> None:
    good = {"instruction": "List my open tasks", "input": "status=open", "output": "3 tasks found"}
    verdict = validate_example(good, "alpaca", LESSON)
    assert verdict.valid and verdict.pairs == [("user", "List my open tasks\n\nstatus=open"),
                                               ("assistant", "3 tasks found")]
    assert validate_example({"instruction": "x", "output": "nope"}, "alpaca", LESSON).category == "format_pattern"
    missing = validate_example({"instruction": "x"}, "alpaca", LESSON)
    assert str(missing.reason) == "schema: output: Field required"


def test_fast_path_agrees_with_pydantic_on_alias_names() -> None:
    # populate_by_name lets pydantic accept "from_"; the fast path declines and pydantic decides.
    example = {"conversations": [{"from_": "human", "value": "a"}, {"from_": "gpt", "value": "Error: no"}]}
    assert validate_example(example, "sharegpt", LESSON).valid
    parse_example(example, "sharegpt")


def test_rules_limits_regexes_and_switches() -> None:
    rules = Rules.from_values(regexes=[r"^(Created|Deleted) task: '[^']+'"], forbidden=[r"(?i)as an ai"],
                              max_chars=40, max_turns=2)
    assert validate_example(SEEDS[0], "sharegpt", rules).category == "turn_too_long"
    ok = sharegpt(("human", "Remove the gym task"), ("gpt", "Deleted task: 'Gym'"))
    assert validate_example(ok, "sharegpt", rules).valid
    off = sharegpt(("human", "Finish it"), ("gpt", "Completed task: 'Gym'"))
    assert str(validate_example(off, "sharegpt", rules).reason).startswith("Response doesn't match a required")
    ai = sharegpt(("human", "As an AI, do it"), ("gpt", "Deleted task: 'Gym'"))
    assert str(validate_example(ai, "sharegpt", rules).reason) == "Matches a forbidden pattern: turn 0: (?i)as an ai"
    long = sharegpt(("human", "a"), ("gpt", "Deleted task: 'a'"), ("human", "b"), ("gpt", "Deleted task: 'b'"))
    assert str(validate_example(long, "sharegpt", rules).reason) == "Too many turns: 4 > 2"
    loose = Rules.from_values(role_order=False, non_empty=False, min_turns=1)
    assert validate_example(sharegpt(("gpt", ""), ("gpt", "")), "sharegpt", loose).valid


@pytest.mark.parametrize("values, message", [
    ({"dedupe": "fuzzy"}, "dedupe must be one of exact, normalized, none"),
    ({"min_turns": 3, "max_turns": 2}, "need 0 <= min_turns <= max_turns"),
    ({"max_chars": 0}, "max_chars must be positive"),
    ({"regexes": ["(unclosed"]}, "regexes: invalid regular expression '(unclosed'"),
])
def test_rules_reject_bad_values(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Rules.from_values(**values)  # type: ignore[arg-type]


def test_check_turns_on_turn_objects() -> None:
    turns = [Turn(role="user", content="a"), Turn(role="user", content="b")]
    assert check_turns(turns, "sharegpt", LESSON) == Reason("role_order", "Turn 1 should be gpt, got human")


def test_reason_round_trips_through_its_text() -> None:
    reason = Reason("format_pattern", "Response doesn't follow format", "Sure: I did it...")
    assert Reason.parse("format_pattern", str(reason)) == reason
    assert Reason.parse("role_order", "Turn 1 should be gpt, got human").detail == ""


def test_verdict_example_converts_between_formats() -> None:
    verdict = validate_example(SEEDS[0], "sharegpt", LESSON)
    assert verdict.example("sharegpt") == SEEDS[0]
    assert verdict.example("chatml")["messages"][0] == {"role": "user", "content": SEEDS[0]["conversations"][0]["value"]}


# -- hashing and duplicates ---------------------------------------------------------------------------------

def test_normalize_text() -> None:
    assert normalize_text("  Hello,   WORLD!!\n Ünïcode  Straße ") == "hello world ünïcode strasse"
    assert normalize_text("ｆｕｌｌ－ｗｉｄｔｈ") == "fullwidth"


def test_normalizing_ascii_the_fast_way_is_the_same() -> None:
    """ASCII text takes a shortcut (a translation); it must give what NFKC, casefold and the pattern give."""
    rng = random.Random(4)
    texts = ["".join(chr(rng.randrange(128)) for _ in range(rng.randrange(60))) for _ in range(5_000)]
    texts += ["Add a task: 'Call Bob' (tomorrow)!", "\x1e\x1f\x0b\x0c\t_under_score_ 3.14", ""]
    for text in texts:
        folded = unicodedata.normalize("NFKC", text).casefold()
        assert normalize_text(text) == " ".join(NOT_WORD.sub("", folded).split()), repr(text)
        assert words([text, "x"]) == frozenset(normalize_text(f"{text} x").split()), repr(text)


def test_exact_and_normalized_hashes() -> None:
    a = sharegpt(("human", "Create a task: review budget"), ("gpt", "Created task: 'Review budget'"))
    b = sharegpt(("human", "create a TASK   review budget!"), ("gpt", "Created task 'review budget'."))
    exact = Rules.from_values(patterns=["Created task"], dedupe="exact")
    normal = Rules.from_values(patterns=["Created task"], dedupe="normalized")
    assert validate_example(a, "sharegpt", exact).content_hash != validate_example(b, "sharegpt", exact).content_hash
    assert validate_example(a, "sharegpt", normal).content_hash == validate_example(b, "sharegpt", normal).content_hash
    # The hash is format-neutral: the same conversation as ChatML hashes the same.
    turns = validate_example(a, "sharegpt", exact).turns
    chat = from_turns(turns, "chatml")
    assert validate_example(chat, "chatml", exact).content_hash == content_hash(turns)


def test_deduper_exact_vs_normalized() -> None:
    a = sharegpt(("human", "Delete the gym task"), ("gpt", "Deleted task: 'Gym'"))
    b = sharegpt(("human", "delete the gym task."), ("gpt", "Deleted task: 'Gym'"))
    for mode, expected in (("exact", [True, True, False]), ("normalized", [True, False, False])):
        rules = Rules.from_values(patterns=PATTERNS, dedupe=mode)
        deduper = Deduper.for_rules(rules, "sharegpt")
        verdicts = [deduper.admit(validate_example(ex, "sharegpt", rules), f"r{i}#0")
                    for i, ex in enumerate([a, b, copy.deepcopy(a)])]
        assert [v.valid for v in verdicts] == expected
        assert verdicts[2].category == "duplicate" and verdicts[2].duplicate_of == "r0#0"
        assert str(verdicts[2].reason) == "Duplicate: r0#0"


def test_dedupe_none_keeps_duplicates_but_still_rejects_seed_copies() -> None:
    rules = Rules.from_values(patterns=PATTERNS, dedupe="none")
    deduper = Deduper.for_rules(rules, "sharegpt", SEEDS)
    assert deduper.admit(validate_example(GOOD, "sharegpt", rules), "a#0").valid
    assert deduper.admit(validate_example(GOOD, "sharegpt", rules), "b#0").valid
    copy_ = deduper.admit(validate_example(SEEDS[1], "sharegpt", rules), "c#0")
    assert copy_.category == "seed_copy" and copy_.duplicate_of == "seed:1"
    assert str(copy_.reason) == "Copy of a seed example: seed:1"


def test_seed_copies_detected_in_normalized_mode_and_allowed_when_switched_off() -> None:
    near = sharegpt(("human", "create a task to review the quarterly budget by friday!"),
                    ("gpt", "Created task: Review quarterly budget | Priority: medium | Due: 2025-01-17 (Friday)"))
    normal = Rules.from_values(patterns=PATTERNS, dedupe="normalized")
    assert Deduper.for_rules(normal, "sharegpt", SEEDS).admit(
        validate_example(near, "sharegpt", normal), "x#0").category == "seed_copy"
    allow = Rules.from_values(patterns=PATTERNS, reject_seed_copies=False)
    assert Deduper.for_rules(allow, "sharegpt", SEEDS).admit(
        validate_example(SEEDS[0], "sharegpt", allow), "x#0").valid


def test_deduper_carries_on_in_a_new_process_and_is_idempotent() -> None:
    rules = LESSON
    first = Deduper.for_rules(rules, "sharegpt", SEEDS)
    verdict = first.admit(validate_example(GOOD, "sharegpt", rules), example_key("req-1", 0))
    assert verdict.valid and len(first) == 1
    stored = dict(first.known)  # what the ledger keeps: hash -> first key
    again = Deduper.for_rules(rules, "sharegpt", SEEDS, known=stored)
    # The same example collected again under the same key is not its own duplicate ...
    assert again.admit(validate_example(GOOD, "sharegpt", rules), "req-1#0").valid
    # ... but under another key it is.
    dup = again.admit(validate_example(GOOD, "sharegpt", rules), "req-2#3")
    assert dup.duplicate_of == "req-1#0"


def test_invalid_verdicts_pass_through_the_deduper_untouched() -> None:
    deduper = Deduper()
    bad = validate_example(sharegpt(("human", "a"), ("human", "b")), "sharegpt", LESSON)
    assert deduper.admit(bad, "k") is bad and len(deduper) == 0


def test_seed_hashes_rejects_a_broken_seed() -> None:
    with pytest.raises(ValueError, match="seed 1 is not a valid sharegpt example"):
        seed_hashes([SEEDS[0], {"conversations": "nope"}], "sharegpt", LESSON)


# -- validate_response and the summary ----------------------------------------------------------------------

def test_validate_response_end_to_end() -> None:
    bad_role = sharegpt(("human", "Create a task"), ("human", "Created task: 'x'"))
    off = sharegpt(("human", "Create a task"), ("gpt", "Done!"))
    content = orjson.dumps({"examples": [GOOD, bad_role, off, GOOD, SEEDS[0]]}).decode()
    deduper = Deduper.for_rules(LESSON, "sharegpt", SEEDS)
    result = validate_response(content, "stop", "sharegpt", LESSON, deduper, custom_id="job-1-0")
    assert result.reason is None and result.valid_count == 1
    assert [v.category for v in result.examples] == [None, "role_order", "format_pattern", "duplicate",
                                                     "seed_copy"]
    assert result.examples[3].duplicate_of == "job-1-0#0"
    assert len(result.parsed.examples) == len(result.examples)


def test_summary_renders_like_the_lesson() -> None:
    summary = Summary()
    summary.add(None, 487)
    for _ in range(8):
        summary.add(Reason("format_pattern", "Response doesn't follow format", "Sure..."))
    for _ in range(5):
        summary.add(Reason("role_order", "Turn 1 should be gpt, got human"))
    assert summary.render() == ("Valid: 487/500\n"
                                "Invalid reasons: {\"Response doesn't follow format\": 8, "
                                "'Turn 1 should be gpt, got human': 5}")
    assert summary.invalid == 13
    assert summary.to_dict()["categories"] == {"format_pattern": 8, "role_order": 5}


def test_summary_counts_responses_and_merges() -> None:
    summary = Summary()
    summary.add_response(validate_response(None, "length", "sharegpt", LESSON))
    summary.add_response(validate_response(orjson.dumps({"examples": [GOOD, GOOD]}).decode(), "stop", "sharegpt",
                                           LESSON))
    assert (summary.valid, summary.total) == (2, 3)
    assert summary.categories == {"truncated": 1}
    merged = summary.merge(summary)
    assert (merged.valid, merged.total, merged.reasons["Truncated at max_tokens"]) == (4, 6, 2)
    assert Summary().render() == "Valid: 0/0\nInvalid reasons: {}"


def test_reason_messages_never_contain_the_detail_separator() -> None:
    messages = []
    for content, finish in (("x", "length"), ("", "content_filter"), ("", "stop"), ("nope", "stop"), ("[]", None)):
        reason = parse_response(content, finish, "sharegpt").reason
        assert reason is not None
        messages.append(reason.message)
    assert all(": " not in message for message in messages)


def test_verdict_fields() -> None:
    verdict = validate_example(GOOD, "sharegpt", LESSON)
    assert isinstance(verdict, ExampleVerdict)
    assert verdict.duplicate_of is None and verdict.pairs[0][0] == "user"
