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


# --- the emulator: serve -----------------------------------------------------------------------------------------------

def _rate(name: str, help_: str) -> Any:
    return click.option(name, type=click.FloatRange(0, 1), default=None, help=help_)


@cli.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; non-loopback needs --token")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind")
@click.option("--state", "state", type=click.Path(file_okay=False), default=None,
              help="State directory (default: <workspace>/serve); reads <state>/config.json if present")
@click.option("--token", envvar="BATCHGEN_SERVE_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every request (also $BATCHGEN_SERVE_TOKEN)")
@click.option("--time-scale", type=click.FloatRange(min=0), default=None,
              help="Emulated seconds per real second (3600: the 24 h window passes in 24 s)")
@click.option("--seed", type=int, default=None, help="Seed of the simulated answers and faults")
@click.option("--validation-seconds", type=click.FloatRange(min=0), default=None, help="Time in 'validating'")
@click.option("--line-seconds", type=click.FloatRange(min=0), default=None, help="Emulated time per request line")
@click.option("--finalizing-seconds", type=click.FloatRange(min=0), default=None, help="Time in 'finalizing'")
@click.option("--models", default=None, help="Comma-separated known models (others fail model_not_found)")
@click.option("--queued-token-limit", "limits", multiple=True, metavar="MODEL=TOKENS",
              help="Queued prompt-token limit of a model (repeatable; '*=N' for every model)")
@_rate("--error-rate", "Share of lines answered with a 429/500 model error (error file)")
@_rate("--malformed-rate", "Share of chat answers with broken content (not JSON, wrong roles, empty turns)")
@_rate("--expire-after-fraction", "Expire every batch once this share of its lines has run")
@click.option("--stuck-finalizing", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Extra time every batch stays in 'finalizing'")
@_rate("--http-error-rate", "Share of API calls answered 429/500/503 with Retry-After")
@click.option("--retry-after", type=click.FloatRange(min=0), default=None, help="Retry-After of those answers (s)")
@_rate("--drop-rate", "Share of API calls whose connection is dropped mid-answer")
@_rate("--slow-rate", "Share of API calls answered late")
@click.option("--slow-seconds", type=click.FloatRange(min=0), default=None, help="Delay of a slow answer (s)")
@click.option("--control", is_flag=True, default=None, help="Enable the /_emulator test-control API")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="Server log level")
def serve_(host: str, port: int, state: str | None, token: str | None, log_level: str, models: str | None,
           limits: tuple[str, ...], **options: Any) -> None:
    """Serve the Batch API emulator: Files, Batches, chat and embeddings under /v1, for any OpenAI client.

    State (files, batches, progress) survives restarts; Ctrl-C or SIGTERM stops it cleanly.

    \b
        batchgen serve                                   # http://127.0.0.1:8000/v1
        batchgen serve --time-scale 3600 --state /tmp/emu   # 24 h in 24 s
        batchgen serve --host 0.0.0.0 --token s3cret --error-rate 0.05 --http-error-rate 0.1
        OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=local python my_script.py
    """
    from pathlib import Path

    from batchgen.emulator import ConfigError, EmulatorConfig, check_bind, serve, serve_overrides
    from batchgen.workspace import Workspace

    state_dir = Path(state) if state else Workspace.resolve().root / "serve"
    try:
        check_bind(host, token)
        config = EmulatorConfig.load(state_dir, "serve", serve_overrides(options, models, limits))
        click.echo(f"Batch API emulator: http://{host}:{port}/v1 (state {state_dir})", err=True)
        serve(state_dir, config, host=host, port=port, token=token, log_level=log_level)
    except (ConfigError, ValueError) as error:
        raise click.ClickException(str(error)) from error
