"""The organization's Usage and Costs APIs of the emulator: envelope, paging, filters, admin auth, durable records
and exact costs."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest
from emulator_fixtures import chat_line, rows, run_lines, running
from test_emulator_serve import _free_port

from batchgen.emulator.usage import USAGE_FILE, decimal_json
from batchgen.recipe.pricing import get_price

ADMIN = "sk-admin-test"
USAGE = "/organization/usage/completions"
COSTS = "/organization/costs"
DAY = 86_400


@dataclass
class Answer:
    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def get(emu: Any, path: str, key: str | None = ADMIN, **params: Any) -> Answer:
    """GET with plain HTTP; list values become repeated parameters."""
    root = emu.base_url if hasattr(emu, "base_url") else emu
    request = urllib.request.Request(root + path + "?" + urllib.parse.urlencode(params, doseq=True))
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, response.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.read().decode())


def pages(emu: Any, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every page, following next_page; numbers parsed exactly."""
    out, page = [], None
    while True:
        response = get(emu, path, **params, **({"page": page} if page else {}))
        assert response.status_code == 200, response.text
        body = json.loads(response.text, parse_float=Decimal)
        out.append(body)
        if not body["has_more"]:
            assert body["next_page"] is None
            return out
        page = body["next_page"]


def day_start(when: float) -> int:
    return int(when) // DAY * DAY


def sync_chat(emu: Any, model: str = "gpt-4o-mini", text: str = "Hello there") -> Any:
    return emu.client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


def batch_usage(client: openai.OpenAI, batch: Any) -> tuple[int, int, int, int, Decimal]:
    """Input, cached, output tokens, answered lines and the hand-computed batch cost of a batch's output rows."""
    price = get_price(batch.model)
    totals = [0, 0, 0, 0]
    cost = Decimal(0)
    for row in rows(client, batch.output_file_id):
        usage = row["response"]["body"]["usage"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        totals[0] += usage["prompt_tokens"]
        totals[1] += cached
        totals[2] += usage["completion_tokens"]
        totals[3] += 1
        cost += price.cost(usage["prompt_tokens"], cached, usage["completion_tokens"], True)
    return totals[0], totals[1], totals[2], totals[3], cost


def test_the_page_envelope_lists_every_day_and_paging_walks_them(tmp_path):
    with running(tmp_path / "s", time_scale=0) as emu:
        batch = run_lines(emu, [chat_line(i) for i in range(3)])
        done = batch.completed_at
        start = day_start(done) - 3 * DAY
        end = day_start(done) + 2 * DAY  # five days, the batch on the fourth
        walked = pages(emu, USAGE, start_time=start, end_time=end, limit=1, bucket_width="1d")
        assert len(walked) == 5 and [p["object"] for p in walked] == ["page"] * 5
        buckets = [b for p in walked for b in p["data"]]
        assert [b["start_time"] for b in buckets] == [start + i * DAY for i in range(5)]
        assert all(b["object"] == "bucket" and b["end_time"] == b["start_time"] + DAY for b in buckets)
        assert [len(b["results"]) for b in buckets] == [0, 0, 0, 1, 0]  # empty days are listed too
        result = buckets[3]["results"][0]
        assert result["object"] == "organization.usage.completions.result"
        assert result["model"] is None and result["batch"] is None  # no group_by: one result, no group keys
        assert result["num_model_requests"] == 3
        whole = pages(emu, USAGE, start_time=start, end_time=end)  # default limit 7 holds them all
        assert len(whole) == 1 and len(whole[0]["data"]) == 5
        hours = pages(emu, USAGE, start_time=day_start(done), end_time=day_start(done) + DAY, bucket_width="1h")
        assert len(hours[0]["data"]) == 24 and sum(len(b["results"]) for b in hours[0]["data"]) == 1
        costs = pages(emu, COSTS, start_time=start, end_time=end, limit=2)
        assert len(costs) == 3 and sum(len(p["data"]) for p in costs) == 5


def test_bad_parameters_get_the_error_envelope(tmp_path):
    with running(tmp_path / "s") as emu:
        missing = get(emu, USAGE)
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "start_time"
        for params in ({"limit": 32}, {"bucket_width": "1w"}, {"group_by": "colour"}, {"page": "nonsense"}):
            answer = get(emu, USAGE, start_time=0, end_time=DAY * 40, **params)
            assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error", params
        assert get(emu, COSTS, start_time=0, end_time=DAY, bucket_width="1h").status_code == 400
        assert get(emu, COSTS, start_time=0, end_time=DAY * 200, limit=180).status_code == 200
        assert get(emu, COSTS, start_time=0, end_time=DAY * 200, limit=181).status_code == 400


def test_the_batch_filter_and_group_by_model(tmp_path):
    with running(tmp_path / "s", time_scale=0) as emu:
        assert run_lines(emu, [chat_line(i) for i in range(2)]).status == "completed"
        assert run_lines(emu, [chat_line(9, model="gpt-4.1-nano")]).status == "completed"
        sync = sync_chat(emu)
        start = day_start(emu.control.now())
        params = {"start_time": start, "end_time": start + DAY}

        def results(**extra: Any) -> list[dict[str, Any]]:
            return [r for p in pages(emu, USAGE, **params, **extra) for b in p["data"] for r in b["results"]]

        both = results(**{"group_by[]": ["model", "batch"]})
        assert {(r["model"], r["batch"], r["num_model_requests"]) for r in both} == {
            ("gpt-4o-mini", True, 2), ("gpt-4.1-nano", True, 1), ("gpt-4o-mini", False, 1)}
        only_sync = results(batch="false", group_by="model")
        assert [(r["model"], r["num_model_requests"], r["input_tokens"], r["output_tokens"]) for r in only_sync] == [
            ("gpt-4o-mini", 1, sync.usage.prompt_tokens, sync.usage.completion_tokens)]
        only_batch = results(batch="true", group_by="model")
        assert sorted((r["model"], r["num_model_requests"]) for r in only_batch) == [("gpt-4.1-nano", 1),
                                                                                     ("gpt-4o-mini", 2)]
        assert [r["num_model_requests"] for r in results()] == [4]
        assert [r["model"] for r in results(models="gpt-4.1-nano", group_by="model")] == ["gpt-4.1-nano"]


def test_only_an_admin_key_opens_usage_and_costs(tmp_path):
    with running(tmp_path / "s", token="server-token", api_key="server-token") as emu:
        for key in ("server-token", "sk-proj-abc"):
            refused = get(emu, USAGE, key=key, start_time=0)
            assert refused.status_code == 403 and "admin key" in refused.json()["error"]["message"], refused.text
        assert get(emu, COSTS, key=None, start_time=0).status_code == 401
        assert get(emu, USAGE, start_time=0, end_time=DAY).status_code == 200  # past the server token
        assert get(emu, COSTS, start_time=0, end_time=DAY).status_code == 200
        assert get(emu, "/batches").status_code == 401  # an admin key opens nothing else
        assert get(emu, "/batches", key="server-token").status_code == 200


def test_the_sdk_reads_them_with_an_admin_key(tmp_path):
    with running(tmp_path / "s", time_scale=0) as emu:
        run_lines(emu, [chat_line(0)])
        start = day_start(emu.control.now())
        admin = openai.OpenAI(base_url=emu.base_url, api_key="unused", admin_api_key=ADMIN, max_retries=0)
        page = admin.admin.organization.usage.completions(start_time=start, end_time=start + DAY,
                                                          group_by=["model"], batch=True)
        result = page.data[0].results[0]
        assert result.model == "gpt-4o-mini" and result.num_model_requests == 1  # type: ignore[union-attr]
        costs = admin.admin.organization.usage.costs(start_time=start, end_time=start + DAY)
        assert costs.data[0].results[0].amount.currency == "usd"  # type: ignore[union-attr]


def test_serve_admin_key_env_names_the_only_admin_key(tmp_path):
    port = _free_port()
    env = {**os.environ, "MY_ADMIN": "the-admin-key"}
    command = [sys.executable, "-m", "batchgen", "serve", "--port", str(port), "--state", str(tmp_path / "s"),
               "--admin-key-env", "MY_ADMIN", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                answer = get(base, USAGE, key="the-admin-key", start_time=0, end_time=DAY)
                break
            except urllib.error.URLError:
                assert process.poll() is None and time.monotonic() < deadline, process.stderr
                time.sleep(0.05)
        assert answer.status_code == 200 and answer.json()["object"] == "page"
        assert get(base, USAGE, key=ADMIN, start_time=0, end_time=DAY).status_code == 403
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    command[command.index("MY_ADMIN")] = "NOT_SET_ANYWHERE"
    missing = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode != 0 and "NOT_SET_ANYWHERE" in missing.stderr


def test_costs_are_the_exact_batch_and_standard_prices(tmp_path):
    with running(tmp_path / "s", time_scale=0) as emu:
        batch = run_lines(emu, [chat_line(i, model="gpt-4.1-nano") for i in range(4)])
        sync = sync_chat(emu, model="gpt-4.1-nano")
        _, _, _, _, batch_cost = batch_usage(emu.client, batch)
        sync_cost = get_price("gpt-4.1-nano").cost(sync.usage.prompt_tokens, 0, sync.usage.completion_tokens, False)
        start = day_start(emu.control.now())
        body = pages(emu, COSTS, start_time=start, end_time=start + DAY)[0]
        [result] = body["data"][0]["results"]
        assert result["object"] == "organization.costs.result" and result["amount"]["currency"] == "usd"
        assert result["amount"]["value"] == batch_cost + sync_cost and batch_cost > 0
        items = pages(emu, COSTS, start_time=start, end_time=start + DAY, group_by="line_item")[0]
        assert {r["line_item"]: r["amount"]["value"] for r in items["data"][0]["results"]} == {
            "gpt-4.1-nano, batch": batch_cost, "gpt-4.1-nano, standard": sync_cost}


def test_records_survive_a_restart_and_a_rerun_end_is_not_counted_twice(tmp_path):
    state = tmp_path / "s"
    with running(state, time_scale=0) as emu:
        batch = run_lines(emu, [chat_line(i) for i in range(3)])
        sync_chat(emu)
        start = day_start(batch.completed_at)
        before = pages(emu, USAGE, start_time=start, end_time=start + DAY, group_by="batch")[0]["data"]
    # the end of the batch written again, as after a crash between the usage record and the batch's status
    lines = (state / USAGE_FILE).read_bytes().splitlines(keepends=True)
    assert len(lines) == 2
    (state / USAGE_FILE).write_bytes(b"".join(lines) + lines[0] + b'{"key": "torn')
    with running(state, time_scale=0) as emu:
        after = pages(emu, USAGE, start_time=start, end_time=start + DAY, group_by="batch")[0]["data"]
        assert after == before
        assert {r["batch"]: r["num_model_requests"] for r in after[0]["results"]} == {True: 3, False: 1}
        sync_chat(emu, text="Once more")
        again = pages(emu, USAGE, start_time=start, end_time=start + DAY)[0]["data"][0]["results"][0]
        assert again["num_model_requests"] == 5


def test_a_batch_is_counted_on_the_day_it_ends(tmp_path):
    with running(tmp_path / "s", time_scale=0, line_seconds=1000.0) as emu:
        # tomorrow's midnight: today's may be less than 1500 s away, and the clock only moves forward
        midnight = day_start(emu.control.now()) + 2 * DAY
        emu.control.set_time(midnight - 1500)  # the lines run before midnight and after; the batch ends after
        file_id = emu.client.files.create(file=("in.jsonl", b"".join(
            json.dumps(chat_line(i)).encode() + b"\n" for i in range(3))), purpose="batch").id
        batch = emu.client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
        emu.control.advance(1)
        emu.control.advance(3 * 1000)
        done = emu.control.wait_for(batch.id)
        assert done["status"] == "completed" and done["in_progress_at"] < midnight <= done["completed_at"]
        buckets = pages(emu, USAGE, start_time=midnight - DAY, end_time=midnight + DAY)[0]["data"]
        assert [b["results"][0]["num_model_requests"] if b["results"] else 0 for b in buckets] == [0, 3]


def test_the_adjust_route_plants_a_record(tmp_path):
    with running(tmp_path / "s", time_scale=0) as emu:
        day = datetime.date(2026, 3, 4)
        start = int(datetime.datetime(2026, 3, 4, tzinfo=datetime.timezone.utc).timestamp())
        emu.control.adjust_usage(day.isoformat(), "gpt-4o-mini", input_tokens=1000, cached_tokens=128,
                                 output_tokens=-5, requests=2, cost_usd="0.0100")
        emu.control.adjust_usage(day.isoformat(), "gpt-4o-mini", input_tokens=-100, batch=False, cost_usd="-0.001")
        usage = pages(emu, USAGE, start_time=start, end_time=start + DAY, group_by=["model", "batch"])
        got = {r["batch"]: (r["input_tokens"], r["input_cached_tokens"], r["output_tokens"], r["num_model_requests"])
               for r in usage[0]["data"][0]["results"]}
        assert got == {True: (1000, 128, -5, 2), False: (-100, 0, 0, 0)}
        costs = pages(emu, COSTS, start_time=start, end_time=start + DAY)
        assert costs[0]["data"][0]["results"][0]["amount"]["value"] == Decimal("0.009")
        with pytest.raises(Exception, match="400"):
            emu.control.adjust_usage("March 4", "gpt-4o-mini")
    with running(tmp_path / "s", time_scale=0) as emu:  # persisted like the other records
        again = pages(emu, COSTS, start_time=start, end_time=start + DAY)
        assert again[0]["data"][0]["results"][0]["amount"]["value"] == Decimal("0.009")


def test_upstream_lines_cost_nothing(tmp_path):
    from batchgen.emulator.usage import Pricer

    assert Pricer(free=True).cost("gpt-4o", 1000, 0, 1000, True) == 0
    assert Pricer().cost("no-such-model-anywhere", 1000, 0, 1000, True) == 0
    assert Pricer().cost("gpt-4o", 1_000_000, 0, 0, False) == get_price("gpt-4o").cost(1_000_000, 0, 0, False)


@pytest.mark.parametrize(("value", "text"), [(Decimal("0.0000015"), "0.0000015"), (Decimal("-2"), "-2"),
                                             (Decimal("0E-10"), "0"), (Decimal("1E+2"), "100"),
                                             (Decimal("0.10"), "0.1"), (Decimal("-0.000"), "0")])
def test_amounts_are_plain_exact_json_numbers(value, text):
    assert decimal_json(value) == text and Decimal(json.loads(text, parse_float=Decimal)) == value
