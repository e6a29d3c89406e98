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
