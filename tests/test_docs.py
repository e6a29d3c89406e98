"""Every command has help text and appears in the README; every shipped job loads."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from batchgen.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(all_commands(command, path))
    return found


COMMANDS = all_commands()


def test_the_cli_has_the_commands_the_issues_name():
    names = {" ".join(c) for c in COMMANDS}
    assert {"run", "submit", "status", "collect", "tick", "show", "export", "cancel", "jobs list", "ledger path",
            "ledger status", "ledger backup", "plan", "compile", "init", "serve"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output
    command = cli
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    assert (command.help or "").strip(), f"batchgen {' '.join(path)} has no help text"


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_is_in_the_readme(path):
    name = " ".join(path)
    if len(path) == 1 and isinstance(cli.commands[path[0]], click.Group):
        assert f"batchgen {name} " in README
        return
    assert f"batchgen {name}" in README, f"'batchgen {name}' is not documented in README.md"


def test_readme_shows_the_two_setup_commands():
    assert "pip install -e .\nbatchgen run jobs/task_api" in README
    assert "pip install -e '.[test]' && pytest" in README
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -e '.[test]' && pytest" in ci
