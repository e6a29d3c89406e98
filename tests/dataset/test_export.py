from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchgen.dataset.export import (
    PROVENANCE_KEY,
    ExportRecord,
    Provenance,
    convert_example,
    dataset_filename,
    export_dataset,
    read_dataset,
    sidecar_path,
)
from batchgen.dataset.training_file import TrainingFileCheck
from batchgen.dataset.validate import Rules, validate_example
from batchgen.errors import BatchgenError
from batchgen.recipe.fine_tuning import example_tokens, training_context
from batchgen.recipe.formats import ChatMLExample, parse_example

PATTERNS = ["Created task:", "Updated task:", "Completed task:", "Deleted task:", "Error:", "tasks found"]
RULES = Rules.from_values(patterns=PATTERNS)

SINGLE = {"conversations": [
    {"from": "human", "value": "Crée une tâche « budget » pour vendredi 予算 🚀"},
    {"from": "gpt", "value": "Created task: 'Budget 予算' | Priority: medium | Due: 2025-01-17 (Friday)"},
]}
WITH_SYSTEM = {"conversations": [
    {"from": "system", "value": "You manage tasks."},
    {"from": "human", "value": "Delete the gym task"},
    {"from": "gpt", "value": "Deleted task: 'Gym'"},
]}
MULTI = {"conversations": [
    {"from": "human", "value": "Add milk"}, {"from": "gpt", "value": "Created task: 'Milk'"},
    {"from": "human", "value": "Now mark it done"}, {"from": "gpt", "value": "Completed task: 'Milk'"},
]}


def record(example: dict[str, object], n: int, fmt: str = "sharegpt") -> ExportRecord:
    return ExportRecord(example, fmt, Provenance(
        custom_id=f"task_api-s1-a1-{n:06d}", job="task_api", stage="main", position=n % 3, attempt=1,
        batch_id="batch_abc", model="gpt-4o-mini", cell={"operation": "create", "style": "casual"},
        content_hash=f"{n:032x}"))


def records() -> list[ExportRecord]:
    return [record(SINGLE, 0), record(MULTI, 1), record(WITH_SYSTEM, 2)]


def lines_of(path: Path) -> list[dict[str, object]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def test_sharegpt_round_trip_inline_provenance(tmp_path: Path) -> None:
    target = tmp_path / "task_api.sharegpt.jsonl"
    result = export_dataset(records(), target, "sharegpt")
    assert (result.written, result.skipped_total, result.provenance) == (3, 0, "inline")
    assert result.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    assert str(result) == str(target)
    raw = target.read_bytes().decode("utf-8")
    assert "予算 🚀" in raw and "\\u" not in raw  # UTF-8, not ASCII-escaped
    for line, original in zip(lines_of(target), [SINGLE, MULTI, WITH_SYSTEM], strict=True):
        provenance = line.pop(PROVENANCE_KEY)
        assert line == original
        parse_example(line, "sharegpt")
        assert validate_example(line, "sharegpt", RULES).valid
        assert set(provenance) == {"job", "stage", "custom_id", "position", "attempt", "batch_id", "model", "cell",
                                   "content_hash", "parent", "root"}
        assert provenance["batch_id"] == "batch_abc" and provenance["cell"] == {"operation": "create",
                                                                                "style": "casual"}
    assert list(lines_of(target)[0])[-1] == PROVENANCE_KEY  # after the example's own keys


def test_chatml_lines_are_fine_tuning_messages(tmp_path: Path) -> None:
    target = tmp_path / "ft.jsonl"
    result = export_dataset(records(), target, "chatml", provenance="none")
    assert result.written == 3 and result.sidecar_path is None
    for line in lines_of(target):
        assert list(line) == ["messages"]
        ChatMLExample.model_validate(line)
        for message in line["messages"]:  # type: ignore[attr-defined]
            assert set(message) == {"role", "content"} and message["role"] in {"system", "user", "assistant"}
    assert lines_of(target)[2]["messages"][0] == {"role": "system", "content": "You manage tasks."}


def test_sidecar_provenance_is_aligned_by_line(tmp_path: Path) -> None:
    target = tmp_path / "ft.chatml.jsonl"
    result = export_dataset(records(), target, "chatml", provenance="sidecar")
    side = sidecar_path(target)
    assert result.sidecar_path == side and side.name == "ft.chatml.jsonl.provenance.jsonl"
    assert result.sidecar_sha256 == hashlib.sha256(side.read_bytes()).hexdigest()
    examples, provenance = lines_of(target), lines_of(side)
    assert len(examples) == len(provenance) == 3
    assert all(PROVENANCE_KEY not in line for line in examples)
    assert [p["line"] for p in provenance] == [1, 2, 3]
    assert [p["custom_id"] for p in provenance] == [r.provenance.custom_id for r in records()]


def test_alpaca_skips_multi_turn_with_a_reason(tmp_path: Path) -> None:
    target = tmp_path / "a.jsonl"
    result = export_dataset(records(), target, "alpaca")
    assert result.written == 2 and result.skipped == {"not_representable": 1}
    assert result.samples == [("task_api-s1-a1-000001",
                               "Alpaca holds one instruction and one answer; this example has 4 non-system turns")]
    lines = lines_of(target)
    assert [line[PROVENANCE_KEY]["custom_id"] for line in lines] == ["task_api-s1-a1-000000",  # type: ignore[index]
                                                                     "task_api-s1-a1-000002"]
    for line in lines:
        line.pop(PROVENANCE_KEY)
        parse_example(line, "alpaca")
    assert lines[0] == {"instruction": SINGLE["conversations"][0]["value"], "input": "",  # type: ignore[index]
                        "output": SINGLE["conversations"][1]["value"]}  # type: ignore[index]


def test_alpaca_to_alpaca_keeps_input_separate() -> None:
    example = {"instruction": "List tasks", "input": "status=open", "output": "3 tasks found"}
    assert convert_example(example, "alpaca", "alpaca") == example
    chat = convert_example(example, "alpaca", "chatml")
    assert chat["messages"][0] == {"role": "user", "content": "List tasks\n\nstatus=open"}


def test_a_record_that_does_not_parse_is_skipped_not_fatal(tmp_path: Path) -> None:
    broken = record({"conversations": [{"from": "robot", "value": "x"}]}, 9)
    result = export_dataset([broken, record(SINGLE, 0)], tmp_path / "x.jsonl", "sharegpt")
    assert result.written == 1 and result.skipped == {"schema": 1}
    assert "conversations.0.from" in result.samples[0][1]


def test_failure_mid_iteration_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "d.jsonl"

    def exploding() -> Iterator[ExportRecord]:
        yield record(SINGLE, 0)
        yield record(MULTI, 1)
        raise RuntimeError("ledger went away")

    with pytest.raises(RuntimeError, match="ledger went away"):
        export_dataset(exploding(), target, "sharegpt", provenance="sidecar")
    assert sorted(os.listdir(tmp_path)) == []


def test_failure_keeps_the_previous_dataset(tmp_path: Path) -> None:
    target = tmp_path / "d.jsonl"
    export_dataset([record(SINGLE, 0)], target, "sharegpt")
    before = target.read_bytes()

    def exploding() -> Iterator[ExportRecord]:
        yield record(MULTI, 1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_dataset(exploding(), target, "sharegpt")
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["d.jsonl"]


def test_streaming_consumes_records_lazily(tmp_path: Path) -> None:
    seen: list[int] = []

    def generate() -> Iterator[ExportRecord]:
        for n in range(1000):
            seen.append(n)
            yield record(SINGLE, n)

    result = export_dataset(generate(), tmp_path / "big.jsonl", "chatml")
    assert result.written == 1000 and len(seen) == 1000
    assert sum(1 for _ in read_dataset(tmp_path / "big.jsonl")) == 1000


def test_empty_dataset_and_permissions(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "empty.jsonl"
    result = export_dataset([], target, "sharegpt")
    assert result.written == 0 and target.read_bytes() == b""
    assert result.sha256 == hashlib.sha256(b"").hexdigest()
    assert target.stat().st_mode & 0o777 == 0o644


def test_read_dataset_splits_provenance(tmp_path: Path) -> None:
    export_dataset(records(), tmp_path / "d.jsonl", "sharegpt")
    pairs = list(read_dataset(tmp_path / "d.jsonl"))
    assert [example for example, _ in pairs] == [SINGLE, MULTI, WITH_SYSTEM]
    assert all(provenance and provenance["job"] == "task_api" for _, provenance in pairs)
    export_dataset(records(), tmp_path / "bare.jsonl", "sharegpt", provenance="none")
    assert all(provenance is None for _, provenance in read_dataset(tmp_path / "bare.jsonl"))


@pytest.mark.parametrize("fmt, provenance, message", [
    ("jsonl", "inline", "Unknown dataset format 'jsonl'"),
    ("chatml", "header", "Unknown provenance mode 'header'"),
])
def test_bad_options(tmp_path: Path, fmt: str, provenance: str, message: str) -> None:
    with pytest.raises(BatchgenError, match=message):
        export_dataset([], tmp_path / "x.jsonl", fmt, provenance=provenance)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_folder_is_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(BatchgenError, match="Cannot write dataset .*ro/x.jsonl"):
            export_dataset([record(SINGLE, 0)], folder / "x.jsonl", "sharegpt")
    finally:
        folder.chmod(0o700)


def test_target_that_is_a_directory_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(BatchgenError, match="Cannot write dataset"):
        export_dataset([record(SINGLE, 0)], tmp_path / "taken", "sharegpt")
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_dataset_filename() -> None:
    assert dataset_filename("task_api", "chatml") == "task_api.chatml.jsonl"



def test_a_fifo_is_written_through_never_replaced(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = export_dataset(records(), fifo, "sharegpt", provenance="none")
    reader.join(timeout=10)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)  # still the FIFO
    assert received[0].count(b"\n") == result.written == len(records())
    with pytest.raises(BatchgenError, match="not a regular file, so it has no sidecar"):
        export_dataset(records(), fifo, "sharegpt", provenance="sidecar")


def test_a_symlink_keeps_pointing_at_the_file_it_names(tmp_path: Path) -> None:
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("old\n")
    link.symlink_to(real.name)
    export_dataset(records(), link, "sharegpt")
    assert link.is_symlink() and os.readlink(link) == real.name
    assert len(lines_of(real)) == len(records())


def test_dev_stdout_is_written_through_not_replaced() -> None:
    """As root, renaming a temporary file over /dev/stdout would replace the device for everyone."""
    import subprocess
    import sys

    before = os.lstat("/dev/stdout")
    code = ("from batchgen.dataset.export import ExportRecord, Provenance, export_dataset\n"
            "p = Provenance(custom_id='c', job='j', stage='main', position=0, attempt=1, batch_id='b', model='m', "
            "cell={}, content_hash=None)\n"
            "rows = [ExportRecord({'conversations': [{'from': 'human', 'value': f'q{n}'}, "
            "{'from': 'gpt', 'value': 'a'}]}, 'sharegpt', p) for n in range(3)]\n"
            "export_dataset(rows, '/dev/stdout', 'chatml', provenance='none')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["messages"][0]["content"] for line in done.stdout.splitlines()] == ["q0", "q1", "q2"]
    after = os.lstat("/dev/stdout")
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


def test_chatml_keeps_its_provenance_beside_it_by_default(tmp_path: Path) -> None:
    """Fine-tuning takes documented keys only: a ChatML line holds `messages` and nothing else unless asked."""
    result = export_dataset(records(), tmp_path / "ft.jsonl", "chatml")
    assert result.provenance == "sidecar" and result.sidecar_path == sidecar_path(tmp_path / "ft.jsonl")
    assert all(list(line) == ["messages"] for line in lines_of(tmp_path / "ft.jsonl"))
    assert export_dataset(records(), tmp_path / "share.jsonl", "sharegpt").provenance == "inline"
    assert export_dataset(records(), "/dev/null", "chatml").provenance == "none"  # a stream has no sidecar


def test_chatml_leaves_out_what_fine_tuning_would_refuse_or_cut(tmp_path: Path) -> None:
    model = "gpt-3.5-turbo-0613"  # a training context of 4,096 tokens
    long = {"conversations": [{"from": "human", "value": "Add these: " + "milk " * 5000},
                              {"from": "gpt", "value": "Created task: 'Milk'"}]}
    no_answer = {"conversations": [{"from": "human", "value": "Anyone there?"}]}
    check = TrainingFileCheck(model, training_context(model))
    result = export_dataset([record(SINGLE, 0), record(long, 1), record(no_answer, 2), record(MULTI, 3)],
                            tmp_path / "ft.jsonl", "chatml", training=check)
    assert result.written == 2 and result.skipped == {"over_context": 1, "not_fine_tunable": 1}
    assert result.samples[0][0] == "task_api-s1-a1-000001"
    assert re.fullmatch(r"5,0\d\d tokens, over the 4,096 of gpt-3.5-turbo-0613's fine-tuning context "
                        r"\(OpenAI would truncate it\)", result.samples[0][1])
    assert result.samples[1] == ("task_api-s1-a1-000002",
                                 "no assistant message: fine-tuning has nothing to learn from it")
    counted = [example_tokens(line["messages"], model) for line in lines_of(tmp_path / "ft.jsonl")]  # type: ignore
    figures = result.to_dict()["fine_tuning"]
    assert figures["tokens"] == {"total": sum(counted), "min": min(counted), "median": max(counted),
                                 "max": max(counted)}
    assert figures["context_tokens"] == 4096 and figures["snapshot"] == model
    assert result.warnings == ["2 example(s): OpenAI's fine-tuning takes a training file of at least 10"]


def test_ten_examples_are_enough_and_an_unknown_model_is_said(tmp_path: Path) -> None:
    check = TrainingFileCheck("gpt-4o-mini", training_context("gpt-4o-mini"))
    result = export_dataset([record(SINGLE, n) for n in range(10)], tmp_path / "ft.jsonl", "chatml", training=check)
    assert result.written == 10 and result.warnings == []
    unknown = export_dataset([record(SINGLE, n) for n in range(10)], tmp_path / "g.jsonl", "chatml",
                             training=TrainingFileCheck("gpt-5", None))
    assert unknown.written == 10 and len(unknown.warnings) == 1
    assert unknown.warnings[0].startswith("No fine-tuning context known for gpt-5, so no example was checked")
    assert export_dataset(records(), tmp_path / "s.jsonl", "sharegpt", training=check).training is None
