"""What was paid for is kept: an answer cut at max_tokens keeps its complete examples, and an answer of another
shape is reported with its shape. The answers come from a small upstream behind the workspace's emulator
(`executor = "upstream"`), through the real submit and collect path."""

from __future__ import annotations

import itertools
import json
from http.server import BaseHTTPRequestHandler

import pytest
from loopback import loopback_server
from workspaces import FAST, batchgen, fresh_workspace, one_batch_job

from batchgen.ledger import Ledger

_COUNTER = itertools.count()


def example(n: int) -> str:
    return json.dumps({"conversations": [
        {"from": "human", "value": f"Create a task to file expense report number {n}"},
        {"from": "gpt", "value": f"Created task: 'File expense report {n}' | Priority: low"}]})


class Upstream(BaseHTTPRequestHandler):
    """Answers every chat request with five examples: cut after the third (`finish_reason: "length"`), or whole
    under another key than `examples`, as `shape` says."""

    shape = "cut"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (the http.server interface)
        self.rfile.read(int(self.headers["Content-Length"]))
        n = next(_COUNTER) * 10
        if self.shape == "cut":
            text = ('{"examples": [' + ", ".join(example(n + i) for i in range(3))
                    + ', {"conversations": [{"from": "human", "value": "Create a task to pl')
            finish = "length"
        else:
            text, finish = json.dumps({"data": [json.loads(example(n + i)) for i in range(5)]}), "stop"
        body = json.dumps({"id": "chatcmpl-cut", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": finish}],
                           "usage": {"prompt_tokens": 900, "completion_tokens": 300, "total_tokens": 1200}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def collected(tmp_path, shape: str, validate: str = "") -> tuple[dict, list[dict]]:
    """Submit the one-batch Task API job against the shaped upstream and collect its batch; `show --json` and the
    ledger's example rows. `validate`: lines added to the job's [validate] section."""
    handler = type("Shaped", (Upstream,), {"shape": shape})
    with loopback_server(handler) as url:
        config = {**json.loads(FAST), "executor": "upstream", "upstream_url": url}
        workspace, job = fresh_workspace(tmp_path, json.dumps(config)), one_batch_job(tmp_path)
        toml = job / "job.toml"
        toml.write_text(toml.read_text(encoding="utf-8").replace("[validate]\n", "[validate]\n" + validate),
                        encoding="utf-8")
        batchgen(workspace, "submit", str(job), check=True)
        for _ in range(50):
            batchgen(workspace, "collect", "task_api", check=False)
            with Ledger.open(workspace / "ledger.db") as ledger:
                if ledger.scalar("SELECT count(*) FROM batches WHERE collected = 1"):
                    break
        shown = json.loads(batchgen(workspace, "show", "task_api", "--json", check=True).stdout)
        with Ledger.open(workspace / "ledger.db") as ledger:
            rows = ledger.rows("SELECT custom_id, position AS idx, valid, category, reason FROM examples")
    return shown, rows


def test_a_cut_answer_keeps_its_three_complete_examples_and_counts_one_truncated(tmp_path):
    shown, rows = collected(tmp_path, "cut")
    answers = {row["custom_id"] for row in rows}
    assert len(answers) == 55
    for custom_id in answers:
        mine = [row for row in rows if row["custom_id"] == custom_id]
        kept = [row for row in mine if row["idx"] >= 0]
        notes = [row for row in mine if row["idx"] < 0]
        assert len(kept) == 3 and all(row["valid"] for row in kept), mine
        assert [row["category"] for row in notes] == ["truncated"]
    quality = shown["quality"]
    assert (quality["valid"], quality["invalid"]) == (3 * 55, 55)
    assert quality["categories"] == {"truncated": 55}


def test_an_answer_under_another_key_is_kept_and_reported_with_its_shape(tmp_path):
    shown, rows = collected(tmp_path, "data-key")
    assert sum(1 for row in rows if row["idx"] >= 0 and row["valid"]) == 5 * 55
    assert shown["quality"]["categories"] == {"other_shape": 55}
    assert shown["quality"]["reasons"] == {"Other shape: object with key data": 55}  # show names the shape
    notes = {row["reason"] for row in rows if row["idx"] < 0}
    assert notes == {"Other shape: object with key data"}  # the shape, kept with each answer's note


def test_a_known_alternative_key_is_read_as_the_expected_shape(tmp_path):
    shown, rows = collected(tmp_path / "keys", "data-key", validate='examples_keys = ["examples", "data"]\n')
    assert shown["quality"]["valid"] == 5 * 55 and shown["quality"]["invalid"] == 0
    assert all(row["idx"] >= 0 for row in rows)


@pytest.mark.parametrize("keys", ["[]", '[""]', '["data", "data"]', '"data"'])
def test_bad_examples_keys_are_one_line(tmp_path, keys):
    job = one_batch_job(tmp_path)
    toml = job / "job.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("[validate]\n", f"[validate]\nexamples_keys = {keys}\n"),
                    encoding="utf-8")
    done = batchgen(fresh_workspace(tmp_path), "plan", str(job))
    assert done.returncode != 0 and done.stderr.startswith("Error: ") and "examples_keys" in done.stderr
    assert "Traceback" not in done.stderr
