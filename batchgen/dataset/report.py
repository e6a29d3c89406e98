"""What the ledger says about a job: its dataset, its status, its quality and its cost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchgen.dataset.export import ExportRecord, ExportResult, Provenance, export_dataset
from batchgen.dataset.validate import Reason, Summary
from batchgen.ledger import Ledger, dec_sum
from batchgen.recipe.spec import JobSpec


def valid_examples(ledger: Ledger, spec: JobSpec) -> Iterator[ExportRecord]:
    """The job's valid examples, stage by stage, each stage capped at its target, in variant order."""
    for stage in spec.resolved_stages():
        cursor = ledger.execute(
            "SELECT e.content_json, e.custom_id, e.position, r.cell_json, e.content_hash, r.batch_id, r.attempt, "
            "s.model FROM examples e JOIN requests r ON r.custom_id = e.custom_id JOIN shards s ON s.id = r.shard_id "
            "WHERE e.job = ? AND e.stage = ? AND e.valid = 1 ORDER BY r.variant, r.attempt, e.position LIMIT ?",
            [spec.name, stage.name, stage.target])
        for content, custom_id, position, cell, digest, batch_id, attempt, model in cursor:
            yield ExportRecord(json.loads(content), spec.format, Provenance(
                custom_id=custom_id, job=spec.name, stage=stage.name, position=position, attempt=attempt,
                batch_id=batch_id, model=model, cell=json.loads(cell), content_hash=digest))


def export_job(ledger: Ledger, spec: JobSpec, path: Path, fmt: str | None = None,
               provenance: str = "inline") -> ExportResult:
    """Write the job's dataset (default: in the job's format) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_dataset(valid_examples(ledger, spec), path, fmt or spec.format, provenance=provenance)


def quality(ledger: Ledger, job: str) -> Summary:
    """The lesson's report: valid over everything generated, invalid reasons by message."""
    summary = Summary()
    for valid, category, reason, count in ledger.execute(
            "SELECT valid, category, reason, count(*) FROM examples WHERE job = ? GROUP BY valid, category, reason",
            [job]):
        if valid:
            summary.add(None, count)
        else:
            summary.add(Reason.parse(category, reason or category), count)
    return summary


def outcomes(ledger: Ledger, job: str) -> dict[str, int]:
    return dict(ledger.execute("SELECT status, count(*) FROM requests WHERE job = ? GROUP BY status ORDER BY status",
                               [job]).fetchall())


def dataset(ledger: Ledger, job: str) -> dict[str, Any] | None:
    """The last export made when the job finished: {"path", "examples"}, or None."""
    return ledger.one("SELECT json_extract(detail_json, '$.dataset') AS path, json_extract(detail_json, '$.written') "
                      "AS examples FROM events WHERE job = ? AND kind = 'done' ORDER BY id DESC LIMIT 1", [job])


def failures(ledger: Ledger, job: str) -> dict[str, int]:
    """Results that are not successes, by error code (e.g. rate_limit_exceeded, batch_expired, missing)."""
    return dict(ledger.execute(
        "SELECT coalesce(error_code, 'http_' || status_code, source), count(*) FROM results "
        "WHERE job = ? AND source != 'output' GROUP BY 1 ORDER BY 2 DESC, 1", [job]).fetchall())


def faults(ledger: Ledger, job: str) -> dict[str, int]:
    """Transient faults met while polling or ticking, and batches the API refused, by kind."""
    return dict(ledger.execute(
        "SELECT kind, count(*) FROM events WHERE job = ? AND kind IN ('poll_error', 'tick_error', 'batch_failed') "
        "GROUP BY kind ORDER BY kind", [job]).fetchall())


def costs(ledger: Ledger, job: str) -> dict[str, Any]:
    tokens = ledger.one("SELECT coalesce(sum(prompt_tokens), 0) AS prompt, coalesce(sum(cached_tokens), 0) AS cached, "
                        "coalesce(sum(completion_tokens), 0) AS completion, "
                        "coalesce(sum(reasoning_tokens), 0) AS reasoning FROM results WHERE job = ?", [job]) or {}
    spent = dec_sum(r[0] for r in ledger.execute("SELECT cost_usd FROM results WHERE job = ?", [job]))
    estimated = dec_sum(r[0] for r in ledger.execute("SELECT est_cost_usd FROM shards WHERE job = ?", [job]))
    return {"tokens": tokens, "spent_usd": spent, "estimated_usd": estimated}


def shortfalls(ledger: Ledger, job: str) -> list[dict[str, Any]]:
    """Stages that ended below their target: {"stage", "target", "missing", "top_ups", "reason"}, the last word
    on each stage (reason "max_top_ups": the top-up rounds were spent; "budget": no more fitted the budget)."""
    latest: dict[str, dict[str, Any]] = {}
    for (detail,) in ledger.execute("SELECT detail_json FROM events WHERE job = ? AND kind = 'short' ORDER BY id",
                                    [job]):
        event = json.loads(detail)
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
    where, params = ("WHERE job = ?", [job]) if job else ("", [])
    now = time.time()
    rows = []
    for b in ledger.rows(f"SELECT * FROM batches {where} ORDER BY submitted_utc", params):
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
