"""The batch status machine driven through the SDK: validation failures, cancel, expiry, stuck finalizing,
token limits, per-line errors, result routing and ordering. Time is moved with the control API, never slept."""

from __future__ import annotations

import json

import openai
import pytest
from emulator_fixtures import chat_line, create, jsonl, rows, run_lines, running, upload, validate, wait

FROZEN = {"time_scale": 0, "line_seconds": 1.0}


def _failure(batch) -> dict:
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert (batch.request_counts.total, batch.request_counts.completed) == (0, 0)
    assert len(batch.errors.data) == 1
    return batch.errors.data[0].model_dump()


@pytest.mark.parametrize(("lines", "code", "param", "line"), [
    ([chat_line(0), b"{not json"], "invalid_json_line", None, 2),
    ([chat_line(0), chat_line(0)], "duplicate_custom_id", "custom_id", 2),
    ([chat_line(0), {k: v for k, v in chat_line(1).items() if k != "custom_id"}], "missing_required_parameter",
     "custom_id", 2),
    ([chat_line(0), chat_line(1, model="gpt-4o")], "mismatched_model", "body.model", 2),
    ([chat_line(0), {**chat_line(1), "url": "/v1/embeddings"}], "invalid_url", "url", 2),
    ([chat_line(0, model="gpt-nonexistent")], "model_not_found", "body.model", 1),
    ([chat_line(0), chat_line(1, stream=True)], "streaming_unsupported", "body.stream", 2),
    ([{**chat_line(0), "body": {"messages": []}}], "invalid_request", "body.model", 1),
])
def test_each_line_validation_failure(tmp_path, lines, code, param, line):
    with running(tmp_path / "emu") as emu:
        error = _failure(run_lines(emu, lines))
        assert (error["code"], error["param"], error["line"]) == (code, param, line)
        assert error["message"]
        validate("Batch", emu.client.batches.with_raw_response.list().http_response.json()["data"][0])


def test_file_level_validation_failures(tmp_path):
    with running(tmp_path / "emu", max_lines=3, max_batch_bytes=2000) as emu:
        missing = wait(emu, create(emu.client, "file-doesnotexist").id)
        assert _failure(missing)["code"] == "invalid_request" and _failure(missing)["param"] == "file_id"
        other = emu.client.files.create(file=("a.jsonl", jsonl([chat_line(0)])), purpose="user_data")
        assert _failure(wait(emu, create(emu.client, other.id).id))["code"] == "invalid_request"
        empty = emu.client.files.create(file=("e.jsonl", b""), purpose="batch")
        assert _failure(wait(emu, create(emu.client, empty.id).id))["code"] == "empty_batch"
        assert _failure(run_lines(emu, [chat_line(i) for i in range(4)]))["code"] == "too_many_tasks"
        big = [chat_line(i, content="x" * 900) for i in range(3)]
        assert _failure(run_lines(emu, big))["code"] == "file_too_large"


def test_token_limit_counts_batches_until_they_end(tmp_path):
    with running(tmp_path / "emu", queued_token_limits={"gpt-4o-mini": 100}, finalizing_seconds=10,
                 **FROZEN) as emu:
        lines = [chat_line(i, content="word " * 20) for i in range(2)]  # about 60 prompt tokens
        first = wait(emu, create(emu.client, upload(emu.client, lines).id).id, ("in_progress", "failed"))
        assert first.status == "in_progress"
        second = wait(emu, create(emu.client, upload(emu.client, lines).id).id, ("in_progress", "failed"))
        error = _failure(second)
        assert error["code"] == "token_limit_exceeded" and "Limit: 100 enqueued tokens" in error["message"]
        emu.control.advance(3)  # both lines ran: finalizing still holds the tokens
        assert wait(emu, first.id, ("finalizing",)).status == "finalizing"
        held = wait(emu, create(emu.client, upload(emu.client, lines).id).id, ("in_progress", "failed"))
        assert _failure(held)["code"] == "token_limit_exceeded"
        emu.control.advance(20)
        assert wait(emu, first.id).status == "completed"
        third = wait(emu, create(emu.client, upload(emu.client, lines).id).id, ("in_progress", "failed"))
        assert third.status == "in_progress"


def test_cancel_keeps_finished_work_and_writes_cancelled_rows(tmp_path):
    with running(tmp_path / "emu", **FROZEN) as emu:
        batch = create(emu.client, upload(emu.client, [chat_line(i) for i in range(6)]).id)
        wait(emu, batch.id, ("in_progress",))
        emu.control.advance(2.5)
        cancelling = emu.client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        done = wait(emu, batch.id)
        assert done.status == "cancelled" and done.cancelled_at is not None
        assert len(rows(emu.client, done.output_file_id)) == 2
        cancelled = rows(emu.client, done.error_file_id)
        assert len(cancelled) == 4
        for row in cancelled:
            validate("BatchRequestOutput", row)
            assert row["response"] is None and row["error"]["code"] == "batch_cancelled"
        answered = {r["custom_id"] for r in rows(emu.client, done.output_file_id)} | {r["custom_id"] for r in cancelled}
        assert answered == {f"req-{i}" for i in range(6)}
        assert emu.client.batches.cancel(batch.id).status == "cancelled"


def test_cancel_while_validating_and_after_completion(tmp_path):
    with running(tmp_path / "emu", time_scale=0, validation_seconds=5) as emu:
        batch = create(emu.client, upload(emu.client, [chat_line(0)]).id)
        emu.client.batches.cancel(batch.id)
        done = wait(emu, batch.id)
        assert done.status == "cancelled" and done.output_file_id is None and done.error_file_id is None
        finished = create(emu.client, upload(emu.client, [chat_line(0)]).id)
        emu.control.advance(6)
        assert wait(emu, finished.id).status == "completed"
        with pytest.raises(openai.BadRequestError):
            emu.client.batches.cancel(finished.id)


def test_expiry_at_the_completion_window(tmp_path):
    with running(tmp_path / "emu", time_scale=0, line_seconds=30_000) as emu:
        batch = create(emu.client, upload(emu.client, [chat_line(i) for i in range(5)]).id)
        wait(emu, batch.id, ("in_progress",))
        emu.control.advance(86_400 + 1)
        done = wait(emu, batch.id)
        assert done.status == "expired" and done.expired_at >= done.expires_at
        assert len(rows(emu.client, done.output_file_id)) == 2
        expired = rows(emu.client, done.error_file_id)
        assert len(expired) == 3 and all(r["error"]["code"] == "batch_expired" for r in expired)
        assert done.usage.input_tokens > 0 and done.request_counts.completed == 2


def test_expire_now_and_expire_after_fraction(tmp_path):
    with running(tmp_path / "emu", **FROZEN) as emu:
        batch = create(emu.client, upload(emu.client, [chat_line(i) for i in range(4)]).id)
        wait(emu, batch.id, ("in_progress",))
        emu.control.expire_now(batch.id)
        done = wait(emu, batch.id)
        assert done.status == "expired" and done.output_file_id is None
        assert len(rows(emu.client, done.error_file_id)) == 4
    with running(tmp_path / "emu2", expire_after_fraction=0.5) as emu:
        done = run_lines(emu, [chat_line(i) for i in range(10)])
        assert done.status == "expired"
        assert len(rows(emu.client, done.output_file_id)) == 5 and len(rows(emu.client, done.error_file_id)) == 5


def test_stuck_in_finalizing(tmp_path):
    with running(tmp_path / "emu", time_scale=0, validation_seconds=1) as emu:
        batch = create(emu.client, upload(emu.client, [chat_line(0)]).id)
        emu.control.stuck_finalizing(batch.id, 3600)
        emu.control.advance(1)
        stuck = wait(emu, batch.id, ("finalizing", "completed"))
        assert stuck.status == "finalizing" and stuck.output_file_id is None
        emu.control.advance(1800)
        assert emu.client.batches.retrieve(batch.id).status == "finalizing"
        emu.control.advance(1801)
        assert wait(emu, batch.id).status == "completed"


def test_all_lines_failed_is_completed_without_output_file(tmp_path):
    with running(tmp_path / "emu", error_rate=1.0) as emu:
        done = run_lines(emu, [chat_line(i) for i in range(4)])
        assert done.status == "completed" and done.output_file_id is None
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 4)
        assert done.usage.total_tokens == 0
        failed = rows(emu.client, done.error_file_id)
        assert len(failed) == 4
        for row in failed:
            validate("BatchRequestOutput", row)
            assert row["error"] is None and row["response"]["status_code"] in (429, 500)
            assert set(row["response"]["body"]["error"]) == {"message", "type", "param", "code"}


def test_model_errors_go_to_the_error_file_and_usage_counts_successes(tmp_path):
    with running(tmp_path / "emu", error_rate=0.3, seed=7) as emu:
        done = run_lines(emu, [chat_line(i) for i in range(60)])
        good, bad = rows(emu.client, done.output_file_id), rows(emu.client, done.error_file_id)
        assert len(good) + len(bad) == 60 and 5 < len(bad) < 35
        assert (done.request_counts.completed, done.request_counts.failed) == (len(good), len(bad))
        assert done.usage.input_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in good)
        bad_request = run_lines(emu, [{**chat_line(0), "body": {"model": "gpt-4o-mini", "messages": "hi"}}])
        row = rows(emu.client, bad_request.error_file_id)
        assert bad_request.status == "completed" and row and row[0]["response"]["status_code"] in (400, 429, 500)


def test_output_order_is_shuffled_deterministically(tmp_path):
    lines = [chat_line(i) for i in range(40)]
    orders = []
    for name in ("a", "b"):
        with running(tmp_path / name, seed=3) as emu:
            done = run_lines(emu, lines)
            orders.append([r["custom_id"] for r in rows(emu.client, done.output_file_id)])
    assert orders[0] != [f"req-{i}" for i in range(40)]
    assert sorted(orders[0]) == sorted(f"req-{i}" for i in range(40))


def test_answers_are_deterministic_for_a_seed(tmp_path):
    lines = [chat_line(i) for i in range(5)]
    bodies = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        with running(tmp_path / name, seed=seed) as emu:
            done = run_lines(emu, lines)
            out = {r["custom_id"]: r["response"]["body"]["choices"] for r in rows(emu.client, done.output_file_id)}
            bodies.append(json.dumps(out, sort_keys=True))
    assert bodies[0] == bodies[1] != bodies[2]


def test_every_status_parses_as_an_sdk_batch(tmp_path):
    seen = set()
    with running(tmp_path / "emu", time_scale=0, validation_seconds=1, line_seconds=1, finalizing_seconds=1) as emu:
        batch = create(emu.client, upload(emu.client, [chat_line(0), chat_line(1)]).id)
        for _ in range(8):
            raw = emu.client.batches.with_raw_response.retrieve(batch.id).http_response.json()
            validate("Batch", raw)
            seen.add(openai.types.Batch.model_validate(raw).status)
            emu.control.advance(1)
        other = create(emu.client, upload(emu.client, [chat_line(0)]).id)
        raw = emu.client.batches.with_raw_response.cancel(other.id).http_response.json()
        validate("Batch", raw)
        seen.add(raw["status"])
        emu.control.advance(1)
        raw = emu.client.batches.with_raw_response.retrieve(other.id).http_response.json()
        validate("Batch", raw)
        seen.add(raw["status"])
    assert {"validating", "in_progress", "finalizing", "completed", "cancelling"} <= seen
