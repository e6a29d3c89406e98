"""The batchgen command line: parse options, call the library, render. No business logic lives here."""

from __future__ import annotations

import os
from typing import Any

import click
from pydantic import ValidationError

from batchgen import __version__
from batchgen.errors import BatchgenError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def render_validation_error(error: ValidationError) -> str:
    """One `loc: msg` line per pydantic error."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{loc}: {item['msg']}")
    return "; ".join(lines)


class BatchgenGroup(click.Group):
    """The single boundary where library errors become `Error: ...` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchgenError as error:
            if _debug(ctx):
                raise
            raise click.ClickException(str(error)) from error
        except ValidationError as error:
            if _debug(ctx):
                raise
            raise click.ClickException(render_validation_error(error)) from error


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.params or {}).get("debug")) or os.environ.get("BATCHGEN_DEBUG") == "1"


@click.group(cls=BatchgenGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="batchgen")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors (also BATCHGEN_DEBUG=1)")
def cli(debug: bool) -> None:
    """Make synthetic training data through OpenAI's Batch API, cheaply and safely.

    Without --backend openai everything runs on a built-in emulator of the Batch API ($0).
    """
