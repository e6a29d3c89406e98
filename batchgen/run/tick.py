"""`tick()`: one idempotent, non-blocking pass that moves every active job as far forward as it can.

For each job, in order: settle what an interrupted submission left behind; compile the current stage if it has no
shards yet; submit pending shards (within the budget and the queue); poll batches that are due; collect batches
that ended; schedule retries or a top-up; open the next stage or, after the last one, export the dataset. Each step
writes what it is about to do to the ledger before it calls the API, so a process that dies anywhere can be started
again without spending twice or losing a result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchgen.crashpoints import crash_point
from batchgen.dataset.report import export_job
from batchgen.errors import BatchgenError, JobDirMissing, SpecError
from batchgen.ledger.jobs import JobFiles
from batchgen.ledger.states import ACTIVE, BLOCKED, CANCELLED, DONE, PREVIEWED
from batchgen.recipe.loader import load_spec, resolve_job_dir
from batchgen.recipe.spec import JOB_FILE, JobSpec, ResolvedStage
from batchgen.run import shards
from batchgen.run.admission import shard_limits, top_up_budget
from batchgen.run.client import BatchClient, choose_backend, served_locally
from batchgen.run.collect import collect_batch
from batchgen.run.dead_ends import DeadEnd
from batchgen.run.learning import reprice_pending
from batchgen.run.polling import poll_due
from batchgen.run.recovery import recover_submissions
from batchgen.run.session import Session
from batchgen.run.submission import submit_pending


@dataclass
class StageProgress:
    """Where one stage of a job stands after a tick: what a progress display draws for it."""

    name: str
    target: int | None  # valid examples the stage wants (None when the job's spec could not be read)
    requests: int = 0  # request lines compiled for the stage so far, every attempt (retries and top-ups too)
    answered: int = 0  # of those: collected, or counted completed or failed by the provider in a running batch
    batches: dict[str, int] = field(default_factory=dict)  # the stage's batches by status
    valid_examples: int = 0
    judged: int | None = None  # of a judge stage: the examples it has scored (it makes none of its own)


@dataclass
class JobProgress:
    """Where a job stands after a tick."""

    job: str
    stage: str | None
    status: str
    requests: int = 0
    finished: int = 0
    batches: dict[str, int] = field(default_factory=dict)
    submitted_now: int = 0
    collected_now: int = 0
    valid_examples: int = 0
    spent_usd: Decimal = Decimal(0)
    dataset: str | None = None
    waiting_for_budget: str | None = None
    error: str | None = None
    pending_shards: int = 0  # compiled and waiting to be submitted (a stage's first shards, retries, top-ups)
    short: list[str] = field(default_factory=list)  # stages that ended below their target
    short_cells: int = 0  # axis cells that ended below their share of their stage's target
    blocked: str | None = None  # the dead end the job met, when it ended blocked
    stages: list[StageProgress] = field(default_factory=list)  # every stage of the job, in order
    budget_usd: Decimal | None = None
    committed_usd: Decimal = Decimal(0)  # spent plus batches in flight, as the budget guard counts them

    @property
    def done(self) -> bool:
        return self.status != ACTIVE

    @property
    def ended_short(self) -> bool:
        """The job has ended short of its target: a stage below it, a cell below its share, or blocked at a dead
        end."""
        return self.done and (bool(self.short) or bool(self.short_cells) or self.blocked is not None)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "done": self.done, "ended_short": self.ended_short}


# -- jobs ----------------------------------------------------------------------------------------------------


def register_job(session: Session, job_ref: str | Path) -> JobSpec:
    """Load a job directory and make sure the ledger knows it (a changed job.toml is refused, unless the job was
    only previewed so far: then it starts now).

    A job the ledger knows whose directory is gone (`job_ref` names its old place, or its name) is restored from the
    ledger instead: its batches are still collected and its dataset exported, but nothing new is compiled.
    """
    ledger = session.ledger
    job_dir = resolve_job_dir(job_ref)
    if not (job_dir / JOB_FILE).is_file():
        bare_name = Path(job_ref).parent == Path(".")
        known = ledger.job_with_dir(str(job_dir.resolve())) or (ledger.find_job(job_dir.name) if bare_name else None)
        if known is not None:
            check_backend(session, known)
            return job_spec(session, known["name"])
    spec = load_spec(job_dir)
    budget = str(spec.budget_usd) if spec.budget_usd is not None else None
    with ledger.transaction():
        row = ledger.find_job(spec.name)
        spec.served_locally(served_locally(row["backend"] if row is not None and row["status"] != PREVIEWED
                                           else choose_backend(session.backend_flag, spec.backend)))
        if row is None:
            backend = choose_backend(session.backend_flag, spec.backend)
            ledger.insert_job(spec.name, spec_hash=spec.spec_hash, spec_json=spec.model_dump_json(by_alias=True),
                              job_dir=str(spec.job_dir.resolve()), status=ACTIVE, stage=spec.stage().name,
                              backend=backend, budget_usd=budget)
            ledger.event("job_registered", job=spec.name, backend=backend, spec_hash=spec.spec_hash)
        elif row["status"] == PREVIEWED:
            start_previewed(session, spec, budget)
        else:
            check_same_spec(spec, row)
            check_backend(session, row)
            ledger.set_job(spec.name, budget_usd=budget)
        keep_job_dir(session, spec)
    return spec


def start_previewed(session: Session, spec: JobSpec, budget: str | None) -> None:
    """Start a job that was only previewed: as its files are now (a preview is there to find a prompt to fix, so a
    changed spec is no conflict), on the backend chosen now (a preview on a paid backend does not make the run
    spend there unasked)."""
    backend = choose_backend(session.backend_flag, spec.backend)
    session.ledger.set_job(spec.name, spec_hash=spec.spec_hash, spec_json=spec.model_dump_json(by_alias=True),
                           status=ACTIVE, stage=spec.stage().name, backend=backend, budget_usd=budget)
    session.ledger.event("job_registered", job=spec.name, backend=backend, spec_hash=spec.spec_hash)


def check_same_spec(spec: JobSpec, row: dict[str, Any]) -> None:
    """SpecError unless the job's files are the ones the ledger's job was started from."""
    if row["spec_hash"] != spec.spec_hash:
        raise SpecError(f"Job {spec.name!r} was started from a different job.toml, templates or seeds "
                        f"(spec {row['spec_hash'][:12]}, now {spec.spec_hash[:12]}); restore them, or give the "
                        "changed job a new name")


def check_backend(session: Session, row: dict[str, Any]) -> None:
    """BatchgenError if --backend names another backend than the one the job runs on."""
    if session.backend_flag and session.backend_flag != row["backend"]:
        raise BatchgenError(f"Job {row['name']!r} runs on backend {row['backend']!r}; it cannot switch to "
                            f"{session.backend_flag!r} halfway")


def job_spec(session: Session, name: str) -> JobSpec:
    """The spec of a job the ledger knows: loaded from its job directory where that is found now (checked against
    the ledger), else restored from what the ledger kept (see `JobSpec.restored`)."""
    row = session.ledger.job(name)
    found = session.workspace.find_job_dir(row["job_dir"], row["job_dir_relative"])
    if found is None:
        return restore_spec(session, row)
    spec = load_spec(found).served_locally(served_locally(row["backend"]))
    if row["status"] != PREVIEWED:  # a job only previewed may change until it starts
        check_same_spec(spec, row)
    if not session.ledger.read_only:
        with session.ledger.transaction():
            keep_job_dir(session, spec)
    return spec


def restore_spec(session: Session, row: dict[str, Any]) -> JobSpec:
    """The job's spec from the ledger alone, for a job whose directory is gone."""
    kept = session.ledger.job_files(row["name"])
    spec = JobSpec.recorded(row["spec_json"])
    return spec.restored(Path(row["job_dir"]), row["spec_hash"], kept.seeds if kept else (),
                         kept.price_file if kept else None,
                         kept.checks if kept else None).served_locally(served_locally(row["backend"]))


def check_files(spec: JobSpec) -> dict[str, str]:
    """The text of each file the job's rule hooks name, by the name the job gives it (read from the job directory;
    one error line when a file cannot be read)."""
    if spec.detached:
        return dict(spec.check_sources)
    files = {}
    for check in spec.validate_.checks:
        name = check.rsplit(":", 1)[0]
        try:
            files[name] = (spec.job_dir / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise BatchgenError(f"Cannot read {spec.job_dir / name}, named by validate.checks: {error}") from None
    return files


def keep_job_dir(session: Session, spec: JobSpec) -> None:
    """Record where the job directory is now (also from the project folder) and what collecting the job's batches
    needs of it, so that they can be collected, priced and exported after the directory moved or is gone."""
    files = JobFiles(spec.seeds, spec.price_file, check_files(spec))
    session.ledger.keep_job_dir(spec.name, job_dir=str(spec.job_dir.resolve()),
                                relative=session.workspace.project_relative(spec.job_dir), files=files)


# -- the pass ------------------------------------------------------------------------------------------------


def tick(session: Session, names: Iterable[str] | None = None) -> list[JobProgress]:
    """One pass over the named jobs (default: every active or cancelling job); a job that fails is reported in
    its progress (`error`) and the others go on."""
    ledger = session.ledger
    if names is not None:
        rows = [ledger.job(n) for n in names]
    else:
        rows = ledger.jobs(ACTIVE) + [r for r in ledger.jobs(CANCELLED) if ledger.uncollected_batches(r["name"])]
    reports = []
    for row in rows:
        try:
            reports.append(advance(session, job_spec(session, row["name"])))
        except BatchgenError as error:
            with ledger.transaction():
                ledger.event("tick_error", job=row["name"], message=str(error))
            report = progress(session, row["name"])  # without the spec: the stages the ledger knows
            report.error = str(error)
            reports.append(report)
    return reports


def advance(session: Session, spec: JobSpec, *, submit: bool = True) -> JobProgress:
    """Move one job forward as far as it can go now (with submit=False: poll, collect and plan retries only).

    Work that needs the job directory (a compile) and finds it gone raises JobDirMissing, but only after the job's
    batches were polled and collected: what was submitted is never held up by it, and the job stays as it was.
    """
    ledger = session.ledger
    row = ledger.job(spec.name)
    settled = row["status"] == CANCELLED and not ledger.uncollected_batches(spec.name)
    if row["status"] not in (ACTIVE, CANCELLED) or settled:
        return progress(session, spec.name, spec)
    stage = spec.stage(row["stage"])
    client = session.client(row["backend"])
    session.new_tick()
    recover_submissions(session, client, spec, resume=submit and row["status"] == ACTIVE)
    submitted, blocked, missing = 0, None, None
    if row["status"] == ACTIVE:
        try:
            ensure_compiled(session, spec, stage)
            if submit:
                submitted, blocked = submit_pending(session, client, spec, row)
        except JobDirMissing as error:
            missing = error
    poll_due(session, client, spec.name)
    collected = collect_ended(session, client, spec)
    if collected:
        reprice_pending(ledger, spec, learn=session.learn)
    if missing is None and row["status"] == ACTIVE and not busy(session, spec, stage):
        missing = schedule_more(session, spec, stage)
    if missing is not None:
        raise missing
    next_stage_or_finish(session, spec, stage)
    result = progress(session, spec.name, spec)
    result.submitted_now, result.collected_now, result.waiting_for_budget = submitted, collected, blocked
    return result


def schedule_more(session: Session, spec: JobSpec, stage: ResolvedStage) -> JobDirMissing | None:
    """Retries of what failed in the stage, or else a top-up of a stage short of its target; a dead end blocks the
    job. The JobDirMissing that stops a compile is returned, for the caller to raise once the tick is done."""
    ledger = session.ledger
    limits = shard_limits(session, spec)
    try:
        if not shards.schedule_retries(ledger, session.workspace, spec, stage, limits, learn=session.learn) \
                and not ledger.uncollected_batches(spec.name):
            shards.schedule_top_up(ledger, session.workspace, spec, stage, limits,
                                   lambda: top_up_budget(session, spec, stage), learn=session.learn)
    except DeadEnd as cause:
        block(session, spec, str(cause))
    except JobDirMissing as error:
        return error
    return None


def block(session: Session, spec: JobSpec, cause: str) -> None:
    """End the job `blocked`: nothing more is submitted for it; its cause is one line."""
    with session.ledger.transaction():
        session.ledger.set_job(spec.name, status=BLOCKED, blocked_reason=cause)
        session.ledger.event("blocked", job=spec.name, cause=cause)


def ensure_compiled(session: Session, spec: JobSpec, stage: ResolvedStage) -> None:
    """Compile the stage once, with shards no larger than the queued-token cap."""
    shards.ensure_compiled(session.ledger, session.workspace, spec, stage, shard_limits(session, spec),
                           learn=session.learn)


def collect_ended(session: Session, client: BatchClient, spec: JobSpec) -> int:
    ended = session.ledger.ended_uncollected(spec.name)
    if ended and spec.detached and session.ledger.job_files(spec.name) is None:
        raise JobDirMissing(spec.name, spec.job_dir, "collecting its batches (this ledger was last written by an "
                                                     "older batchgen, which kept no copy of the seeds and prices)")
    for batch in ended:
        collect_batch(session.ledger, client, session.workspace, spec, batch)
    return len(ended)


# -- stages and the end --------------------------------------------------------------------------------------


def busy(session: Session, spec: JobSpec, stage: ResolvedStage) -> bool:
    """Whether the stage has shards not yet collected; a judge stage's source counts with it (its top-ups)."""
    stages = [stage.name] + ([stage.source] if stage.judges and stage.source is not None else [])
    return any(session.ledger.open_shards(spec.name, name) for name in stages)


def next_stage_or_finish(session: Session, spec: JobSpec, stage: ResolvedStage) -> None:
    ledger = session.ledger
    if busy(session, spec, stage) or ledger.uncollected_batches(spec.name):
        return
    row = ledger.job(spec.name)
    names = [s.name for s in spec.resolved_stages()]
    position = names.index(stage.name)
    with ledger.transaction():
        if position + 1 < len(names) and row["status"] == ACTIVE:
            ledger.set_job(spec.name, stage=names[position + 1])
            ledger.event("stage_opened", job=spec.name, stage=names[position + 1])
            crash_point("stage")
            return
    for judge in (s for s in spec.resolved_stages() if s.judges):  # a judge blocked at a dead end did not score
        shards.reject_unscored(ledger, spec, judge)                 # what its last request showed: not exported
    exported = export_job(ledger, spec, session.workspace.datasets_dir / f"{spec.name}.{spec.dataset_format}.jsonl",
                          shared_folder=True)
    path = session.workspace.stored(exported.path)
    with ledger.transaction():
        if row["status"] == ACTIVE:
            ledger.set_job(spec.name, status=DONE)
        ledger.record_dataset(spec.name, path, exported.written, exported.sha256)
        ledger.event("done", job=spec.name, dataset=path, written=exported.written, sha256=exported.sha256)
        crash_point("stage")


def progress(session: Session, name: str, spec: JobSpec | None = None) -> JobProgress:
    """Where the job stands now, from the ledger; with its spec, every stage is listed with its target, also the
    ones not opened yet."""
    ledger = session.ledger
    job = ledger.job(name)
    exported = ledger.dataset(name)
    return JobProgress(name, job["stage"], job["status"], ledger.request_count(name), ledger.result_count(name),
                       ledger.batch_status_counts(name), valid_examples=ledger.valid_example_count(name),
                       spent_usd=ledger.spent_usd(name),
                       dataset=str(session.workspace.locate(exported["path"])) if exported else None,
                       pending_shards=ledger.pending_shard_count(name) if job["status"] == ACTIVE else 0,
                       short=[s["stage"] for s in ledger.shortfalls(name)],
                       short_cells=len(ledger.cell_shortfalls(name)), blocked=job["blocked_reason"],
                       stages=stage_progress(session, name, spec),
                       budget_usd=None if job["budget_usd"] is None else Decimal(job["budget_usd"]),
                       committed_usd=ledger.committed_usd(name, session.budget_mode))


def stage_progress(session: Session, name: str, spec: JobSpec | None) -> list[StageProgress]:
    """The spec's stages in order (then any the ledger knows that the spec does not name), each with what the
    ledger holds of it; without the spec, only the stages that have requests, and no targets."""
    standings = session.ledger.stage_standings(name)
    stages = spec.resolved_stages() if spec is not None else []
    targets: dict[str, int | None] = {stage.name: stage.target for stage in stages}
    judges = {stage.name for stage in stages if stage.judges}
    names = list(targets) + [stage for stage in standings if stage not in targets]
    found = [StageProgress(stage, targets.get(stage), **standings.get(stage, {})) for stage in names]
    for stage in found:
        if stage.name in judges:
            stage.judged = session.ledger.judged_count(name, stage.name)
    return found
