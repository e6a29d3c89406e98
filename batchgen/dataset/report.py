"""What the ledger says about a job: its dataset, its status, its quality and its cost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchgen.dataset.card import CardFacts, DatasetCard
from batchgen.dataset.coverage import coverage_summary, examples_by_share, recorded_coverage
from batchgen.dataset.export import ExportRecord, ExportResult, Provenance, export_dataset
from batchgen.dataset.review import review_summary
from batchgen.dataset.training_file import TrainingFileCheck
from batchgen.dataset.validate import Reason, Summary
from batchgen.errors import BatchgenError
from batchgen.ledger import Ledger, Workspace
from batchgen.ledger.states import ACTIVE
from batchgen.recipe.fine_tuning import fine_tunable_models, training_context
from batchgen.recipe.formats import EMBEDDINGS_FORMAT
from batchgen.recipe.spec import JobSpec


def valid_examples(ledger: Ledger, spec: JobSpec) -> Iterator[ExportRecord]:
    """The job's valid examples but those a reviewer rejected, stage by stage, each stage capped at its target (each
    cell's share first, see `coverage.examples_by_share`), in variant order."""
    for stage in spec.resolved_stages():
        if stage.judges:
            continue  # it scores the examples of another stage, and makes none
        for found in examples_by_share(ledger, spec, stage):
            yield ExportRecord(found.content, spec.dataset_format, Provenance(
                custom_id=found.custom_id, job=spec.name, stage=stage.name, position=found.position,
                attempt=found.attempt, batch_id=found.batch_id, model=found.model, cell=found.cell,
                content_hash=found.content_hash, parent=found.parent, root=found.root))


def export_job(ledger: Ledger, spec: JobSpec, path: Path, fmt: str | None = None, provenance: str | None = None,
               fine_tune_model: str | None = None, shared_folder: bool = False) -> ExportResult:
    """Write the job's dataset (default: in the job's format) atomically, with its dataset card beside it.

    Provenance None: in the sidecar for ChatML, inline for the others (`export.default_provenance`). A ChatML file
    is checked for fine-tuning `fine_tune_model` (default: the job's model), whose training context each example
    must fit; a model named that the fine-tuning table does not know is an error, the job's own a warning.
    `shared_folder`: `path` is in a folder of many datasets (the workspace's datasets/), so the card is named
    after the dataset rather than README.md (`dataset/card.card_path`).
    """
    fmt = dataset_format(spec, fmt)
    training = training_check(spec, fine_tune_model) if fmt == "chatml" else None
    if fine_tune_model is not None and training is None:
        raise BatchgenError(f"--fine-tune-model checks a ChatML file; this export is {fmt}: add --format chatml")
    card = DatasetCard(card_facts(ledger, spec), shared_folder)
    return export_dataset(valid_examples(ledger, spec), path, fmt, provenance=provenance, training=training,
                          card=card)


def training_check(spec: JobSpec, model: str | None = None) -> TrainingFileCheck:
    """The fine-tuning check of a ChatML export for `model` (default: the job's)."""
    context = training_context(model or spec.model)
    if model is not None and context is None:
        raise BatchgenError(f"No fine-tuning context known for {model!r}; name one of "
                            f"{', '.join(fine_tunable_models())}")
    return TrainingFileCheck(model or spec.model, context)


def card_facts(ledger: Ledger, spec: JobSpec) -> CardFacts:
    """What the dataset card says beyond the examples: the job's counts per cell, quality, cost and backend."""
    job = spec.name
    judges = {stage.name for stage in spec.resolved_stages() if stage.judges}
    cells = [row for row in ledger.cell_counts(job) if row.stage not in judges]
    return CardFacts(spec=spec, backend=ledger.job(job)["backend"], cells=cells,
                     quality=quality(ledger, job), spent_usd=ledger.spent_usd(job), tokens=ledger.token_totals(job))


def dataset_format(spec: JobSpec, fmt: str | None = None) -> str:
    """The format to write the job's dataset in: `fmt` if the job's examples fit it, by default the job's own.

    A chat job's examples convert between the chat formats; an embeddings job has the one format, `embeddings`.
    """
    native = spec.dataset_format
    if fmt is None or fmt == native:
        return native
    if native == EMBEDDINGS_FORMAT:
        raise BatchgenError(f"Job {spec.name!r} is an embeddings job: its dataset has one format, {EMBEDDINGS_FORMAT} "
                            f"(input, embedding and provenance on each line), not {fmt}; leave --format out")
    if fmt == EMBEDDINGS_FORMAT:
        raise BatchgenError(f"Job {spec.name!r} makes chat examples, which hold no embeddings; "
                            "use --format sharegpt, alpaca or chatml")
    return fmt


def quality(ledger: Ledger, job: str) -> Summary:
    """The lesson's report: valid over everything generated, invalid reasons by message."""
    summary = Summary()
    for valid, category, reason, count in ledger.example_counts_by_reason(job):
        if valid:
            summary.add(None, count)
        else:
            assert category is not None  # collect records a category with every rejected example
            summary.add(Reason.parse(category, reason or category), count)
    return summary


def lineage(ledger: Ledger, job: str) -> dict[str, dict[str, int]]:
    """Per stage: valid examples, how many name their parent, how many trace back to a seed (`show`, `report`)."""
    return ledger.lineage_by_stage(job)


def dataset(ledger: Ledger, job: str, workspace: Workspace | None = None) -> dict[str, Any] | None:
    """The dataset written when the job finished: {"path", "examples"}, or None. The path is as the ledger records it
    (relative to the workspace), or located in `workspace` when one is given."""
    found = ledger.dataset(job)
    if found is None:
        return None
    path = str(workspace.locate(found["path"])) if workspace is not None else found["path"]
    return {"path": path, "examples": found["examples"]}


def job_dir(ledger: Ledger, job: str, workspace: Workspace) -> dict[str, Any]:
    """Where the job's directory is: {"path", "missing"}; a missing one stops only work that compiles."""
    row = ledger.job(job)
    found = workspace.find_job_dir(row["job_dir"], row["job_dir_relative"])
    return {"path": str(found or row["job_dir"]), "missing": found is None}


def missing_job_dirs(ledger: Ledger, workspace: Workspace, job: str | None = None) -> list[dict[str, str]]:
    """The active jobs (of all, or the one named) whose directory is missing: [{"job", "path"}]."""
    names = [row["name"] for row in ledger.jobs(ACTIVE) if job in (None, row["name"])]
    found = [(name, job_dir(ledger, name, workspace)) for name in names]
    return [{"job": name, "path": where["path"]} for name, where in found if where["missing"]]


def job_summary(ledger: Ledger, job: str, workspace: Workspace | None = None) -> dict[str, Any]:
    """Everything `batchgen show` says about a job (its --json output); with the workspace, where its dataset and
    its job directory are (`job_dir`)."""
    row = ledger.job(job)
    summary = {"job": job, "dataset": dataset(ledger, job, workspace), "status": row["status"], "stage": row["stage"],
               "backend": row["backend"], "short": ledger.shortfalls(job), "blocked": row["blocked_reason"],
               "budget_usd": Decimal(row["budget_usd"]) if row["budget_usd"] else None,
               "requests": ledger.request_outcomes(job), "failures": ledger.failure_codes(job),
               "faults": ledger.fault_counts(job), "quality": quality(ledger, job).to_dict(),
               "lineage": lineage(ledger, job),
               "tokens": ledger.token_totals(job), "spent_usd": ledger.spent_usd(job),
               "estimated_usd": ledger.estimated_usd(job), "preview": ledger.preview_totals(job),
               "review": review_summary(ledger, job), "judged": ledger.judgment_counts(job)}
    cells = recorded_coverage(ledger, job)
    summary.update(coverage=[row.to_dict() for row in cells], cells=coverage_summary(cells),
                   short_cells=ledger.cell_shortfalls(job))
    if workspace is not None:
        summary["job_dir"] = job_dir(ledger, job, workspace)
    return summary


def batch_rows(ledger: Ledger, job: str | None = None) -> list[dict[str, Any]]:
    """One row per batch: status, completed / failed / total, age, estimated vs actual cost."""
    now = time.time()
    rows = []
    for b in ledger.batch_list(job):
        rows.append({"job": b["job"], "batch": b["id"], "status": b["status"],
                     "done": f"{b['completed']}/{b['failed']}/{b['total']}",
                     "age": _age(now - (b["created_at"] or now)), "estimated_usd": Decimal(b["est_cost_usd"]),
                     "actual_usd": Decimal(b["actual_cost_usd"]) if b["actual_cost_usd"] else None})
    return rows


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
