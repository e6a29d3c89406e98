"""The batchgen command line: parse options, call the library, render. No business logic lives here."""

from __future__ import annotations

import os
from typing import Any

import click
from pydantic import ValidationError

from batchgen import __version__
from batchgen.errors import BatchgenError
from batchgen.output import echo_json, echo_table, output_options

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


# --- job specs: plan, compile, init ----------------------------------------------------------------------------------

@cli.command(name="plan")
@click.argument("job")
@output_options
def plan_(job: str, json_: bool, fmt: str | None) -> None:
    """Show what JOB will cost before anything is spent: requests, shards, tokens, batch vs standard price.

    JOB is a job directory, or a name under ./jobs.

    \b
        batchgen plan jobs/task_api
        batchgen plan task_api --json
    """
    from batchgen.plan import plan_job, shard_rows, summary_rows
    from batchgen.spec import load_spec

    plan = plan_job(load_spec(job))
    if json_:
        echo_json(plan.to_dict())
        return
    echo_table(summary_rows(plan), headers=(), fmt=fmt or "plain")
    click.echo()
    echo_table(shard_rows(plan), fmt=fmt)


@cli.command(name="compile")
@click.argument("job")
@click.option("--stage", default=None, help="Compile only this stage (default: every stage without 'from')")
@click.option("--attempt", default=1, show_default=True, type=click.IntRange(min=1), help="Attempt number")
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="Workspace directory (default: $BATCHGEN_WORKSPACE or ./.batchgen)")
@output_options
def compile_(job: str, stage: str | None, attempt: int, workspace: str | None, json_: bool, fmt: str | None) -> None:
    """Write the Batch API input files (shards) of JOB into the workspace and print where they are.

    \b
        batchgen compile jobs/task_api
    """
    from batchgen.compile import compile_stage
    from batchgen.spec import load_spec
    from batchgen.workspace import Workspace

    spec = load_spec(job)
    chosen = [spec.stage(stage)] if stage else [s for s in spec.resolved_stages() if s.source is None]
    space = Workspace.resolve(workspace)
    results = [compile_stage(spec, s, workspace=space, attempt=attempt) for s in chosen]
    rows = [{"stage": r.stage, "path": s.path, "lines": s.lines, "bytes": s.bytes, "input_tokens": s.input_tokens,
             "sha256": s.sha256} for r in results for s in r.shards]
    if json_:
        echo_json(rows)
        return
    echo_table([{**row, "sha256": row["sha256"][:12]} for row in rows], fmt=fmt)


@cli.command(name="init")
@click.argument("name")
@click.option("--dir", "parent", type=click.Path(file_okay=False), default="jobs", show_default=True,
              help="Where to create the job directory")
@click.option("--model", default="gpt-4o-mini", show_default=True, help="Model of the new job")
@click.option("--format", "fmt", type=click.Choice(["sharegpt", "alpaca", "chatml"]), default="sharegpt",
              show_default=True, help="Dataset format")
def init_(name: str, parent: str, model: str, fmt: str) -> None:
    """Create a job directory NAME (job.toml, prompt.j2, seeds.jsonl) that plans out of the box.

    \b
        batchgen init my_job && batchgen plan jobs/my_job
    """
    from pathlib import Path

    from batchgen.jobfiles import scaffold_job

    job_dir = scaffold_job(name, Path(parent), model=model, fmt=fmt)
    click.echo(f"Created {job_dir}: edit seeds.jsonl and prompt.j2, then run 'batchgen plan {job_dir}'")
