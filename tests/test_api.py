"""The public Python API: `batchgen.__all__` is sorted, every name in it resolves, and the README's Python example
uses only those names and runs."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import batchgen

ROOT = Path(__file__).resolve().parent
while not (ROOT / "pyproject.toml").exists():
    ROOT = ROOT.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert batchgen.__all__ == sorted(batchgen.__all__)
    assert set(batchgen.__all__) == {*batchgen._EXPORTS, "__version__"}
    for name in batchgen.__all__:
        assert getattr(batchgen, name) is not None, name
    assert set(dir(batchgen)) >= set(batchgen.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    assert not hasattr(batchgen, "scheduler")


def test_the_readme_example_imports_only_the_public_names() -> None:
    tree = ast.parse(readme_example())
    imported = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom | ast.Import)]
    names = {alias.name for node in imported if isinstance(node, ast.ImportFrom) and node.module == "batchgen"
             for alias in node.names}
    assert names and names <= set(batchgen.__all__)
    others = [node.module for node in imported if isinstance(node, ast.ImportFrom)
              and node.module not in ("batchgen", "pathlib")]
    assert others == [], "the example imports batchgen's private modules"


def test_the_readme_example_runs(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "jobs" / "task_api", tmp_path / "jobs" / "task_api")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BATCHGEN_WORKSPACE", None)
    done = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "within budget" in done.stdout
    assert (tmp_path / "task_api.chatml.jsonl").read_text().count("\n") == 500
