"""Exports ready for what reads them, as a user makes them: both shipped jobs run on the embedded emulator, then
`batchgen export` in its own process. The ChatML file passes a check of OpenAI's chat fine-tuning format written
after OpenAI's own validation script; every format loads with the Hugging Face `datasets` JSON loader, and from its
folder through the card's front matter; the card says what the ledger says."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from openai_format import check_file
from workspaces import EVOL, TASK_API, batchgen, fresh_workspace

from batchgen.money import format_usd

JOBS = {"task_api": TASK_API, "evol_task_api": EVOL}
COLUMNS = {"sharegpt": {"conversations", "_provenance"}, "alpaca": {"instruction", "input", "output", "_provenance"},
           "chatml": {"messages"}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace in which both shipped jobs ran to the end."""
    workspace = fresh_workspace(tmp_path_factory.mktemp("exports"))
    for job in JOBS.values():
        batchgen(workspace, "run", str(job), "--quiet", check=True)
    return workspace


@pytest.fixture(scope="module")
def hf_datasets(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The Hugging Face `datasets` package, offline and with its caches in a folder of the test's."""
    home = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}.items():
            patch.setenv(name, value)
        import datasets

        yield datasets


def export(workspace: Path, job: str, fmt: str, target: Path, *args: str) -> dict:  # type: ignore[type-arg]
    done = batchgen(workspace, "export", job, "--format", fmt, "-o", str(target), "--json", *args, check=True)
    return json.loads(done.stdout)


def lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def front_matter(card: Path) -> dict:  # type: ignore[type-arg]
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:].partition("\n---\n")[0])


@pytest.mark.parametrize("job", JOBS)
def test_the_chatml_export_is_an_openai_fine_tuning_file(finished: Path, tmp_path: Path, job: str) -> None:
    target = tmp_path / "train.jsonl"
    report = export(finished, job, "chatml", target)
    checked = check_file(target, context_tokens=65_536)
    assert checked.passes, (checked.errors, checked.too_long, checked.examples)
    assert checked.examples == report["written"] == 500 and report["warnings"] == []
    assert all(list(line) == ["messages"] for line in lines(target))  # no _provenance: it is beside the file
    provenance = lines(Path(f"{target}.provenance.jsonl"))
    assert [p["line"] for p in provenance] == list(range(1, 501)) and {p["job"] for p in provenance} == {job}
    tokens = report["fine_tuning"]["tokens"]  # batchgen counts each example as OpenAI's script does
    assert (tokens["total"], tokens["max"]) == (sum(checked.tokens), max(checked.tokens))
    assert report["fine_tuning"]["snapshot"] == "gpt-4o-mini-2024-07-18"
    assert report["fine_tuning"]["context_tokens"] == 65_536


@pytest.mark.parametrize("fmt", COLUMNS)
@pytest.mark.parametrize("job", JOBS)
def test_each_export_loads_with_the_hugging_face_json_loader(finished: Path, tmp_path: Path, hf_datasets, job: str,
                                                             fmt: str) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / fmt
    report = export(finished, job, fmt, folder / "train.jsonl")
    loaded = hf_datasets.load_dataset("json", data_files=str(folder / "train.jsonl"), split="train",
                                      cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == report["written"] > 0 and set(loaded.column_names) == COLUMNS[fmt]
    assert report["card_path"] == str(folder / "README.md")
    from_card = hf_datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache-card"))  # its configs
    assert list(from_card) == ["train"] and from_card["train"].num_rows == report["written"]
    assert from_card["train"].column_names == loaded.column_names  # the sidecar beside it stays out


def test_the_card_says_what_the_ledger_says(finished: Path, tmp_path: Path) -> None:
    target = tmp_path / "evol.jsonl"
    report = export(finished, "evol_task_api", "chatml", target)
    card = Path(report["card_path"])
    meta = front_matter(card)
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "evol.jsonl"}]}]
    assert meta["batchgen"]["examples"] == 500 and meta["size_categories"] == ["n<1K"]
    assert meta["batchgen"]["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert meta["batchgen"]["provenance"] == "sidecar"
    shown = json.loads(batchgen(finished, "show", "evol_task_api", "--json", check=True).stdout)
    text = card.read_text(encoding="utf-8")
    for stage in ("simple", "moderate", "complex", "edge\\_case"):
        assert f"| {stage} | 125 | " in text and text.count(f"| {stage} | operation=") == 5
    per_stage = Counter(p["stage"] for p in lines(Path(f"{target}.provenance.jsonl")))
    assert per_stage == {"simple": 125, "moderate": 125, "complex": 125, "edge_case": 125}
    spent = format_usd(Decimal(shown["spent_usd"]))
    assert f"| spent (batch price, every stage and attempt) | {spent} |" in text
    assert f"- Valid: {shown['quality']['valid']} of {shown['quality']['total']} generated" in text
    assert "**Simulated.**" in text  # the embedded emulator's answers are not a model's


def test_the_workspace_datasets_folder_has_a_card_per_dataset(finished: Path) -> None:
    folder = finished / "datasets"
    assert sorted(p.name for p in folder.iterdir()) == [
        "evol_task_api.sharegpt.README.md", "evol_task_api.sharegpt.jsonl",
        "task_api.sharegpt.README.md", "task_api.sharegpt.jsonl"]
    assert front_matter(folder / "task_api.sharegpt.README.md")["batchgen"]["dataset"] == "task_api.sharegpt.jsonl"


def test_fewer_than_ten_examples_warn_and_a_model_that_cannot_be_checked_is_refused(tmp_path: Path) -> None:
    job = tmp_path / "jobs" / "tiny"
    shutil.copytree(TASK_API, job)
    toml = job / "job.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('name = "task_api"', 'name = "tiny"')
                    .replace("target = 500", "target = 5"), encoding="utf-8")
    workspace = fresh_workspace(tmp_path)
    batchgen(workspace, "run", str(job), "--quiet", check=True)
    done = batchgen(workspace, "export", "tiny", "--format", "chatml", "-o", str(tmp_path / "out" / "t.jsonl"),
                    check=True)
    assert done.stderr == "Warning: 5 example(s): OpenAI's fine-tuning takes a training file of at least 10\n"
    assert "OpenAI takes at least 10 examples" in (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    refused = batchgen(workspace, "export", "tiny", "--format", "chatml", "--fine-tune-model", "gpt-5",
                       "-o", str(tmp_path / "out" / "t.jsonl"))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("Error: No fine-tuning context known for 'gpt-5'; name one of gpt-4o, ")
    assert len(refused.stderr.splitlines()) == 1
    wrong = batchgen(workspace, "export", "tiny", "--fine-tune-model", "gpt-4o-mini", "-o", str(tmp_path / "x.jsonl"))
    assert wrong.returncode == 1 and wrong.stderr == ("Error: --fine-tune-model checks a ChatML file; this export "
                                                      "is sharegpt: add --format chatml\n")
    assert not (tmp_path / "x.jsonl").exists()


def test_the_format_check_finds_what_openai_refuses(tmp_path: Path) -> None:
    """The check itself: each kind of line OpenAI's script flags is flagged, under the script's name."""
    user, answer = {"role": "user", "content": "Add milk"}, {"role": "assistant", "content": "Created task: 'Milk'"}
    planted = {
        "unrecognized_key": {"messages": [user, answer], "_provenance": {"job": "x"}},
        "message_unrecognized_key": {"messages": [user, {**answer, "from": "gpt"}]},
        "unrecognized_role": {"messages": [{"role": "human", "content": "Add milk"}, answer]},
        "missing_content": {"messages": [user, {"role": "assistant", "content": ""}]},
        "example_missing_assistant_message": {"messages": [user]},
        "bad_weight": {"messages": [{**user, "weight": 1}, answer]},
        "missing_messages_list": {"conversations": [user, answer]},  # and a key that is not documented
    }
    good = [{"messages": [user, answer]}] * 10  # 19 tokens each
    too_long = {"messages": [{"role": "user", "content": "Add milk " * 20}, answer]}
    path = tmp_path / "ft.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in [*planted.values(), too_long, *good]),
                    encoding="utf-8")
    checked = check_file(path, context_tokens=25)
    assert dict(checked.errors) == {name: 1 for name in planted} | {"unrecognized_key": 2}
    assert checked.too_long == 1 and not checked.passes
    path.write_text("".join(json.dumps(line) + "\n" for line in good), encoding="utf-8")
    assert check_file(path, context_tokens=19).passes and not check_file(path, context_tokens=18).passes
    path.write_text("".join(json.dumps(line) + "\n" for line in good[:9]), encoding="utf-8")
    assert not check_file(path, context_tokens=25).passes  # under OpenAI's minimum of 10
