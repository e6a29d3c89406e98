"""The import rule of docs/architecture.md: imports point down the layers, no import circles, the emulator stands
apart, every SQL statement lives in batchgen/ledger/. The source is parsed with `ast`, never imported; each check takes
the folder that holds batchgen/ and returns one line per problem, so a test can plant violations in a fake tree.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from pathlib import Path
from typing import NamedTuple

import pytest

RANK = {"base": 0, "recipe": 1, "ledger": 2, "dataset": 3, "run": 4, "shell": 5}  # a module imports at or below
SHELL = {"batchgen", "batchgen.__main__", "batchgen.cli", "batchgen.output", "batchgen.progress"}
BASE = {"batchgen._lazy", "batchgen._version", "batchgen.money", "batchgen.errors", "batchgen.crashpoints",
        "batchgen.disk", "batchgen.cpus"}
EMULATOR_MAY_IMPORT = {"batchgen.recipe.tokens", "batchgen.recipe.pricing"}
MAY_IMPORT_EMULATOR = SHELL | {"batchgen.run.client"}
SQL_WORDS = "SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|WITH|REPLACE|VACUUM|BEGIN|COMMIT|ROLLBACK"
SQL_START = re.compile(rf"\s*({SQL_WORDS})\s")
SQL_CALLS = {"execute", "executemany", "executescript"}


class Import(NamedTuple):
    where: tuple[str, int]  # file, line
    source: str  # the importing module
    target: str  # the batchgen module it names
    text: str

    def __str__(self) -> str:
        return f"{self.where[0]}:{self.where[1]}: {self.text}"


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every module under batchgen/ (a package's __init__.py goes by the package's name)."""
    found = {}
    for path in sorted((root / "batchgen").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer(module: str) -> str | None:
    part = (module.split(".") + [""])[1]
    if module in SHELL or module in BASE:
        return "shell" if module in SHELL else "base"
    return part if part in ("run", "dataset", "ledger", "recipe", "emulator") else None


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imports(root: Path) -> list[Import]:
    """Every import of a batchgen module by another: top level, inside functions, under `if TYPE_CHECKING:`.
    `from batchgen.recipe import formats` names batchgen.recipe.formats; `from batchgen.ledger import Ledger` names
    the package's __init__, batchgen.ledger."""
    known, found = modules(root), []
    for name, path in known.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.Import):
                named = [(alias.name, f"import {alias.name}") for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `from . import x`, `from ..ledger.base import Store`
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                written = "." * node.level + (node.module or "")
                named = [(f"{base}.{a.name}", f"from {written} import {a.name}") for a in node.names]
            else:
                continue
            for dotted, text in named:  # the longest prefix that is a batchgen module (None: not batchgen)
                parts = dotted.split(".")
                target = next((m for m in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if m in known), None)
                if target is not None and target != name:
                    found.append(Import((path.relative_to(root).as_posix(), node.lineno), name, target, text))
    return sorted(found)


def _shortest_circle(graph: dict[str, dict[str, Import]], start: str) -> list[Import]:
    """The imports of a shortest circle from `start` back to itself (breadth first), or []."""
    came: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        for target, edge in sorted(graph.get(queue.popleft(), {}).items()):
            if target == start:
                chain = [edge]
                while chain[0].source != start:
                    chain.insert(0, came[chain[0].source])
                return chain
            if target not in came:
                came[target] = edge
                queue.append(target)
    return []


def check_circles(root: Path) -> list[str]:
    graph: dict[str, dict[str, Import]] = {}
    for edge in imports(root):
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
    problems, seen = [], set()
    for start in sorted(graph):
        chain = _shortest_circle(graph, start)
        if chain and frozenset(e.source for e in chain) not in seen:
            seen.add(frozenset(e.source for e in chain))
            path = " -> ".join([start] + [e.target for e in chain])
            problems.append(f"import circle {path} ({'; '.join(str(e) for e in chain)})")
    return problems


def check_layers(root: Path) -> list[str]:
    problems = [f"{path.relative_to(root).as_posix()}: {name} belongs to no layer"
                for name, path in modules(root).items() if layer(name) is None]
    for edge in imports(root):
        low, high = layer(edge.source), layer(edge.target)
        if low in RANK and high in RANK and RANK[high] > RANK[low]:
            problems.append(f"{edge}: {edge.source} ({low}) imports {edge.target} ({high}), a layer above")
    return problems


def check_emulator(root: Path) -> list[str]:
    problems = []
    for edge in imports(root):
        inside, into = layer(edge.source) == "emulator", layer(edge.target) == "emulator"
        if inside and not into and edge.target not in EMULATOR_MAY_IMPORT:
            problems.append(f"{edge}: the emulator imports {edge.target}")
        if into and not inside and edge.source not in MAY_IMPORT_EMULATOR:
            problems.append(f"{edge}: {edge.source} imports the emulator")
    return problems


def check_sql(root: Path) -> list[str]:
    """SQL strings (and literal parts of f-strings) and .execute* calls outside batchgen/ledger/.

    The emulator has no database: its `Executor.execute(request)` answers a request line, so only its strings
    are checked."""
    found: list[tuple[str, int, str]] = []
    for name, path in modules(root).items():
        for node in ast.walk(_parse(path)) if layer(name) != "ledger" else ():
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value):
                found.append((path.relative_to(root).as_posix(), node.lineno, repr(node.value.strip()[:60])))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS \
                    and layer(name) != "emulator":
                found.append((path.relative_to(root).as_posix(), node.lineno, f".{node.func.attr}(...)"))
    return [f"{file}:{line}: SQL outside the ledger: {what}" for file, line, what in sorted(found)]


ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())


def test_no_import_circles():
    assert not (problems := check_circles(ROOT)), "\n".join(problems)


def test_imports_point_down_the_layers():
    assert not (problems := check_layers(ROOT)), "\n".join(problems)


def test_sql_lives_in_the_ledger():
    assert not (problems := check_sql(ROOT)), f"{len(problems)} SQL strings and calls:\n" + "\n".join(problems)


def test_the_emulator_stands_apart():
    assert not (problems := check_emulator(ROOT)), "\n".join(problems)


# -- the checks themselves, on a small fake tree -------------------------------------------------------------------

CLEAN = {
    **dict.fromkeys(["batchgen/output.py", "batchgen/errors.py", "batchgen/ledger/migrations.py"], ""),
    **dict.fromkeys(["batchgen/recipe/__init__.py", "batchgen/dataset/__init__.py", "batchgen/run/__init__.py"], ""),
    "batchgen/__init__.py": "from batchgen.run.verbs import run_job\n",
    "batchgen/cli.py": "from batchgen import emulator\nfrom batchgen.output import render\n",
    "batchgen/crashpoints.py": "import os\n",
    "batchgen/recipe/tokens.py": "from batchgen.errors import SpecError\n",
    "batchgen/recipe/spec.py": '"""Update the spec (a capital keyword would count as SQL)."""\nfrom . import tokens\n',
    "batchgen/ledger/__init__.py": "from batchgen.ledger.store import Ledger\n",
    "batchgen/ledger/base.py": "from batchgen.ledger import migrations\n\n\ndef one(db):\n    db.execute('SELECT 1')\n",
    "batchgen/ledger/store.py": "from .base import Store\n",
    "batchgen/dataset/report.py": "from batchgen.ledger import Ledger\nfrom batchgen.recipe.spec import JobSpec\n",
    "batchgen/run/client.py": "def start():\n    from batchgen.emulator import start_embedded\n",
    "batchgen/run/tick.py": "from typing import TYPE_CHECKING\n\nfrom batchgen.run import client\n\n"
                            "if TYPE_CHECKING:\n    from batchgen.dataset.report import JobSpec\n",
    "batchgen/run/verbs.py": "from ..run.tick import tick\n\n\ndef run_job(db):\n"
                             "    from batchgen.ledger.base import one\n    return f'Select {one(db)} later'\n",
    "batchgen/emulator/__init__.py": "from .server import start_embedded\n",
    "batchgen/emulator/server.py": "from batchgen.emulator import engine\nfrom batchgen.recipe.tokens import count\n",
    "batchgen/emulator/engine.py": "METHODS = ['DELETE', 'GET']\n",
}

PLANTED = [  # (check, file, its new text, what the report says)
    (check_circles, "batchgen/run/tick.py", "def later():\n    from batchgen.run.verbs import run_job\n",
     "batchgen/run/tick.py:2: from batchgen.run.verbs import run_job"),  # a lazy import
    (check_circles, "batchgen/recipe/tokens.py", "if TYPE_CHECKING:\n    from .spec import JobSpec\n",
     "batchgen/recipe/tokens.py:2: from .spec import JobSpec"),
    (check_circles, "batchgen/ledger/store.py", "from batchgen.ledger import Ledger\n",  # through the package
     "batchgen/ledger/store.py:1: from batchgen.ledger import Ledger"),
    (check_layers, "batchgen/recipe/spec.py", "from ..ledger.base import Store\n",
     "batchgen/recipe/spec.py:1: from ..ledger.base import Store: batchgen.recipe.spec (recipe) imports batchgen.l"),
    (check_layers, "batchgen/crashpoints.py", "import batchgen.output\n", "batchgen/crashpoints.py:1: import batch"),
    (check_layers, "batchgen/util.py", "", "batchgen/util.py: batchgen.util belongs to no layer"),
    (check_sql, "batchgen/run/tick.py", 'ROWS = ("SELECT * "\n        "FROM jobs")\n', "batchgen/run/tick.py:1: SQL"),
    (check_sql, "batchgen/dataset/report.py", 'f"""\n    DELETE FROM {t}"""\n', "batchgen/dataset/report.py:1: SQL"),
    (check_sql, "batchgen/run/verbs.py", "db.executemany('x', [])\n", "batchgen/run/verbs.py:1: SQL outside the l"),
    (check_sql, "batchgen/emulator/engine.py", "WAL = 'PRAGMA journal_mode=WAL'\n", "batchgen/emulator/engine.py:1"),
    (check_emulator, "batchgen/emulator/engine.py", "from batchgen.errors import BackendError\n",
     "batchgen/emulator/engine.py:1: from batchgen.errors import BackendError: the emulator imports batchgen.errors"),
    (check_emulator, "batchgen/dataset/report.py", "from batchgen.emulator import engine\n",
     "batchgen/dataset/report.py:1: from batchgen.emulator import engine: batchgen.dataset.report imports the emu"),
    (check_emulator, "batchgen/run/tick.py", "import batchgen.emulator\n", "batchgen/run/tick.py:1: import batchgen.e"),
]


def plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_a_clean_fake_tree_reports_nothing(tmp_path):
    root = plant(tmp_path, CLEAN)
    assert [check(root) for check in (check_circles, check_layers, check_sql, check_emulator)] == [[], [], [], []]


@pytest.mark.parametrize(("check", "name", "text", "reported"), PLANTED,
                         ids=[f"{c.__name__[6:]}:{n}" for c, n, _, _ in PLANTED])
def test_a_planted_violation_is_reported(tmp_path, check, name, text, reported):
    problems = check(plant(tmp_path, {**CLEAN, name: text}))
    assert any(reported in problem for problem in problems), problems
