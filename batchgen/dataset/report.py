"""What the ledger says about a job: its dataset, its status, its quality and its cost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchgen.dataset.export import ExportRecord, ExportResult, Provenance, export_dataset
from batchgen.dataset.validate import Reason, Summary
from batchgen.ledger import Ledger
from batchgen.recipe.spec import JobSpec


def valid_examples(ledger: Ledger, spec: JobSpec) -> Iterator[ExportRecord]:
    """The job's valid examples, stage by stage, each stage capped at its target, in variant order."""
    for stage in spec.resolved_stages():
        for found in ledger.valid_examples_for_export(spec.name, stage.name, stage.target):
            yield ExportRecord(found.content, spec.format, Provenance(
                custom_id=found.custom_id, job=spec.name, stage=stage.name, position=found.position,
                attempt=found.attempt, batch_id=found.batch_id, model=found.model, cell=found.cell,
                content_hash=found.content_hash))


def export_job(ledger: Ledger, spec: JobSpec, path: Path, fmt: str | None = None,
               provenance: str = "inline") -> ExportResult:
    """Write the job's dataset (default: in the job's format) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_dataset(valid_examples(ledger, spec), path, fmt or spec.format, provenance=provenance)


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


def outcomes(ledger: Ledger, job: str) -> dict[str, int]:
    return ledger.request_outcomes(job)


def dataset(ledger: Ledger, job: str) -> dict[str, Any] | None:
    """The last export made when the job finished: {"path", "examples"}, or None."""
    return ledger.last_export(job)


def failures(ledger: Ledger, job: str) -> dict[str, int]:
    """Results that are not successes, by error code (e.g. rate_limit_exceeded, batch_expired, missing)."""
    return ledger.failure_codes(job)


def faults(ledger: Ledger, job: str) -> dict[str, int]:
    """Transient faults met while polling or ticking, and batches the API refused, by kind."""
    return ledger.fault_counts(job)


def costs(ledger: Ledger, job: str) -> dict[str, Any]:
    return {"tokens": ledger.token_totals(job), "spent_usd": ledger.spent_usd(job),
            "estimated_usd": ledger.estimated_usd(job)}


def shortfalls(ledger: Ledger, job: str) -> list[dict[str, Any]]:
    """Stages that ended below their target: {"stage", "target", "missing", "top_ups", "reason"}, the last word
    on each stage (reason "max_top_ups": the top-up rounds were spent; "budget": no more fitted the budget)."""
    latest: dict[str, dict[str, Any]] = {}
    for event in ledger.shortfall_events(job):
        latest[event["stage"]] = {k: event.get(k) for k in ("stage", "target", "missing", "top_ups", "reason")}
    return list(latest.values())


def job_summary(ledger: Ledger, job: str) -> dict[str, Any]:
    row = ledger.job(job)
    return {"job": job, "dataset": dataset(ledger, job), "status": row["status"], "stage": row["stage"],
            "backend": row["backend"], "short": shortfalls(ledger, job),
            "budget_usd": Decimal(row["budget_usd"]) if row["budget_usd"] else None,
            "requests": outcomes(ledger, job), "failures": failures(ledger, job), "faults": faults(ledger, job),
            "quality": quality(ledger, job).to_dict(), **costs(ledger, job)}


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
