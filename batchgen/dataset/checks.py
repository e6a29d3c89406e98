"""Rule hooks: Python check functions a job names in its own directory (`[validate] checks = ["checks.py:due_dates"]`).

A check takes one `Example` and returns a reason (a non-empty string) when the example is wrong, or None (or "")
when it has nothing against it::

    def due_dates(example):
        for text in example.assistant_texts:
            if "2025-13-" in text:
                return "impossible month 13"
        return None

It runs on every example that passed the structural checks, in collect (also in the judging worker) and in
`batchgen preview`; its rejection is a reason like any other: category `check`, one line "Check <name>: <reason>".
A check that raises, or returns something else than a string or None, stops the collection with one error line
naming the check and the example, and nothing of that batch is recorded: fix the check and collect again. A check
never passes an example silently.

The module is imported once per process from the job directory (it is the job's own code, trusted as the job
file is); it must be importable on its own (no relative imports).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from batchgen.errors import BatchgenError
from batchgen.recipe.spec import CHECK_REF

_MODULES: dict[tuple[str, int], ModuleType] = {}


class CheckError(BatchgenError):
    """A check that cannot be loaded, raised, or returned something that is not a reason."""


@dataclass(frozen=True)
class Example:
    """What a check sees of one example.

    turns           (role, text) in order; role is "system", "user" or "assistant" whatever the format's names
    raw             the example as the model wrote it, in the job's format (a dict)
    key             "<custom_id>#<position>", as `show`, `review` and the export name it
    cell            the axis values its request asked for ({} when unknown)
    reference_date  `[validate] reference_date` of the job (a datetime.date), or None
    """

    turns: tuple[tuple[str, str], ...]
    raw: Any
    key: str = ""
    cell: dict[str, Any] = field(default_factory=dict)
    reference_date: dt.date | None = None

    @property
    def user_texts(self) -> list[str]:
        return [text for role, text in self.turns if role == "user"]

    @property
    def assistant_texts(self) -> list[str]:
        return [text for role, text in self.turns if role == "assistant"]


@dataclass(frozen=True)
class CheckRef:
    """One check a job names: `label` as written ("checks.py:due_dates"), the file's absolute path, the function."""

    label: str
    path: str
    name: str
    source: str | None = None  # the file's text as the ledger kept it, for a job whose directory is gone

    @classmethod
    def parse(cls, text: str, job_dir: Path, source: str | None = None) -> CheckRef:
        """A `[validate] checks` entry, its file resolved inside the job directory (ValueError naming the fix);
        with `source`, the file's text is that, not what the directory holds."""
        found = CHECK_REF.match(text)
        if found is None:
            raise ValueError(f"check {text!r} is not FILE.py:FUNCTION (for example \"checks.py:due_dates\")")
        path = (job_dir / found["file"]).resolve()
        return cls(text, str(path), found["name"], source)

    def function(self) -> Callable[[Example], Any]:
        """The check function, its module imported once per process (CheckError when it cannot be)."""
        path = Path(self.path)
        try:
            stamp = path.stat().st_mtime_ns if self.source is None else hash(self.source)
        except OSError as error:
            raise CheckError(f"Check {self.label}: cannot read {path}: {error.strerror or error}") from None
        module = _MODULES.get((self.path, stamp))
        if module is None:
            module = _MODULES[(self.path, stamp)] = _import(self, path)
        func = getattr(module, self.name, None)
        if not callable(func):
            raise CheckError(f"Check {self.label}: {path.name} defines no function {self.name!r}")
        return func  # type: ignore[no-any-return]


def _import(ref: CheckRef, path: Path) -> ModuleType:
    digest = hashlib.blake2b(ref.path.encode(), digest_size=6).hexdigest()
    name = f"batchgen_job_check_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CheckError(f"Check {ref.label}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        if ref.source is None:
            spec.loader.exec_module(module)
        else:  # the text the ledger kept: the job directory is gone
            exec(compile(ref.source, str(path), "exec"), module.__dict__)  # noqa: S102 - the job's own code
    except Exception as error:  # noqa: BLE001 - the job's own code: any failure is one line naming it
        raise CheckError(f"Check {ref.label}: importing {path.name} failed: {type(error).__name__}: "
                         f"{_first_line(error)}") from None
    sys.modules.pop(name, None)
    return module


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def run_checks(refs: Sequence[CheckRef], example: Example) -> tuple[str, str] | None:
    """(check name, reason) of the first check with something against the example, or None; CheckError for a
    check that raises or returns what is not a reason."""
    for ref in refs:
        func = ref.function()
        try:
            found = func(example)
        except Exception as error:  # noqa: BLE001 - reported as one line that names the check and the example
            raise CheckError(f"Check {ref.label} raised {type(error).__name__} on example {example.key or '?'}: "
                             f"{_first_line(error)}") from None
        if found is None or found is False or found == "":
            continue
        if not isinstance(found, str):
            raise CheckError(f"Check {ref.label} returned {type(found).__name__} {found!r:.60} on example "
                             f"{example.key or '?'}; a check returns a reason (a string) or None")
        return ref.name, " ".join(found.split())
    return None


__all__ = ["CHECK_REF", "CheckError", "CheckRef", "Example", "run_checks"]
