"""Reading a judge stage's answers (`dataset.judge`) and the emulator's simulated judge (`emulator.judging`)."""

from __future__ import annotations

import pytest

from batchgen.dataset.judge import incomplete, parse_judgments, rejection
from batchgen.emulator.judging import judgment_array, judgments
from batchgen.recipe.formats import JUDGMENTS_SCHEMA

EXAMPLES = [{"conversations": [{"from": "human", "value": f"Add task {i}"},
                               {"from": "gpt", "value": f"Created task: 'task {i}'"}]} for i in range(200)]


def test_the_scores_are_read_in_every_shape_a_model_writes_them():
    scores = '[{"index": 0, "score": 8, "reason": "fine"}, {"index": 1, "score": 2.5, "reason": "wrong date"}]'
    expected = [(0, 8, "fine"), (1, 2.5, "wrong date")]
    for content in (f'{{"scores": {scores}}}', scores, f'{{"judgments": {scores}}}',
                    f"Here you are:\n```json\n{{\"scores\": {scores}}}\n```"):
        assert parse_judgments(content, "stop") == (None, expected), content


@pytest.mark.parametrize(("content", "finish", "category", "text"), [
    ('{"scores": [{"index": 0, "score": 8, "reason": "ok"}', "length", "truncated", "Truncated at max_tokens"),
    ("", "stop", "empty_response", "Empty response content"),
    ("I cannot score these.", "stop", "not_json", "Response is not JSON"),
    ('{"a": [], "b": []}', "stop", "judge_answer", "Judge answer holds no list of scores"),
    ('{"scores": [3, 4]}', "stop", "judge_answer", "Judge answer holds a score that is not an object"),
    ('{"scores": [{"score": 3}]}', "stop", "judge_answer", "Judge score without an index"),
    ('{"scores": [{"index": true, "score": 3}]}', "stop", "judge_answer", "Judge score without an index"),
    ('{"scores": [{"index": 0, "score": 11}]}', "stop", "judge_answer",
     "Judge score out of range: 11 for example 0 (scores run from 1 to 10)"),
    ('{"scores": [{"index": 0, "score": "9"}]}', "stop", "judge_answer", "Judge score out of range"),
    ('{"scores": [{"index": 0, "score": false}]}', "stop", "judge_answer", "Judge score out of range"),
])
def test_an_answer_that_holds_no_usable_scores_says_why(content, finish, category, text):
    reason, found = parse_judgments(content, finish)
    assert found == [] and reason is not None
    assert reason.category == category and str(reason).startswith(text)


def test_scores_must_give_each_example_shown_exactly_one():
    one = [(0, 8.0, ""), (1, 3.0, ""), (2, 9.0, "")]
    assert incomplete(one, 3) is None
    assert str(incomplete(one[:2], 3)) == "Judge answer scores too few examples: 2 of 3, not index 2"
    assert str(incomplete([*one, (1, 4.0, "")], 3)) == "Judge scored an example twice: index 1"
    assert str(incomplete([*one, (3, 4.0, "")], 3)) == ("Judge scored an example it was not shown: index 3 of 3 "
                                                        "example(s)")
    assert incomplete([], 0) is None


def test_a_rejection_carries_the_judges_reason_on_one_line():
    reason = rejection("judge", 3.0, 7, "The due date\nis wrong")
    assert (reason.category, str(reason)) == ("judge", "Low judge score: 3 below 7 (judge): The due date is wrong")
    assert str(rejection("j", 6.5, 7, "")) == "Low judge score: 6.5 below 7 (j)"
    assert len(str(rejection("j", 1, 7, "x" * 1000))) < 400


def test_the_simulated_judge_scores_each_example_the_same_wherever_it_is_shown():
    key, items = judgment_array(JUDGMENTS_SCHEMA)
    assert key == "scores"
    first = judgments(EXAMPLES[:10], key, items, 0.3, seed=0)["scores"]
    again = judgments(EXAMPLES[5:15], key, items, 0.3, seed=0)["scores"]
    assert [s["index"] for s in first] == list(range(10))
    assert [s["score"] for s in first[5:]] == [s["score"] for s in again[:5]]
    assert all(set(s) == {"index", "score", "reason"} and isinstance(s["reason"], str) for s in first)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_the_simulated_judge_scores_low_about_the_share_it_is_given(rate):
    key, items = judgment_array(JUDGMENTS_SCHEMA)
    scores = [s["score"] for s in judgments(EXAMPLES, key, items, rate, seed=7)["scores"]]
    low = [s for s in scores if s <= 3]
    assert all(s <= 3 or s >= 8 for s in scores)
    assert abs(len(low) / len(scores) - rate) <= 0.08


def test_only_a_schema_that_asks_for_scores_is_taken_for_a_judges():
    from batchgen.recipe.formats import response_schema

    assert judgment_array(response_schema("sharegpt")) is None
    bare = {"type": "array", "items": {"type": "object", "properties": {"score": {"type": "number", "minimum": 0,
                                                                                    "maximum": 5}}}}
    found = judgment_array(bare)
    assert found is not None and found[0] is None
    assert {s["score"] for s in judgments(EXAMPLES[:50], *found, 1.0, seed=0)} <= {0, 1, 2}
