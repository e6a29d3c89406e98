"""The batchgen command line: parse options, call the library, render. No business logic lives here."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import click
from click.core import ParameterSource
from pydantic import ValidationError

from batchgen._version import __version__
from batchgen.errors import BatchgenError
from batchgen.money import format_usd
from batchgen.output import echo_json, echo_table, output_options, warn

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
# Exit statuses of run, submit, collect and tick (README "Exit status"): 0 every job touched is done at its target
# or running normally; 1 an error; 3 a job ended short of its target; 130 stopped by Ctrl-C.
EXIT_SHORT = 3
# What a missing job directory stops, said by `show` and `status`.
MISSING_DIR_NOTE = "submitted batches are still collected and exported; compiling, retries and top-ups need it"
PREVIEW_CHARS = 200  # characters of a turn that `preview` shows without --full


def _exit_for(progress: Any) -> None:
    """Exit 1 when a job met an error, 3 when one ended short of its target; return otherwise."""
    if any(p.error for p in progress):
        sys.exit(1)
    if any(p.ended_short for p in progress):
        sys.exit(EXIT_SHORT)


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
            from batchgen.recipe.loader import explain

            raise click.ClickException(explain(error)) from error


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

def html_options(func: Any) -> Any:
    """--html and -o/--output, for the commands that can draw their figures as a page."""
    func = click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                        help="With --html: the page's path")(func)
    return click.option("--html", is_flag=True, help="Write one self-contained HTML page and print its path")(func)


workspace_option = click.option(
    "--workspace", type=click.Path(file_okay=False), default=None, envvar="BATCHGEN_WORKSPACE",
    help="Workspace directory (default: $BATCHGEN_WORKSPACE or ./.batchgen)")


@cli.command(name="plan")
@click.argument("job")
@click.option("--exact", is_flag=True,
              help="Render and count every request even beyond 20,000 (a huge job then takes minutes)")
@workspace_option
@output_options
def plan_(job: str, exact: bool, workspace: str | None, json_: bool, fmt: str | None) -> None:
    """Show what JOB will cost before anything is spent: requests, shards, tokens, batch vs standard price.

    JOB is a job directory, or a name under ./jobs. A job of more than 20,000 requests is estimated from a
    sample of 2,000 requests a stage (the plan says so), unless --exact. Output tokens and yield per request are
    the prior figures from the job's files until the workspace's ledger holds answers of the same model and
    template (this job's or an earlier one's): then the learned figures price the plan, and both are shown.

    \b
        batchgen plan jobs/task_api
        batchgen plan task_api --json
    """
    from batchgen.ledger.workspace import Workspace
    from batchgen.recipe.loader import load_spec
    from batchgen.recipe.plan import plan_job, shard_rows, summary_rows
    from batchgen.run.learning import plan_estimates

    spec = load_spec(job)
    spec.served_locally(_served_locally(spec.backend))
    plan = plan_job(spec, exact=exact, estimates=plan_estimates(Workspace.resolve(workspace).ledger_path, spec))
    if json_:
        echo_json(plan.to_dict())
        return
    echo_table(summary_rows(plan), headers=(), fmt=fmt or "plain")
    click.echo()
    echo_table(shard_rows(plan), fmt=fmt)


def _served_locally(job_backend: str | None) -> bool:
    """Whether the backend a run would choose now is a server on this machine (free tokens; see recipe.pricing)."""
    from batchgen.errors import BackendError
    from batchgen.run.client import choose_backend, served_locally

    try:
        return served_locally(choose_backend(None, job_backend))
    except BackendError:
        return False


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
    from batchgen.ledger.workspace import Workspace
    from batchgen.recipe.compile import compile_stage
    from batchgen.recipe.loader import load_spec

    spec = load_spec(job)
    chosen = [spec.stage(stage)] if stage else [s for s in spec.resolved_stages() if s.source is None]
    space = Workspace.resolve(workspace)
    results = [compile_stage(spec, s, shards_dir=space.shards_dir, attempt=attempt, progress=_compile_progress(s.name))
               for s in chosen]
    rows: list[dict[str, Any]] = [{"stage": r.stage, "path": s.path, "lines": s.lines, "bytes": s.bytes,
                                   "input_tokens": s.input_tokens, "sha256": s.sha256}
                                  for r in results for s in r.shards]
    if json_:
        echo_json(rows)
        return
    echo_table([{**row, "sha256": row["sha256"][:12]} for row in rows], fmt=fmt)


def _compile_progress(stage: str) -> Callable[[int, int], None]:
    """Requests compiled so far, on stderr: in place on a terminal, every 100,000 in a log."""
    tty = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        if tty or done % 100_000 == 0 or done == total:
            line = f"[{stage}] compiled {done:,} of {total:,} requests"
            click.echo(("\r" + line) if tty else line, err=True, nl=not tty or done == total)

    return show


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

    from batchgen.recipe.scaffold import scaffold_job

    job_dir = scaffold_job(name, Path(parent), model=model, fmt=fmt)
    click.echo(f"Created {job_dir}: edit seeds.jsonl and prompt.j2, then run 'batchgen plan {job_dir}'")


# --- the pipeline: run, submit, status, collect, tick, show, export, cancel, jobs, ledger -----------------------------

def guard_options(func: Any) -> Any:
    """--budget-mode, --queue-limit, --poll-interval and --no-learn, for the commands that submit."""
    func = click.option("--learn/--no-learn", default=True, show_default=True,
                        help="Estimate output tokens and yield from the answers collected so far (for the budget "
                             "guard's expected mode and the size of top-ups), or from the job's files alone")(func)
    func = click.option("--poll-interval", type=click.FloatRange(min=0.05), default=None, metavar="SECONDS",
                        help="First wait between polls of a batch, growing by half each poll up to 5 minutes "
                             "(default: 30 on an API; 1, growing to 15, on a server on this machine; 0.25 on the "
                             "embedded emulator)")(func)
    func = click.option("--queue-limit", type=click.IntRange(min=1), default=None, metavar="TOKENS",
                        help="Cap on a model's queued input tokens (default: the job's limits.max_queued_tokens, "
                             "else the tier-1 limit on OpenAI)")(func)
    func = click.option("--budget-mode", type=click.Choice(["worst", "expected"]), default="worst", show_default=True,
                        help="Count batches in flight at their worst case (every request at max_tokens) or at the "
                             "expected cost when guarding the budget")(func)
    return func


backend_option = click.option(
    "--backend", type=click.Choice(["embedded", "openai", "azure"]), default=None,
    help="Where batches run (default: $BATCHGEN_BACKEND, the job's backend, or the free embedded emulator)")


def _session(workspace: str | None, backend: str | None = None, budget_mode: str = "worst",
             queue_limit: int | None = None, poll_interval: float | None = None, *, ledger: str = "create",
             learn: bool = True) -> Any:
    """A Session on the workspace's ledger, closed when the command ends.

    ledger="create" makes the workspace and its ledger if need be (commands that start jobs); "existing" needs a
    ledger there (a mistyped --workspace is an error, never a new empty ledger); "read" also writes nothing, so a
    read-only workspace can be inspected."""
    from batchgen.ledger import Ledger
    from batchgen.ledger.workspace import Workspace
    from batchgen.run.session import Session

    space = Workspace.resolve(workspace)
    if ledger == "read":
        opened = Ledger.open(space.ledger_path, read_only=True)
    else:
        if ledger == "existing":
            Ledger.require(space.ledger_path)
        opened = Ledger.open(space.ensure().ledger_path)
    session = Session(opened, space, backend=backend, budget_mode=budget_mode, queue_limit=queue_limit,
                      poll_interval=poll_interval, learn=learn)
    ctx = click.get_current_context()
    ctx.call_on_close(opened.close)
    ctx.call_on_close(session.close)
    return session


def _lock(workspace: str | None, wait: float | None = None, on_wait: Any = None, need_ledger: bool = False) -> Any:
    """Take the workspace lock for the rest of the command (call before `_session`, so that it is released last).

    Waits as long as it takes (wait=None), or raises WorkspaceBusy after `wait` seconds; `on_wait` is told whom
    it waits for.
    """
    from batchgen.ledger import Ledger
    from batchgen.ledger.workspace import Workspace
    from batchgen.run.lock import WorkspaceLock

    space = Workspace.resolve(workspace)
    if need_ledger:  # a mistyped --workspace: say so, and make nothing there
        Ledger.require(space.ledger_path)
    lock = WorkspaceLock(space.ensure().root)
    lock.acquire(timeout=wait, on_wait=on_wait)
    click.get_current_context().call_on_close(lock.release)
    return lock


def _wait_note() -> Any:
    """Say once on stderr that this process waits for another one."""
    shown = False

    def note(holder: Any) -> None:
        nonlocal shown
        if not shown:
            shown = True
            click.echo(f"Another batchgen ({holder.describe()}) is working on this workspace; waiting for its turn",
                       err=True)

    return note


@cli.command(name="run")
@click.argument("job")
@backend_option
@guard_options
@workspace_option
@click.option("--quiet", "-q", is_flag=True, help="No progress display")
@click.option("json_", "--json", is_flag=True, help="Print the summary as JSON (as 'batchgen show --json')")
def run_(job: str, backend: str | None, budget_mode: str, queue_limit: int | None, poll_interval: float | None,
         learn: bool, workspace: str | None, quiet: bool, json_: bool) -> None:
    """Run JOB to the end: compile, submit, poll, collect, validate, export. Safe to stop and start again.

    Ctrl-C leaves the batches running; run the same command later to pick up where it stopped.

    \b
        batchgen run jobs/task_api                 # free, on the embedded emulator
        batchgen run jobs/task_api --backend openai

    Exit status: 0 done at the target (or running normally), 1 an error, 3 a job ended short of its target. Ctrl-C: 130.
    """
    from batchgen.progress import progress_display
    from batchgen.run.verbs import run_job

    note = _wait_note()
    lock = _lock(workspace, on_wait=note)
    session = _session(workspace, backend, budget_mode, queue_limit, poll_interval, learn=learn)
    spec = _register(session, job)
    try:
        with progress_display(show=not (quiet or json_)) as display:
            final = run_job(session, spec, display.update, sleep=lock.pausing(session.close, note),
                            on_outage=lambda message: display.note(f"Backend unavailable: {message}"))
    except KeyboardInterrupt:
        click.echo(_stopped_hint(job, spec.name), err=True)
        sys.exit(130)
    _print_summary(session, spec.name, json_)
    _exit_for([final])


# The options of `run` that shape what it does: a resumed run needs them again (--quiet and --json only change what
# it prints).
RESUME_OPTIONS = ("backend", "budget_mode", "queue_limit", "poll_interval", "workspace")


def _stopped_hint(job: str, name: str) -> str:
    """What to type to pick up where Ctrl-C stopped `run`: the same job with each option of RESUME_OPTIONS that was
    given (on the command line, or --workspace through $BATCHGEN_WORKSPACE), quoted for a shell."""
    import shlex

    ctx = click.get_current_context()
    params = {param.name: param for param in ctx.command.params}
    given = {name: f"{params[name].opts[0]} {shlex.quote(str(ctx.params[name]))}" for name in RESUME_OPTIONS
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    options = "".join(f" {option}" for option in given.values())
    where = _workspace_flag()
    return (f"Stopped. Batches keep running; resume with 'batchgen run {shlex.quote(job)}{options}' or check with "
            f"'batchgen status {name}{where}'")


def _workspace_flag() -> str:
    """' --workspace PATH' when the command was given one (on the command line or through $BATCHGEN_WORKSPACE), for
    the commands a message tells the user to type next."""
    import shlex

    ctx = click.get_current_context()
    if ctx.params.get("workspace") is None or ctx.get_parameter_source("workspace") not in (
            ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
        return ""
    return f" --workspace {shlex.quote(str(ctx.params['workspace']))}"


def _register(session: Any, job: str) -> Any:
    from batchgen.run.tick import register_job

    return register_job(session, job)


def _print_summary(session: Any, name: str, json_: bool) -> None:
    from batchgen.dataset.report import job_summary

    summary = {**job_summary(session.ledger, name, session.workspace),
               "priced_by": session.ledger.job_price_sources(name)}
    if json_:
        echo_json(summary)
        return
    quality = summary["quality"]
    reasons = {k: v for k, v in quality["reasons"].items()}
    click.echo(f"Job {name}: {summary['status']} (stage {summary['stage']}, backend {summary['backend']})")
    click.echo(f"Valid: {quality['valid']}/{quality['total']}")
    click.echo(f"Invalid reasons: {reasons}")
    if summary["lineage"]:
        click.echo("Lineage: " + ", ".join(f"{stage} {c['with_root']}/{c['valid']} to a seed"
                                           for stage, c in summary["lineage"].items()))
    for stage, judged in summary["judged"].items():
        click.echo(f"Judged: stage {stage} scored {judged['judged']} example(s), {judged['passed']} passed, "
                   f"{judged['rejected']} rejected, mean score {judged['mean_score']}")
    click.echo("Requests: " + ", ".join(f"{k} {v}" for k, v in summary["requests"].items()))
    if summary["failures"]:
        click.echo("Failed lines: " + ", ".join(f"{k} {v}" for k, v in summary["failures"].items()))
    if summary["faults"]:
        click.echo("Faults: " + ", ".join(f"{k} {v}" for k, v in summary["faults"].items()))
    t = summary["tokens"]
    click.echo(f"Tokens: prompt {t.get('prompt', 0)} (cached {t.get('cached', 0)}), "
               f"completion {t.get('completion', 0)}")
    budget = f" of budget {format_usd(summary['budget_usd'])}" if summary["budget_usd"] is not None else ""
    click.echo(f"Cost: {format_usd(summary['spent_usd'])} at batch price{budget} "
               f"(estimated {format_usd(summary['estimated_usd'])})")
    if summary["priced_by"]:
        click.echo("Priced by: " + "; ".join(summary["priced_by"]))
    preview = summary["preview"]
    if preview["requests"]:
        free = "; the embedded emulator bills nothing" if preview["backends"] == ["embedded"] else ""
        counted = "; counted against the budget" if summary["budget_usd"] is not None else ""
        click.echo(f"Preview: {format_usd(preview['cost_usd'])} at standard price for {preview['requests']} "
                   f"request(s) in {preview['previews']} preview(s), {preview['valid']}/{preview['examples']} "
                   f"valid{counted}{free}")
    if summary["dataset"]:
        click.echo(f"Dataset: {summary['dataset']['examples']} examples in {summary['dataset']['path']}")
    if summary["review"]["reviewed"]:
        click.echo(_review_line(summary["review"]))
    if summary["blocked"]:
        click.echo(f"Blocked: {summary['blocked']}")
        click.echo(f"Once the cause is fixed: 'batchgen jobs unblock {name}{_workspace_flag()}', "
                   "then run the job again")
    if summary["job_dir"]["missing"]:
        click.echo(f"Missing: job directory {summary['job_dir']['path']} ({MISSING_DIR_NOTE})")
    for short in summary["short"]:
        click.echo(f"Short: stage {short['stage']} has {short['target'] - short['missing']} of its "
                   f"{short['target']} examples ({_short_why(short)})")
    _print_cells(summary)


def _short_why(short: dict[str, Any]) -> str:
    """Why a stage or a cell stayed short, in words."""
    return {"max_top_ups": f"after {short['top_ups']} top-up round(s), the most max_top_ups allows",
            "budget": "the budget has no room for a top-up",
            "dead_end": "the job met a dead end, see Blocked",
            "no_variant": "no variant of the cell among the next ones to top it up with"}.get(
        short["reason"], "every input has its answer; the others were duplicates or refused")


def _print_cells(summary: dict[str, Any]) -> None:
    """How many cells of each stage are at their share of its target, and each cell that stayed below it."""
    import json

    for stage, counts in summary["cells"].items():
        if counts["cells"] > 1:
            click.echo(f"Cells: stage {stage}: {counts['at_share']} of {counts['cells']} at their share")
    for short in summary["short_cells"]:
        cell = ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in short["cell"].items())
        click.echo(f"Short: cell {cell} of stage {short['stage']} has {short['valid']} of its {short['share']} "
                   f"examples ({_short_why(short)})")


@cli.command(name="preview")
@click.argument("job")
@click.option("-n", "count", default=5, show_default=True, type=click.IntRange(1, 50), help="Requests to send")
@click.option("--stage", default=None, help="The stage to preview (default: the first)")
@click.option("--full", is_flag=True, help=f"Show every turn whole (default: cut at {PREVIEW_CHARS} characters)")
@backend_option
@workspace_option
@click.option("json_", "--json", is_flag=True, help="Print every request, example, verdict and cost as JSON")
def preview_(job: str, count: int, stage: str | None, full: bool, backend: str | None, workspace: str | None,
             json_: bool) -> None:
    """Send a few requests of JOB now and show their examples, judged as collect judges them, and the yield.

    The requests (spread over the axis cells, the same ones every time) go to the synchronous chat endpoint at
    standard price, shown on stderr before anything is sent; what they cost is recorded as preview spend, which
    counts against the job's budget. No batch is submitted. The embedded emulator bills nothing.

    \b
        batchgen preview jobs/task_api
        batchgen preview jobs/evol_task_api --stage moderate -n 3 --json
    """
    from batchgen.run.preview import plan_preview, send_preview

    _lock(workspace, on_wait=_wait_note())
    session = _session(workspace, backend)
    plan = plan_preview(session, job, count, stage)
    click.echo(plan.announcement(), err=True)
    report = send_preview(session, plan)
    if json_:
        echo_json(report.to_dict())
        return
    for number, answer in enumerate(report.answers, 1):
        _print_preview_answer(number, answer, None if full else PREVIEW_CHARS)
    _print_preview_summary(report)


def _print_preview_answer(number: int, answer: Any, limit: int | None) -> None:
    """One request of a preview: its variant, usage and cost, then each example (model output, so printed only
    through `printable`) with its verdict."""
    import json

    from batchgen.output import printable

    variant = answer.request.variant
    cell = " ".join(f"{name}={value if isinstance(value, str) else json.dumps(value)}"
                    for name, value in variant.cell.items())
    click.echo(f"[{number}] variant {variant.index}  {cell}  temperature {variant.temperature}  "
               f"{answer.tokens['prompt']:,} + {answer.tokens['completion']:,} tokens  {format_usd(answer.cost_usd)}")
    if answer.reason is not None:
        click.echo(f"    answer rejected: {printable(str(answer.reason), limit)}")
    for example in answer.examples:
        lines = [] if example.valid else [printable(example.reason or "", limit)]
        turns = example.turns or [("json", json.dumps(example.content, ensure_ascii=False))]
        lines += [f"{role}: {printable(text, limit)}" for role, text in turns]
        for position, line in enumerate(lines):
            label = ("valid" if example.valid else "invalid") if position == 0 else ""
            click.echo(f"    {label:<9}{line}")


def _print_preview_summary(report: Any) -> None:
    """The yield, what the stage's requests would give at it, and what the preview spent."""
    quality, plan = report.quality(), report.plan
    share = f" ({quality.valid * 100 // quality.total} %)" if quality.total else ""
    click.echo(f"\nValid: {quality.valid}/{quality.total}{share} from {len(report.answers)} request(s); at this "
               f"yield the stage's {plan.planned} requests give about {report.projected()} valid examples "
               f"(target {plan.stage.target})")
    click.echo(f"Invalid reasons: {dict(quality.reasons.most_common())}")
    tokens = sum(a.tokens["prompt"] for a in report.answers), sum(a.tokens["completion"] for a in report.answers)
    billed = "" if plan.billed else "; the embedded emulator bills nothing"
    click.echo(f"Spent: {format_usd(report.spent_usd)} at standard price ({tokens[0]:,} prompt + {tokens[1]:,} "
               f"completion tokens), recorded as preview {report.number} of {plan.spec.name}{billed}")
    budget = f", counted against its budget of {format_usd(plan.spec.budget_usd)}" if plan.spec.budget_usd else ""
    click.echo(f"Previews of {plan.spec.name} have spent {format_usd(report.total_usd)}{budget}")


@cli.command(name="submit")
@click.argument("job")
@backend_option
@guard_options
@workspace_option
@click.option("json_", "--json", is_flag=True, help="Print {job, submitted, waiting} as JSON")
def submit_(job: str, backend: str | None, budget_mode: str, queue_limit: int | None, poll_interval: float | None,
            learn: bool, workspace: str | None, json_: bool) -> None:
    """Compile JOB and submit its batches, then return at once (collect later with 'batchgen collect').

    \b
        batchgen submit jobs/task_api && batchgen status task_api

    Exit status: 0 done at the target (or running normally), 1 an error, 3 a job ended short of its target.
    """
    from batchgen.run.verbs import submit_job

    _lock(workspace, on_wait=_wait_note())
    session = _session(workspace, backend, budget_mode, queue_limit, poll_interval, learn=learn)
    spec = _register(session, job)
    count, blocked = submit_job(session, spec)
    if json_:
        echo_json({"job": spec.name, "submitted": count, "waiting": blocked})
    else:
        click.echo(f"Submitted {count} batch(es) for job {spec.name}" + (f"; {blocked}" if blocked else ""))


@cli.command(name="collect")
@click.argument("job", required=False)
@workspace_option
@click.option("json_", "--json", is_flag=True, help="Print each job's progress as JSON")
def collect_(job: str | None, workspace: str | None, json_: bool) -> None:
    """Poll the batches of JOB (default: every active job) and collect the ones that ended.

    \b
        batchgen collect task_api

    Exit status: 0 done at the target (or running normally), 1 an error, 3 a job ended short of its target.
    """
    from batchgen.ledger import TERMINAL
    from batchgen.run.verbs import collect_jobs

    _lock(workspace, on_wait=_wait_note(), need_ledger=True)
    session = _session(workspace, ledger="existing")
    progress = collect_jobs(session, [job] if job else None)
    if json_:
        echo_json([p.to_dict() for p in progress])
        _exit_for(progress)
        return
    for p in progress:
        running = sum(n for s, n in p.batches.items() if s not in TERMINAL)
        state = "done" if p.done else f"{running} batch(es) still running"
        if p.pending_shards:
            state += f"; {p.pending_shards} shard(s) to submit: batchgen submit {p.job}"
        click.echo(f"{p.job}: collected {p.collected_now} batch(es); {p.finished}/{p.requests} requests answered; "
                   f"{p.valid_examples} valid examples; {state}" + (f"; dataset {p.dataset}" if p.dataset else ""))
        if p.error:
            click.echo(f"Error: {p.error}", err=True)
    _exit_for(progress)


@cli.command(name="tick")
@guard_options
@workspace_option
@click.option("--wait", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds to wait for another batchgen working on the workspace before skipping this tick")
@click.option("json_", "--json", is_flag=True, help="Print each job's progress as JSON")
def tick_(budget_mode: str, queue_limit: int | None, poll_interval: float | None, learn: bool, workspace: str | None,
          wait: float, json_: bool) -> None:
    """One pass over every active job: submit, poll, collect, export. For cron, with a one-line summary.

    \b
        */10 * * * * cd ~/data && batchgen tick >> batchgen.log 2>&1

    Exit status: 0 done at the target (or running normally), 1 an error, 3 a job ended short of its target;
    0 when another batchgen holds the workspace longer than --wait (the tick is skipped).
    """
    from batchgen.errors import WorkspaceBusy
    from batchgen.run.tick import tick

    try:
        _lock(workspace, wait=wait, need_ledger=True)
    except WorkspaceBusy as error:
        echo_json({"skipped": str(error), "jobs": []}) if json_ else click.echo(f"{error}; skipped")
        return
    session = _session(workspace, None, budget_mode, queue_limit, poll_interval, ledger="existing", learn=learn)
    report = tick(session)
    if json_:
        echo_json({"skipped": None, "jobs": [p.to_dict() for p in report]})
        _exit_for(report)
        return
    parts = [f"{p.job} {p.status} {p.finished}/{p.requests} (+{p.submitted_now} submitted, "
             f"+{p.collected_now} collected)" + (f" error: {p.error}" if p.error else "")
             + (f" waiting: {p.waiting_for_budget}" if p.waiting_for_budget else "") for p in report]
    click.echo("tick: " + ("; ".join(parts) if parts else "no active jobs"))
    _exit_for(report)


@cli.command(name="status")
@click.argument("job", required=False)
@click.option("--watch", is_flag=True, help="Refresh every few seconds until every batch has ended")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between refreshes with --watch")
@workspace_option
@output_options
def status_(job: str | None, watch: bool, interval: float, workspace: str | None, json_: bool,
            fmt: str | None) -> None:
    """List jobs and their batches: status, completed/failed/total, age, estimated vs actual cost.

    \b
        batchgen status
        batchgen status task_api --json
    """
    from batchgen.dataset.report import batch_rows, missing_job_dirs
    from batchgen.run.lock import WorkspaceLock

    session = _session(workspace, ledger="existing")
    lock = WorkspaceLock(session.workspace.root)
    while True:
        active = _refresh(session, lock, job)
        rows = batch_rows(session.ledger, job)
        if json_:
            echo_json(rows)
        else:
            money = ("estimated_usd", "actual_usd")  # as people read money, not 2.2E-7 for an embeddings batch
            shown = [{k: format_usd(v) if k in money and v is not None else v for k, v in r.items()} for r in rows]
            echo_table(shown, fmt=fmt) if rows else click.echo("No batches yet")
            for row in session.ledger.jobs("blocked"):
                if job in (None, row["name"]):
                    click.echo(f"Blocked: job {row['name']}: {row['blocked_reason']}")
            for gone in missing_job_dirs(session.ledger, session.workspace, job):
                click.echo(f"Missing: job {gone['job']}: job directory {gone['path']} ({MISSING_DIR_NOTE})")
        if not watch or not active:
            return
        time.sleep(interval)


def _refresh(session: Any, lock: Any, job: str | None) -> bool:
    """Poll unfinished batches unless another batchgen holds the workspace (it polls them); True while any runs."""
    from batchgen.dataset.report import batch_rows
    from batchgen.ledger import TERMINAL
    from batchgen.run.verbs import refresh_status

    if lock.try_acquire():
        try:
            return bool(refresh_status(session, job))
        finally:
            session.close()  # the embedded emulator lives only while the lock is held
            lock.release()
    return any(row["status"] not in TERMINAL for row in batch_rows(session.ledger, job))


@cli.command(name="show")
@click.argument("job")
@workspace_option
@output_options
def show_(job: str, workspace: str | None, json_: bool, fmt: str | None) -> None:
    """The job's summary: valid examples, invalid reasons, requests by outcome, tokens and cost.

    \b
        batchgen show task_api
    """
    _print_summary(_session(workspace, ledger="read"), job, json_)


@cli.command(name="export")
@click.argument("job")
@click.option("--format", "format_", type=click.Choice(["sharegpt", "alpaca", "chatml", "embeddings"]),
              default=None, help="Dataset format (default: the job's; an embeddings job has only embeddings)")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="File to write (default: <workspace>/datasets/<job>.<format>.jsonl)")
@click.option("--provenance", type=click.Choice(["inline", "sidecar", "none"]), default=None,
              help="Where each line's provenance goes: a _provenance key, a .provenance.jsonl file, or nowhere "
                   "(default: sidecar for chatml, which fine-tuning takes with documented keys only; else inline)")
@click.option("--fine-tune-model", default=None, metavar="MODEL",
              help="chatml: the model to fine-tune, whose training context each example must fit (default: the "
                   "job's model)")
@workspace_option
@click.option("json_", "--json", is_flag=True, help="Print {path, written, sha256, skipped, card_path, ...} as JSON")
def export_(job: str, format_: str | None, output: str | None, provenance: str | None, fine_tune_model: str | None,
            workspace: str | None, json_: bool) -> None:
    """Write the valid examples of JOB as JSONL, one example per line, with provenance and a dataset card.

    \b
        batchgen export task_api --format chatml -o train.jsonl
        batchgen export task_api --format chatml --fine-tune-model gpt-4.1-mini -o train.jsonl
    """
    from pathlib import Path

    from batchgen.dataset.report import export_job
    from batchgen.run.tick import job_spec

    session = _session(workspace, ledger="read")
    spec = job_spec(session, job)
    fmt_ = format_ or spec.dataset_format
    path = Path(output) if output else session.workspace.datasets_dir / f"{spec.name}.{fmt_}.jsonl"
    result = export_job(session.ledger, spec, path, fmt_, provenance, fine_tune_model, shared_folder=not output)
    for warning in result.warnings:
        warn(f"Warning: {warning}")
    if json_:
        report = result.to_dict()
        echo_json({key: report[key] for key in ("path", "written", "sha256", "skipped", "card_path", "fine_tuning",
                                                "warnings")})
        return
    skipped = f" ({result.skipped_total} skipped: {dict(result.skipped)})" if result.skipped_total else ""
    card = f"; card {result.card_path}" if result.card_path else ""
    # Into a pipe or /dev/stdout the data is on stdout already: the summary goes to stderr.
    click.echo(f"Wrote {result.written} examples to {result.path}{skipped}{card}", err=not result.path.is_file())


@cli.command(name="review")
@click.argument("job")
@click.option("-n", "count", type=click.IntRange(min=1), default=25, show_default=True,
              help="Examples to sample: every stage and cell gives one before any gives two")
@click.option("--seed", type=int, default=0, show_default=True, help="Another seed draws another sample")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="CSV file to write (default: <workspace>/reviews/<job>.review.csv)")
@click.option("--force", is_flag=True, help="Replace a review file that is already there")
@click.option("--import", "import_", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Read the verdicts of a filled-in review file into the ledger instead")
@workspace_option
@click.option("json_", "--json", is_flag=True, help="Print what was written or imported as JSON")
def review_(job: str, count: int, seed: int, output: str | None, force: bool, import_: str | None,
            workspace: str | None, json_: bool) -> None:
    """Write a sample of JOB's valid examples for a domain expert, stratified by stage and cell, or read the
    verdicts back with --import. Examples rejected there leave the dataset.

    The CSV opens in a spreadsheet or a text editor: fill in verdict (accept or reject) and note on each row.

    \b
        batchgen review task_api -n 25 -o review.csv
        batchgen review task_api --import review.csv
    """
    import shlex
    from pathlib import Path

    if import_ is not None:
        ctx = click.get_current_context()
        if output is not None or force or any(ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
                                              for name in ("count", "seed")):
            raise click.ClickException("--import reads a review file; -n, --seed, -o and --force are for writing one")
        _review_import(workspace, job, Path(import_), json_)
        return
    from batchgen.dataset.review import write_review
    from batchgen.run.tick import job_spec

    session = _session(workspace, ledger="read")
    spec = job_spec(session, job)
    path = Path(output) if output else session.workspace.reviews_dir / f"{spec.name}.review.csv"
    written = write_review(session.ledger, spec, path, count, seed, force)
    if json_:
        echo_json(written.to_dict())
        return
    stages = "; ".join(f"{name} {s['examples']} in {s['cells']} of {s['cells_total']} cells"
                       for name, s in written.stages.items())
    click.echo(f"Wrote {written.examples} examples of job {spec.name} for review to {path} ({stages})")
    click.echo(f"Fill in verdict (accept or reject) and note, then: batchgen review {spec.name} --import "
               f"{shlex.quote(str(path))}{_workspace_flag()}")


def _review_import(workspace: str | None, job: str, path: Any, json_: bool) -> None:
    """`review JOB --import FILE`: under the workspace lock, as it may write the dataset again."""
    from batchgen.dataset.review import review_summary
    from batchgen.run.verbs import import_review

    _lock(workspace, on_wait=_wait_note(), need_ledger=True)
    session = _session(workspace, ledger="existing")
    imported, dataset = import_review(session, job, path)
    summary = review_summary(session.ledger, job)
    if json_:
        echo_json({**imported.to_dict(), "review": summary, "dataset": dataset})
        return
    click.echo(f"Imported {imported.verdicts} verdict(s) of job {job} from {path}: {imported.accept} accept, "
               f"{imported.reject} reject ({imported.new} new, {imported.changed} changed, {imported.unchanged} "
               f"unchanged; {imported.blank} row(s) left empty)")
    click.echo(_review_line(summary))
    if dataset is not None:
        click.echo(f"Dataset: {dataset['examples']} examples in {dataset['path']}")


def _review_line(review: dict[str, Any]) -> str:
    """The review pass rate as `show` says it."""
    if not review["reviewed"]:
        return "Review: no verdicts yet"
    return (f"Review: {review['accepted']}/{review['reviewed']} accepted ({review['pass_rate'] * 100:.1f}%), "
            f"{review['rejected']} rejected")


@cli.command(name="compare")
@click.argument("jobs", nargs=-1, required=True)
@html_options
@workspace_option
@output_options
def compare_(jobs: tuple[str, ...], html: bool, output: str | None, workspace: str | None, json_: bool,
             fmt: str | None) -> None:
    """Put jobs side by side, the lesson's quality-vs-cost table from the ledger: model, examples and seeds per
    request, temperatures, yield, duplicates, review pass rate, cost per valid example. With --html, the table and
    its charts as one self-contained page (default: <workspace>/reports/compare-JOB-JOB.html).

    \b
        batchgen compare task_api task_api_4o
        batchgen compare task_api evol_task_api --json
        batchgen compare task_api evol_task_api --html
    """
    from batchgen.dataset.compare import compare_jobs, table_rows
    from batchgen.run.tick import job_spec

    _need_html(html, output)
    session = _session(workspace, ledger="read")
    names = list(dict.fromkeys(jobs))
    figures = compare_jobs(session.ledger, [job_spec(session, name) for name in names])
    if html:
        from batchgen.dataset.html_report import comparison_page

        page = comparison_page([job.to_dict() for job in figures], table_rows(figures))
        _write_page(session, page, output, "compare-" + "-".join(names), json_)
    elif json_:
        echo_json([job.to_dict() for job in figures])
    else:
        echo_table(table_rows(figures), headers=("", *(job.job for job in figures)), fmt=fmt)


def _need_html(html: bool, output: str | None) -> None:
    if output is not None and not html:
        raise click.UsageError("-o/--output is where the --html page goes; add --html")


def _write_page(session: Any, page: str, output: str | None, name: str, json_: bool) -> None:
    """Write an HTML page to -o or to the workspace's reports/ folder, and say where."""
    from pathlib import Path

    from batchgen.dataset.html_report import default_path, write_page

    path = write_page(Path(output) if output else default_path(session.workspace.reports_dir, name), page)
    if json_:
        echo_json({"path": str(path)})
    else:
        click.echo(f"Wrote {path}")


@cli.command(name="costs")
@click.option("--job", default=None, help="Only this job's spend")
@click.option("--by", "by", default="job", show_default=True, metavar="GROUPING",
              help="job, model, day, batch, stage, cell or basis (prior or learned estimate); several joined by "
                   "commas (day,model)")
@click.option("--since", default=None, metavar="DAY", help="First day counted (YYYY-MM-DD, UTC, inclusive)")
@click.option("--until", default=None, metavar="DAY", help="Last day counted (YYYY-MM-DD, UTC, inclusive)")
@click.option("csv_", "--csv", is_flag=True, help="Print CSV (one row per line, no total)")
@workspace_option
@output_options
def costs_(job: str | None, by: str, since: str | None, until: str | None, csv_: bool, workspace: str | None,
           json_: bool, fmt: str | None) -> None:
    """Where the money went: requests, tokens (input, cached, output, reasoning), cost at batch price, the same
    tokens at standard price and the saving, estimate against actual, and the price sources; from the ledger.

    \b
        batchgen costs
        batchgen costs --by day,model --since 2026-12-01
        batchgen costs --job task_api --by cell --csv
        batchgen costs --by job,basis          # the estimate error before and after learning
    """
    from batchgen.ledger.costs import TABLE_HEADERS, csv_text, footer, parse_day, parse_groupings, table_rows
    from batchgen.output import printable

    groupings, first, last = parse_groupings(by), parse_day(since, "--since"), parse_day(until, "--until")
    session = _session(workspace, ledger="read")
    report = session.ledger.cost_report(groupings, job=job, since=first, until=last)
    if json_:
        echo_json(report.to_dict())
    elif csv_:
        click.echo(csv_text(report), nl=False)
    else:
        rows = [tuple(printable(str(value)) for value in row) for row in table_rows(report)]
        echo_table(rows, headers=(*groupings, *TABLE_HEADERS), fmt=fmt)
        for line in footer(report):
            click.echo(printable(line))


@cli.command(name="report")
@click.argument("job")
@html_options
@click.option("--samples", default=2, show_default=True, type=click.IntRange(min=0), metavar="N",
              help="Examples shown per cell (in --json and --html)")
@workspace_option
@output_options
def report_(job: str, html: bool, output: str | None, samples: int, workspace: str | None, json_: bool,
            fmt: str | None) -> None:
    """The quality of JOB stage by stage and cell by cell: requested, valid, yield, rejections, near-duplicates,
    distinct-1/2 of the human and assistant turns, words per example and per turn, lineage, review pass rate and
    cost per valid example. --json adds each stage's target and status, the flow from seeds to dataset, the cost
    by stage, day and batch (estimate against actual, batch against standard price) and sample examples per cell
    with their provenance; --html draws all of it as one self-contained page (default:
    <workspace>/reports/JOB.html) that runs no script and fetches nothing.

    \b
        batchgen report task_api
        batchgen report evol_task_api --json
        batchgen report task_api --html -o task_api.html
    """
    from batchgen.dataset.quality_report import job_report
    from batchgen.run.tick import job_spec

    _need_html(html, output)
    session = _session(workspace, ledger="read")
    spec = job_spec(session, job)
    if html or json_:
        from batchgen.dataset.full_report import full_report

        report = full_report(session.ledger, spec, session.workspace, samples)
        if html:
            from batchgen.dataset.html_report import report_page

            _write_page(session, report_page(report), output, job, json_)
        else:
            echo_json(report)
        return
    _print_report(job_report(session.ledger, spec).to_dict(), fmt)


def _print_report(report: dict[str, Any], fmt: str | None) -> None:
    """One block a stage (its line, its cells, its words, its other figures), then the job's totals."""
    from batchgen.dataset.quality_report import (
        cell_rows,
        figure_lines,
        judge_line,
        reasons_text,
        stage_line,
        text_rows,
    )

    stages = len(report["stages"])
    click.echo(f"Job {report['job']}: {report['status']} ({report['model']}, {report['format']}, {stages} "
               f"stage{'s' if stages != 1 else ''})")
    for stage in report["stages"]:
        if "judge" in stage:
            click.echo(f"\n{judge_line(stage)}\nAnswers rejected: {reasons_text(stage['reasons'])}")
            click.echo(f"Cost: {format_usd(Decimal(stage['cost_usd']))} at batch price")
            continue
        click.echo(f"\n{stage_line(stage)}")
        if stage["cells"]:
            headers, rows = cell_rows(stage["cells"], report["axes"])
            echo_table(rows, headers, fmt)
            click.echo()
        headers, rows = text_rows(stage)
        if rows:
            echo_table(rows, headers, fmt)
        else:
            click.echo("Distinct-n and lengths: do not apply to an embeddings job")
        for line in figure_lines(stage):
            click.echo(line)
    click.echo(f"\n{stage_line(report['totals'])}")
    for line in figure_lines(report["totals"]):
        click.echo(line)


@cli.command(name="cancel")
@click.argument("target")
@workspace_option
@click.option("json_", "--json", is_flag=True, help="Print [{batch, status}] as JSON")
def cancel_(target: str, workspace: str | None, json_: bool) -> None:
    """Cancel a batch by id, or every running batch of a job. Finished work is kept and collected.

    \b
        batchgen cancel task_api
        batchgen cancel batch_6a1f...
    """
    from batchgen.run.verbs import cancel

    _lock(workspace, on_wait=_wait_note(), need_ledger=True)
    cancelled = cancel(_session(workspace, ledger="existing"), target)
    if json_:
        echo_json([{"batch": batch_id, "status": status} for batch_id, status in cancelled])
        return
    for batch_id, status in cancelled:
        click.echo(f"{batch_id}: {status}")


@cli.group(name="jobs", context_settings=CONTEXT_SETTINGS)
def jobs_() -> None:
    """Jobs in the ledger."""


@jobs_.command(name="list")
@workspace_option
@output_options
def jobs_list(workspace: str | None, json_: bool, fmt: str | None) -> None:
    """List every job: status, stage, backend, budget."""
    session = _session(workspace, ledger="read")
    rows = [{k: r[k] for k in ("name", "status", "stage", "backend", "budget_usd", "created_utc")}
            for r in session.ledger.jobs()]
    echo_json(rows) if json_ else (echo_table(rows, fmt=fmt) if rows else click.echo("No jobs yet"))


@jobs_.command(name="unblock")
@click.argument("name")
@workspace_option
def jobs_unblock(name: str, workspace: str | None) -> None:
    """Give a blocked job one more round, once the cause that blocked it is fixed.

    A job ends blocked when its retries cannot help (every line failed the same way, or a round yielded nothing).
    After an unblock, the next run or tick retries the stage once; a cause that is still there blocks it again.

    \b
        batchgen jobs unblock task_api && batchgen run jobs/task_api
    """
    from batchgen.run.verbs import unblock

    _lock(workspace, on_wait=_wait_note(), need_ledger=True)
    cause = unblock(_session(workspace, ledger="existing"), name)
    click.echo(f"Unblocked job {name} (it was blocked: {cause}); the next run or tick gives it one more round")


@cli.group(name="ledger", context_settings=CONTEXT_SETTINGS)
def ledger_() -> None:
    """The SQLite ledger: where it is, its schema version, a backup, an integrity check, agreement with the
    provider."""


@ledger_.command(name="path")
@workspace_option
def ledger_path(workspace: str | None) -> None:
    """Print the ledger's path (BATCHGEN_LEDGER overrides it)."""
    from batchgen.ledger.workspace import Workspace

    click.echo(str(Workspace.resolve(workspace).ledger_path))


@ledger_.command(name="status")
@workspace_option
@output_options
def ledger_status(workspace: str | None, json_: bool, fmt: str | None) -> None:
    """Applied and pending migrations, and the number of rows in each table."""
    ledger = _session(workspace, ledger="read").ledger
    data = {"path": str(ledger.path), **ledger.migration_status(), "rows": ledger.table_counts()}
    if json_:
        echo_json(data)
        return
    click.echo(f"Ledger: {data['path']}\nMigrations applied: {', '.join(data['applied'])}; "
               f"pending: {', '.join(data['pending']) or 'none'}")
    echo_table(data["rows"].items(), headers=("table", "rows"), fmt=fmt)


@ledger_.command(name="backup")
@click.argument("target", type=click.Path(dir_okay=False))
@workspace_option
def ledger_backup(target: str, workspace: str | None) -> None:
    """Copy the ledger to TARGET with VACUUM INTO (safe while a job runs)."""
    path = _session(workspace, ledger="read").ledger.backup(target)
    click.echo(f"Backed up the ledger to {path}")


@ledger_.command(name="check")
@workspace_option
@output_options
def ledger_check(workspace: str | None, json_: bool, fmt: str | None) -> None:
    """Verify the ledger: one outcome per request, costs that add up, files that exist. Exits 1 if not clean.

    \b
        batchgen ledger check
        batchgen ledger check --json
    """
    from batchgen.ledger.check import check_ledger

    session = _session(workspace, ledger="read")
    report = check_ledger(session.ledger, session.workspace)
    if json_:
        echo_json(report.to_dict())
    else:
        for problem in report.problems:
            click.echo(f"{problem.kind}: {problem.message}")
        click.echo(report.summary())
    if not report.clean:
        click.get_current_context().exit(1)


def _reconcile_usage(job: str | None, since: str | None, until: str | None, tolerance: str, backend: str | None,
                     workspace: str | None, json_: bool, fmt: str | None) -> None:
    from batchgen.ledger.costs import parse_day
    from batchgen.run.provider_usage import ADMIN_KEY, parse_tolerance, usage_audit, usage_table

    if job is not None:
        raise BatchgenError("--usage compares the whole organization's usage with the whole ledger: drop the JOB")
    first, last, share = parse_day(since, "--since"), parse_day(until, "--until"), parse_tolerance(tolerance)
    admin_key = os.environ.get(ADMIN_KEY)
    if not admin_key:
        raise BatchgenError(f"{ADMIN_KEY} is not set: the Usage and Costs APIs answer only an admin key "
                            "(platform.openai.com, organization settings, admin keys)")
    session = _session(workspace, ledger="existing")
    chosen = backend or _usage_backend(session.ledger.job_backends())
    report = usage_audit(session.ledger, session.client(chosen), admin_key, since=first, until=last,
                         tolerance_pct=share)
    if json_:
        echo_json(report.to_dict())
    else:
        for rows, headers in usage_table(report):
            if rows:
                echo_table(rows, headers=headers, fmt=fmt)
        for note in report.notes:
            warn(f"Note: {note}")
        click.echo(report.summary())
    if not report.clean:
        click.get_current_context().exit(1)


def _usage_backend(backends: set[str]) -> str:
    if "azure" in backends:
        raise BatchgenError("Azure OpenAI has no organization Usage and Costs APIs; --usage reads OpenAI's "
                            "(pass --backend openai for jobs that ran there)")
    if len(backends) > 1:
        raise BatchgenError(f"The ledger's jobs ran on {', '.join(sorted(backends))}: choose one with --backend")
    return next(iter(backends), "embedded")


@ledger_.command(name="reconcile")
@click.argument("job", required=False)
@click.option("--usage", is_flag=True,
              help="Compare tokens per day and model, and cost per day, with the organization's Usage and Costs "
                   "APIs (needs OPENAI_ADMIN_KEY)")
@click.option("--since", default=None, metavar="DAY", help="With --usage: first day (default: the ledger's first)")
@click.option("--until", default=None, metavar="DAY", help="With --usage: last day, inclusive (default: today)")
@click.option("--tolerance", default="1", show_default=True, metavar="PCT",
              help="With --usage: a difference up to this share of the larger figure agrees")
@click.option("--backend", type=click.Choice(["embedded", "openai"]), default=None,
              help="With --usage: the provider to ask (default: the one the ledger's jobs ran on)")
@workspace_option
@output_options
def ledger_reconcile(job: str | None, usage: bool, since: str | None, until: str | None, tolerance: str,
                     backend: str | None, workspace: str | None, json_: bool, fmt: str | None) -> None:
    """Compare the ledger with the provider: each batch's status, request counts and token usage, and batches the
    provider has that the ledger has not recorded. Read-only; exits 1 if anything differs.

    With --usage, compare instead the ledger's tokens per day and model, and its money per day, with what the
    organization's Usage and Costs APIs report; spend by other tools is shown as such.

    \b
        batchgen ledger reconcile
        batchgen ledger reconcile task_api --json
        OPENAI_ADMIN_KEY=... batchgen ledger reconcile --usage --since 2026-12-01
    """
    if usage:
        _reconcile_usage(job, since, until, tolerance, backend, workspace, json_, fmt)
        return
    if since or until or backend:
        raise BatchgenError("--since, --until and --backend go with --usage")
    from batchgen.run.reconcile import audit

    session = _session(workspace, ledger="existing")
    if job is not None:
        session.ledger.job(job)  # NotFoundError for an unknown job
    report = audit(session.ledger, session.client, job)
    if json_:
        echo_json(report.to_dict())
    else:
        rows = [(b.batch, b.job, b.ledger_status, b.provider_status or "-",
                 _token_text(b.ledger_tokens), _token_text(b.provider_tokens),
                 "-" if b.ledger_usd is None else f"{format_usd(b.ledger_usd)}",
                 "; ".join(b.problems or b.notes) or "agrees") for b in report.batches]
        if rows:
            echo_table(rows, headers=("batch", "job", "ledger", "provider", "ledger tokens", "provider tokens",
                                      "ledger cost", "verdict"), fmt=fmt)
        for item in report.unrecorded:
            click.echo(f"not in the ledger: {item['batch']} of job {item['job']} ({item['status']})")
        click.echo(report.summary())
    if not report.clean:
        click.get_current_context().exit(1)


def _token_text(tokens: tuple[int, int, int] | None) -> str:
    return "-" if tokens is None else f"{tokens[0]:,} in ({tokens[1]:,} cached), {tokens[2]:,} out"


# --- the emulator: serve ---------------------------------------------------------------------------------------------

def _rate(name: str, help_: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(name, type=click.FloatRange(0, 1), default=None, help=help_)


@cli.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; non-loopback needs --token")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind")
@click.option("--state", "state", type=click.Path(file_okay=False), default=None,
              help="State directory (default: <workspace>/serve); reads <state>/config.json if present")
@click.option("--token", envvar="BATCHGEN_SERVE_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every request (also $BATCHGEN_SERVE_TOKEN)")
@click.option("--admin-key-env", default=None, metavar="NAME",
              help="The organization Usage and Costs endpoints accept only the key in $NAME (default: any "
                   "'sk-admin-...' key; other keys never open them)")
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
@_rate("--malformed-rate", "Share of answers with broken content (chat: not JSON, wrong roles, empty turns; "
                           "embeddings: a vector cut short or holding a NaN)")
@_rate("--expire-after-fraction", "Expire every batch once this share of its lines has run")
@click.option("--stuck-finalizing", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Extra time every batch stays in 'finalizing'")
@_rate("--http-error-rate", "Share of API calls answered 429/500/503 with Retry-After")
@click.option("--retry-after", type=click.FloatRange(min=0), default=None, help="Retry-After of those answers (s)")
@_rate("--drop-rate", "Share of API calls whose connection is dropped mid-answer")
@_rate("--slow-rate", "Share of API calls answered late")
@click.option("--slow-seconds", type=click.FloatRange(min=0), default=None, help="Delay of a slow answer (s)")
@click.option("--control", is_flag=True, default=None, help="Enable the /_emulator test-control API")
@click.option("--upstream", default=None, metavar="URL",
              help="Answer lines with an OpenAI-compatible server (vLLM, Ollama, llama.cpp), e.g. "
                   "http://localhost:11434/v1; its key is read from $BATCHGEN_UPSTREAM_API_KEY")
@click.option("--upstream-model", multiple=True, metavar="REQUESTED=UPSTREAM",
              help="Send model REQUESTED to the upstream as UPSTREAM (repeatable)")
@click.option("--upstream-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds to wait for an upstream answer (default 600)")
@click.option("--upstream-concurrency", type=click.IntRange(1, 256), default=None,
              help="Lines sent to the upstream at once (default 8)")
@click.option("--deployment", multiple=True, metavar="NAME=MODEL",
              help="Azure deployment NAME runs MODEL (repeatable; without any, every deployment name is accepted "
                   "and runs the model of that name)")
@click.option("--upstream-structured", type=click.Choice(["auto", "json_schema", "json_object_schema", "json_object",
                                                          "none"]), default=None,
              help="How json_schema lines reach the upstream: auto (default: probed at start), json_schema, "
                   "json_object_schema (llama-cpp-python), json_object, or none")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="Server log level")
def serve_(host: str, port: int, state: str | None, token: str | None, admin_key_env: str | None, log_level: str,
           models: str | None, limits: tuple[str, ...], **options: Any) -> None:
    """Serve the Batch API emulator: Files, Batches, chat and embeddings under /v1, for any OpenAI client, and
    under Azure OpenAI's paths (/openai/...?api-version=..., /openai/v1/...) for AzureOpenAI clients.

    State (files, batches, progress, usage) survives restarts; Ctrl-C or SIGTERM stops it cleanly. The
    organization's usage and costs (GET /v1/organization/usage/completions, /v1/organization/costs) answer an
    admin key only.

    \b
        batchgen serve                                   # http://127.0.0.1:8000/v1
        batchgen serve --time-scale 3600 --state /tmp/emu   # 24 h in 24 s
        batchgen serve --host 0.0.0.0 --token s3cret --error-rate 0.05 --http-error-rate 0.1
        batchgen serve --upstream http://localhost:11434/v1 --upstream-model gpt-4o-mini=llama3.1:8b
        batchgen serve --token s3cret --deployment batch-mini=gpt-4o-mini   # azure_endpoint=http://127.0.0.1:8000
        batchgen serve --upstream http://localhost:8080/v1 --upstream-structured json_object_schema  # llama.cpp
        OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=local python my_script.py
    """
    from pathlib import Path

    from batchgen.emulator import ConfigError, EmulatorConfig, StateInUse, check_bind, serve, serve_overrides
    from batchgen.ledger.workspace import Workspace

    state_dir = Path(state) if state else Workspace.resolve().root / "serve"
    admin_key = None
    if admin_key_env is not None:
        admin_key = os.environ.get(admin_key_env)
        if not admin_key:
            raise click.ClickException(f"--admin-key-env {admin_key_env}: ${admin_key_env} is not set")
    try:
        check_bind(host, token)
        config = EmulatorConfig.load(state_dir, "serve", serve_overrides(options, models, limits))
        answers = f"lines forwarded to {config.upstream_url}" if config.executor == "upstream" else "simulated answers"
        click.echo(f"Batch API emulator: http://{host}:{port}/v1 (state {state_dir}; {answers})", err=True)
        serve(state_dir, config, host=host, port=port, token=token, log_level=log_level, admin_key=admin_key)
    except (ConfigError, StateInUse, ValueError) as error:
        raise click.ClickException(str(error)) from error
    except OSError as error:  # the state cannot be written where it starts: a full disk, most likely
        from batchgen.disk import write_error

        raise click.ClickException(str(write_error(error, f"the emulator state {state_dir}"))) from error
