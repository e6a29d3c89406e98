"""Judging result files: in this process, or in a worker process for large files, with the same verdicts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from batchgen.dataset import result_lines as judge
from batchgen.dataset.lineage import example_texts
from batchgen.dataset.near import shingles, sign_texts
from batchgen.dataset.result_lines import judged_lines
from batchgen.dataset.validate import Rules
from batchgen.errors import BatchgenError

RULES = Rules.from_values(patterns=["Created task:", "Error:"])
GOOD = {"conversations": [{"from": "human", "value": "Add a task to call the bank"},
                          {"from": "gpt", "value": "Created task: 'Call the bank' | Priority: medium"}]}
WRONG_ROLES = {"conversations": [{"from": "gpt", "value": "Created task: 'x'"},
                                 {"from": "human", "value": "thanks"}]}
NO_PATTERN = {"conversations": [{"from": "human", "value": "Add a task"}, {"from": "gpt", "value": "Sure!"}]}


def success(custom_id: str, content: str, finish: str = "stop") -> dict:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50,
                      "prompt_tokens_details": {"cached_tokens": 20},
                      "completion_tokens_details": {"reasoning_tokens": 0}}}
    return {"id": "batch_req_1", "custom_id": custom_id, "error": None,
            "response": {"status_code": 200, "request_id": f"req-{custom_id}", "body": body}}


def line(i: int) -> dict:
    """Every kind of line a result file holds, in turn."""
    cid = f"job-{i:06d}"
    unique = json.loads(json.dumps(GOOD).replace("bank", f"bank {i}"))
    kinds = [
        success(cid, json.dumps({"examples": [unique, GOOD, WRONG_ROLES, NO_PATTERN, {"conversations": "x"}]})),
        success(cid, "Here you are:\n```json\n" + json.dumps([unique]) + "\n```"),
        success(cid, "not json at all"),
        success(cid, json.dumps({"examples": [unique]}), finish="length"),
        success(cid, json.dumps({"examples": [{"conversations": [{"from": "human", "value": "Café ☕ über"},
                                                                  {"from": "gpt", "value": "Error: 日本"}]}]})),
        {"id": "x", "custom_id": cid, "error": None,
         "response": {"status_code": 429, "request_id": "r", "body": {"error": {"code": "rate_limit_exceeded",
                                                                                "message": "slow down"}}}},
        {"id": "x", "custom_id": cid, "response": None, "error": {"code": "batch_expired", "message": "expired"}},
    ]
    return kinds[i % len(kinds)]


def write(path: Path, lines: int, corrupt_at: int | None = None) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(1, lines + 1):
            out.write('{"custom_id": "broken", \n' if i == corrupt_at else json.dumps(line(i)) + "\n")
            if i % 500 == 0:
                out.write("\n")  # blank lines are skipped, and do not shift the line numbers
    return path


def judge_children() -> list[int]:
    """Processes of ours that run the judging worker."""
    found = []
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if b"batchgen.dataset.result_lines" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")


def test_the_worker_judges_exactly_as_this_process(tmp_path):
    path = write(tmp_path / "out.jsonl", 2_345)  # several messages, the last one short
    here = list(judged_lines(path, "sharegpt", RULES, parallel=False))
    there = list(judged_lines(path, "sharegpt", RULES, parallel=True))
    assert there == here
    assert len(here) == 2_345
    kinds = {(j[0], j[9][0] if j[0] == "ok" and j[9] else None) for j in here}
    assert kinds == {("ok", None), ("ok", "not_json"), ("ok", "truncated"), ("ok", "other_shape"),
                     ("error", None)}  # the fixture holds answers of other shapes: kept, with a note
    verdicts = {(e[2], e[3]) for j in here if j[0] == "ok" for e in j[10]}
    assert verdicts == {(True, None), (False, "role_order"), (False, "format_pattern"), (False, "schema")}


@needs_proc
def test_large_files_go_to_the_worker_by_default(tmp_path, monkeypatch):
    """A file below PARALLEL_BYTES is judged here; one at it by a worker (more lines than the queue holds, so the
    worker is still running after the first line)."""
    path = write(tmp_path / "out.jsonl", 20_000)
    for threshold, workers in ((path.stat().st_size + 1, 0), (path.stat().st_size, 1)):
        monkeypatch.setattr(judge, "PARALLEL_BYTES", threshold)
        lines = judged_lines(path, "sharegpt", RULES)
        assert next(lines)[0] == "ok"
        assert len(judge_children()) == workers
        assert len(list(lines)) == 20_000 - 1
        assert judge_children() == []


@needs_proc
def test_a_corrupt_line_is_reported_in_place_and_the_worker_stops(tmp_path):
    path = write(tmp_path / "out.jsonl", 20_000, corrupt_at=1_500)
    lines = judged_lines(path, "sharegpt", RULES, parallel=True)
    for judged in lines:
        if judged[0] == "corrupt":
            break
    assert judged[:2] == ("corrupt", 1_502)  # two blank lines before it
    assert judge_children()  # still running ahead ...
    lines.close()  # ... until the caller stops reading
    assert judge_children() == []


def test_a_worker_that_fails_is_one_line(tmp_path):
    with pytest.raises(BatchgenError, match=r"Judging .*missing.jsonl failed: FileNotFoundError"):
        list(judged_lines(tmp_path / "missing.jsonl", "sharegpt", RULES, parallel=True))


@needs_proc
@pytest.mark.parametrize("wait", [0, 1.5], ids=["while-judging", "while-writing"])
def test_a_worker_that_dies_is_one_line(tmp_path, wait):
    """Killed at once, or once it has run ahead until the queue and the pipe are full and blocks in the middle of
    writing a message."""
    path = write(tmp_path / "out.jsonl", 40_000)
    lines = judged_lines(path, "sharegpt", RULES, parallel=True)
    next(lines)
    time.sleep(wait)
    (pid,) = judge_children()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(BatchgenError, match=r"worker process ended early \(exit code -9\)"):
        for _ in lines:
            pass
    assert judge_children() == []


def test_files_in_the_working_directory_do_not_shadow_the_workers_imports(tmp_path, monkeypatch):
    path = write(tmp_path / "out.jsonl", 20)
    here = tmp_path / "cwd"
    here.mkdir()
    for module in ("queue", "pickle", "orjson", "batchgen"):
        (here / f"{module}.py").write_text("raise ImportError('shadowed')\n", encoding="utf-8")
    monkeypatch.chdir(here)
    assert list(judged_lines(path, "sharegpt", RULES, parallel=True)) == \
        list(judged_lines(path, "sharegpt", RULES, parallel=False))


def test_rules_travel_to_the_worker_without_their_caches():
    import pickle

    rules = Rules.from_values(patterns=["a"], regexes=["^b"], forbidden=["c+"], min_turns=1, max_turns=4,
                              max_chars=99, dedupe="normalized", reject_seed_copies=False)
    judge.judge_examples([GOOD], "sharegpt", rules)  # fills the accepter cache (a closure)
    copy = pickle.loads(pickle.dumps(rules))
    assert copy == rules and copy.regexes[0].pattern == "^b" and copy._any_pattern is not None


def test_the_worker_signs_the_valid_examples_of_each_first_line_for_near_dedupe(tmp_path):
    path = write(tmp_path / "out.jsonl", 2_345)
    with open(path, "a", encoding="utf-8") as out:  # a custom_id again, with other examples: its first line counts
        out.write(json.dumps(success("job-000001", json.dumps({"examples": [GOOD, GOOD]}))) + "\n")
    here = list(judged_lines(path, "sharegpt", RULES, parallel=False, near=(0.8, 2)))
    there = list(judged_lines(path, "sharegpt", RULES, parallel=True, near=(0.8, 2)))
    assert [j for j in there if j[0] != "signed"] == here  # in this process nothing is signed
    signed = [j for j in there if j[0] == "signed"]
    assert len(signed) == 3  # one part a message
    keys = [key for part in signed for key in part[1]]
    firsts = {j[1]: j for j in reversed(here) if j[0] in ("ok", "error")}
    expected = {f"{cid}#{position}": example[0] for cid, j in firsts.items() if j[0] == "ok"
                for position, example in enumerate(j[10]) if example[2] and example[0] is not None}
    assert sorted(keys) == sorted(expected) and len(keys) == len(set(keys)) > 1_000
    for _, part_keys, part in signed:
        for i in range(0, len(part_keys), 97):
            content = json.loads(expected[part_keys[i]])
            assert part.shingled.set(i) == shingles(example_texts(content, "sharegpt"))
        assert part.sigs.tolist() == sign_texts([example_texts(json.loads(expected[key]), "sharegpt")
                                                 for key in part_keys], 0.8, 2).sigs.tolist()
