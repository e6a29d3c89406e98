"""Rendering for the CLI: tables, JSON, warnings on stderr (the progress of `run` is in batchgen.progress). No
decisions are made here."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import click
from tabulate import tabulate, tabulate_formats

F = TypeVar("F", bound=Callable[..., Any])


def output_options(func: F) -> F:
    """Add --json and --fmt to a command (sqlite-utils style)."""
    func = click.option("--fmt", default=None, type=click.Choice(sorted(tabulate_formats)), metavar="FORMAT",
                        help="Table format for tabulate (simple, github, plain ...)")(func)
    func = click.option("json_", "--json", is_flag=True, help="Print JSON instead of a table")(func)
    return func


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> str:
    """JSON for stdout: Decimals as exact strings, pydantic models dumped."""
    return json.dumps(value, indent=2, default=_default, ensure_ascii=False)


def echo_json(value: Any) -> None:
    click.echo(dumps(value))


def table(rows: Iterable[Sequence[Any] | Mapping[str, Any]], headers: Sequence[str] | str = "keys",
          fmt: str | None = None) -> str:
    return str(tabulate(list(rows), headers=headers, tablefmt=fmt or "simple", disable_numparse=True))


def echo_table(rows: Iterable[Sequence[Any] | Mapping[str, Any]], headers: Sequence[str] | str = "keys",
               fmt: str | None = None) -> None:
    click.echo(table(rows, headers, fmt))


# Characters a terminal acts on rather than shows: C0 and C1 controls (escape sequences, carriage returns, newlines)
# and the marks that reorder text (bidirectional overrides, which can make a line read as something else).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, limit: int | None = None) -> str:
    """Untrusted text (a model's answer) as one line that a terminal shows and never acts on: each control
    character written as its escape (\\n, \\x1b), the text cut at `limit` characters with an ellipsis."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "\u2026"
    return _UNPRINTABLE.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def warn(message: str) -> None:
    click.echo(message, err=True)
