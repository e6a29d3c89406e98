"""Bad input gets one `Error:` line and exit status 1 (2 for a bad option), and leaves nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from workspaces import TASK_API

from batchgen.cli import cli
from batchgen.recipe.pricing import clear_cache


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize("model", ['gpt"4o', "gpt-4o\nname = 'x'", "no-such-model"])
def test_init_refuses_a_model_it_cannot_write_or_plan(model: str, tmp_path: Path) -> None:
    code, output = invoke("init", "job", "--dir", str(tmp_path), "--model", model)
    assert code == 1 and output.startswith(f"Error: Model {model!r}") and output.count("\n") == 1
    assert not (tmp_path / "job").exists()


def test_a_price_file_that_is_a_directory(tmp_path: Path) -> None:
    clear_cache()
    code, output = invoke("plan", str(TASK_API), env={"BATCHGEN_PRICES": str(tmp_path)})
    clear_cache()
    assert code == 1 and output == f"Error: Price file {tmp_path} is a directory; BATCHGEN_PRICES names a TOML file\n"


def test_a_workspace_lock_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "ws" / "lock").mkdir(parents=True)
    code, output = invoke("run", str(TASK_API), "--workspace", str(tmp_path / "ws"))
    assert code == 1
    assert output == (f"Error: Cannot open the workspace lock {tmp_path / 'ws' / 'lock'}: Is a directory; remove it "
                      "if it is not a file batchgen made\n")
    assert not (tmp_path / "ws" / "ledger.db").exists()  # nothing was started


@pytest.mark.parametrize(("args", "option"), [(("jobs", "list", "--fmt", "bogus"), "--fmt"),
                                              (("status", "--watch", "--interval", "-1"), "--interval")])
def test_a_bad_option_value_is_refused(args: tuple[str, ...], option: str) -> None:
    code, output = invoke(*args)
    assert code == 2 and f"Invalid value for '{option}'" in output


def job_copy(tmp_path: Path) -> Path:
    job = tmp_path / "task_api"
    shutil.copytree(TASK_API, job)
    return job


@pytest.mark.parametrize("name", ["job.toml", "seeds.jsonl", "prompt.j2"])
def test_a_job_file_that_is_not_utf8(name: str, tmp_path: Path) -> None:
    job = job_copy(tmp_path)
    lines = (job / name).read_bytes().count(b"\n")
    with (job / name).open("ab") as handle:
        handle.write(b"\xff\n")
    code, output = invoke("plan", str(job))
    assert code == 1
    assert output.startswith(f"Error: {job / name} line {lines + 1}: not UTF-8 text (byte ")
    assert output.endswith("); save the file as UTF-8\n")


def test_a_template_that_fails_while_rendering_one_request(tmp_path: Path) -> None:
    job = job_copy(tmp_path)
    template = job / "prompt.j2"
    lines = template.read_text().count("\n")
    with template.open("a") as handle:
        handle.write("{% if index == 7 %}{{ 1/0 }}{% endif %}\n")
    for args in (("plan", str(job)), ("compile", str(job), "--workspace", str(tmp_path / "ws"))):
        code, output = invoke(*args)
        assert code == 1
        assert output == (f"Error: {template} line {lines + 1} (rendering request 7): ZeroDivisionError: "
                          "division by zero\n")
    assert [p for p in (tmp_path / "ws").rglob("*") if p.is_file()] == []  # no shard left half-written


def job_with(tmp_path: Path, old: str, new: str) -> Path:
    job = job_copy(tmp_path)
    text = (job / "job.toml").read_text()
    assert old in text
    (job / "job.toml").write_text(text.replace(old, new, 1))
    return job


@pytest.mark.parametrize("command", ["plan", "compile", "submit", "run"])
def test_max_tokens_above_the_models_output_limit(command: str, tmp_path: Path) -> None:
    job = job_with(tmp_path, "max_tokens = 2000", "max_tokens = 50000")
    line = (job / "job.toml").read_text().splitlines().index("max_tokens = 50000") + 1
    args = [command, str(job)] + ([] if command == "plan" else ["--workspace", str(tmp_path / "ws")])
    code, output = invoke(*args)
    assert code == 1
    assert output == (f"Error: {job / 'job.toml'} line {line}: prompt.max_tokens = 50000 is above gpt-4o-mini's "
                      "output limit of 16,384 tokens; lower it to 16,384 or less\n")
    assert [p for p in (tmp_path / "ws").rglob("shard-*") if p.is_file()] == []  # refused before compiling


def test_max_completion_tokens_above_the_limit_of_a_stage(tmp_path: Path) -> None:
    """A reasoning model gets max_completion_tokens; a stage's own max_tokens is checked like the job's."""
    job = job_with(tmp_path, 'model = "gpt-4o-mini"', 'model = "o4-mini-2025-04-16"')
    with (job / "job.toml").open("a") as handle:
        handle.write('\n[[stages]]\nname = "main"\nmax_tokens = 100001\n')
    code, output = invoke("plan", str(job))
    line = (job / "job.toml").read_text().splitlines().index("max_tokens = 100001") + 1
    assert code == 1
    assert output == (f"Error: {job / 'job.toml'} line {line}: stages.main.max_tokens = 100001 (sent as "
                      "max_completion_tokens) is above o4-mini-2025-04-16 (o4-mini)'s output limit of 100,000 "
                      "tokens; lower it to 100,000 or less\n")


def test_a_target_beyond_any_sane_job(tmp_path: Path) -> None:
    job = job_with(tmp_path, "target = 500 ", "target = 100_000_000 ")
    line = next(n for n, text in enumerate((job / "job.toml").read_text().splitlines(), 1) if text.startswith("target"))
    for args in (("plan", str(job)), ("compile", str(job), "--workspace", str(tmp_path / "ws"))):
        code, output = invoke(*args)
        assert code == 1
        assert output == (f"Error: {job / 'job.toml'} line {line}: target = 100,000,000 needs 11,000,000 requests, "
                          "more than the 5,000,000 one job may plan (100 full batches of 50,000, the Batch API's "
                          "most); lower the target, raise examples_per_request, or split the job\n")
    assert not (tmp_path / "ws").exists()
