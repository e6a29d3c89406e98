"""Judging embeddings answers: one vector of the size asked for, of finite numbers, floats or base64 float32; and
the same verdicts through the result-line judge (in process and in its worker process)."""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path

import orjson
import pytest

from batchgen.dataset.embeddings import EmbeddingRules, check_vector, decode_vector, input_hash, judge_embedding
from batchgen.dataset.reasons import CATEGORIES, EMBEDDING_SIZE, EMBEDDING_VALUE, NO_EMBEDDING, Reason
from batchgen.dataset.result_lines import judge_line, judged_lines
from batchgen.dataset.validate import Rules


def packed(values: list[float]) -> str:
    """Base64 of little-endian float32s, as the API encodes `encoding_format = "base64"`."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def answer(embedding: object, *more: object) -> dict:
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate((embedding, *more))]
    return {"object": "list", "data": data, "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 7, "total_tokens": 7}}


def test_a_float_vector_of_the_right_size_is_one_example_with_its_input():
    vector = [0.25, -0.5, 0.125, 1e-7]
    reason, examples = judge_embedding(answer(vector), "call mom", EmbeddingRules(4))
    assert reason is None
    [(content, digest, valid, category, why)] = examples
    assert json.loads(content) == {"input": "call mom", "embedding": vector}
    assert (digest, valid, category, why) == (input_hash("call mom"), True, None, None)


def test_base64_is_decoded_as_little_endian_float32():
    values = [0.5, -1.25, 3.0, 2.0 ** -20]  # exact in float32
    assert decode_vector(packed(values)) == values
    reason, examples = judge_embedding(answer(packed(values)), "x", EmbeddingRules(4))
    assert reason is None and json.loads(examples[0][0])["embedding"] == values
    # 0.1 is not a float32: the decoded value is the float32 the bytes hold, not the float64 that was packed
    assert decode_vector(packed([0.1])) == [struct.unpack("<f", struct.pack("<f", 0.1))[0]]


@pytest.mark.parametrize(("size", "vector", "detail"), [
    (1536, [0.1] * 1535, "1535 numbers, expected 1536"),
    (1536, [0.1] * 3072, "3072 numbers, expected 1536"),
    (256, [], "0 numbers, expected 256"),
])
def test_a_vector_of_another_size_is_rejected_with_both_sizes(size, vector, detail):
    reason = check_vector(vector, size)
    assert reason == Reason(EMBEDDING_SIZE, "Wrong embedding size", detail)
    assert judge_embedding(answer(vector), "x", EmbeddingRules(size)) == (reason, [])


def test_without_a_known_size_any_non_empty_vector_passes():
    assert check_vector([0.3] * 7, None) is None
    assert check_vector([], None) == Reason(EMBEDDING_SIZE, "Empty embedding")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_rejected_with_their_position(bad):
    vector = [0.0] * 8
    vector[5] = bad
    reason = check_vector(vector, 8)
    assert reason is not None and reason.category == EMBEDDING_VALUE
    assert str(reason) == f"Embedding value is not finite: {bad} at 5"
    # in base64 too: the float32 NaN and infinities decode to themselves
    assert judge_embedding(answer(packed(vector)), "x", EmbeddingRules(8))[0] == reason


def test_finite_numbers_whose_sum_overflows_are_still_finite():
    assert check_vector([1e308, 1e308, -1e308], 3) is None


@pytest.mark.parametrize(("item", "detail"), [(None, "null at 2"), ("0.5", "string at 2"), (True, "boolean at 2"),
                                              ([0.5], "array at 2")])
def test_a_value_that_is_not_a_number_is_rejected(item, detail):
    reason = decode_vector([0.1, 0.2, item, 0.4])
    assert reason == Reason(EMBEDDING_VALUE, "Embedding value is not a number", detail)


def test_whole_numbers_are_numbers():
    assert decode_vector([0, 1, -2]) == [0.0, 1.0, -2.0]


@pytest.mark.parametrize(("value", "message"), [
    ("not base64!", "Embedding is not valid base64"),
    (base64.b64encode(b"\x00" * 6).decode(), "Embedding is not float32 values"),
    ({"values": [0.1]}, "Embedding is neither numbers nor base64"),
])
def test_undecodable_embeddings_are_rejected(value, message):
    reason = decode_vector(value)
    assert isinstance(reason, Reason) and reason.category == EMBEDDING_VALUE and reason.message == message


@pytest.mark.parametrize(("body", "message"), [
    ({"object": "list", "data": []}, "No embedding in the answer"),
    ({"object": "list"}, "No embedding in the answer"),
    ({"object": "list", "data": [{"index": 0}]}, "No embedding in the answer"),
    (answer([0.1], [0.2]), "Wrong number of embeddings"),
])
def test_an_answer_without_exactly_one_embedding_is_rejected(body, message):
    reason, examples = judge_embedding(body, "x", EmbeddingRules(1))
    assert examples == [] and reason is not None
    assert (reason.category, reason.message) == (NO_EMBEDDING, message)


def test_every_category_is_known_and_messages_parse_back():
    for category in (NO_EMBEDDING, EMBEDDING_SIZE, EMBEDDING_VALUE):
        assert category in CATEGORIES
    reason = check_vector([0.1], 2)
    assert Reason.parse(reason.category, str(reason)) == reason


def test_dedupe_hashes_the_input_text():
    assert input_hash("Call Mom!") != input_hash("call mom")
    assert input_hash("Call Mom!", "normalized") == input_hash("call   mom", "normalized")


# -- through the result-line judge ----------------------------------------------------------------------------

def output_line(custom_id: str, body: dict) -> bytes:
    return orjson.dumps({"id": "batch_req_1", "custom_id": custom_id, "error": None,
                         "response": {"status_code": 200, "request_id": "req_1", "body": body}}) + b"\n"


def test_an_embeddings_line_is_judged_as_an_embedding_never_as_a_chat_answer():
    rules = EmbeddingRules(3, inputs={"e-1": "review the budget"})
    judged = judge_line(output_line("e-1", answer(packed([0.5, 0.25, -1.0]))), 1, "sharegpt", rules)
    assert judged[:10] == ("ok", "e-1", 200, "req_1", None, 7, 0, 0, 0, None)
    assert json.loads(judged[10][0][0]) == {"input": "review the budget", "embedding": [0.5, 0.25, -1.0]}
    # the same line under chat rules has no message content: what every embedding was judged before
    chat = judge_line(output_line("e-1", answer(packed([0.5, 0.25, -1.0]))), 1, "sharegpt", Rules())
    assert chat[9] == ("empty_response", "Empty response content")


def test_a_wrong_size_line_keeps_its_tokens_and_reason():
    rules = EmbeddingRules(4, inputs={"e-1": "x"})
    judged = judge_line(output_line("e-1", answer([0.1, 0.2])), 1, "sharegpt", rules)
    assert judged[5] == 7 and judged[9] == (EMBEDDING_SIZE, "Wrong embedding size: 2 numbers, expected 4")
    assert judged[10] == []


def test_nan_written_as_bare_json_words_is_a_rejected_vector_not_a_corrupt_file():
    line = (b'{"custom_id": "e-1", "response": {"status_code": 200, "body": {"object": "list", "data": '
            b'[{"index": 0, "embedding": [0.5, NaN, Infinity]}], "usage": {"prompt_tokens": 3}}}}\n')
    judged = judge_line(line, 4, "sharegpt", EmbeddingRules(3, inputs={"e-1": "x"}))
    assert judged[0] == "ok" and judged[9] == (EMBEDDING_VALUE, "Embedding value is not finite: nan at 1")
    assert judge_line(b'{"custom_id": NaN-ish}\n', 4, "sharegpt", EmbeddingRules(3))[0] == "corrupt"


def test_the_worker_process_judges_embeddings_the_same(tmp_path: Path):
    inputs = {f"e-{i}": f"text {i}" for i in range(40)}
    path = tmp_path / "batch.output.jsonl"
    with open(path, "wb") as handle:
        for i in range(40):
            vector = [0.5, float(i), -0.25] if i % 7 else [0.5]
            handle.write(output_line(f"e-{i}", answer(packed(vector) if i % 2 else vector)))
    rules = EmbeddingRules(3, "exact", inputs)
    here = list(judged_lines(path, "sharegpt", rules, parallel=False))
    assert list(judged_lines(path, "sharegpt", rules, parallel=True)) == here
    assert sum(1 for judged in here if judged[9] is None) == 34
