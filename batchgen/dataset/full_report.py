"""Everything `batchgen report --json` says about a job, and so everything its HTML page shows: the quality report
(`quality_report.job_report`) with what a morning check needs beside it.

- targets: per stage, its target and whether it reached it ("reached"), ended short of it ("short", with the
  ledger's shortfall: missing, top-ups, reason), is still at work ("running") or has sent nothing yet
  ("pending"); a judge stage scores and makes no examples ("judge");
- short_cells: the cells that ended below their share, and why (`ledger.cell_shortfalls`);
- flow: the seeds, each stage's valid examples against its target, and the dataset written;
- costs: by stage, by day and by batch (`ledger.cost_report`), each at batch price, at standard price, and the
  estimate of the collected batches against what they cost, with the estimate of the batches still in flight;
- samples: the first few examples of each cell of each stage, of those an export writes
  (`report.valid_examples`), each with its provenance; an embeddings example without its vector (its input and
  dimensions).

Money is fixed-point decimal text, as in the quality report. The examples are model output, untrusted: this dict
holds them as data; whoever shows them escapes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from batchgen.dataset.quality_report import job_report, money
from batchgen.dataset.report import dataset, valid_examples
from batchgen.ledger import Ledger, Workspace
from batchgen.ledger.states import ACTIVE
from batchgen.recipe.formats import EMBEDDINGS_FORMAT
from batchgen.recipe.spec import JobSpec
from batchgen.recipe.variants import cell_key

SAMPLES_PER_CELL = 2
COST_GROUPS = ("stage", "day", "batch")
_COST_FIGURES = ("requests", "answered", "input_tokens", "cached_tokens", "output_tokens", "cost_usd",
                 "standard_usd", "saving_usd", "estimated_usd", "estimated_actual_usd", "estimate_error_pct")


def full_report(ledger: Ledger, spec: JobSpec, workspace: Workspace | None = None,
                samples: int = SAMPLES_PER_CELL) -> dict[str, Any]:
    """The job's report as a plain dict (see the module docstring); `samples` examples per cell at most."""
    report = job_report(ledger, spec).to_dict()
    found = dataset(ledger, spec.name, workspace)
    report.update(seeds=len(spec.seeds), dataset=found, targets=stage_targets(ledger, spec, report),
                  short_cells=ledger.cell_shortfalls(spec.name),
                  costs=cost_figures(ledger, spec.name), samples=sample_examples(ledger, spec, samples))
    report["flow"] = flow(report)
    return report


def stage_targets(ledger: Ledger, spec: JobSpec, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per stage in the spec's order: {"stage", "target", "valid", "status", "short"} (see the module docstring)."""
    short = {row["stage"]: row for row in ledger.shortfalls(spec.name)}
    valid = {stage["name"]: stage.get("valid", 0) for stage in report["stages"]}
    active = ledger.job(spec.name)["status"] == ACTIVE
    standings = ledger.stage_standings(spec.name)
    targets = []
    for stage in spec.resolved_stages():
        have = valid.get(stage.name, 0)
        if stage.judges:
            status = "judge"
        elif stage.name in short:
            status = "short"
        elif have >= stage.target:
            status = "reached"
        else:
            status = "running" if active and stage.name in standings else "pending"
        found = short.get(stage.name)
        targets.append({"stage": stage.name, "target": 0 if stage.judges else stage.target, "valid": have,
                        "status": status, "short": None if found is None else {
                            key: found[key] for key in ("missing", "top_ups", "reason")}})
    return targets


def flow(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """seeds -> each stage that makes examples -> dataset: [{"name", "count", "target"}] (target None: seeds and
    dataset have none)."""
    steps = [{"name": "seeds", "count": report["seeds"], "target": None}]
    steps += [{"name": row["stage"], "count": row["valid"], "target": row["target"]}
              for row in report["targets"] if row["status"] != "judge"]
    written = report["dataset"]
    return [*steps, {"name": "dataset", "count": written["examples"] if written else 0, "target": None}]


def cost_figures(ledger: Ledger, job: str) -> dict[str, Any]:
    """The job's spend by stage, day and batch, and in all: {"by_stage": [...], "by_day": [...], "by_batch": [...],
    "total": {...}, "in_flight": {"batches", "estimated_usd"}}."""
    figures: dict[str, Any] = {}
    for group in COST_GROUPS:
        found = ledger.cost_report((group,), job=job)
        figures[f"by_{group}"] = [{group: line.key[group], **_cost_line(line.to_dict())} for line in found.lines]
        figures["total"] = _cost_line(found.total.to_dict())
        figures["in_flight"] = {"batches": found.in_flight["batches"],
                                "estimated_usd": money(found.in_flight["estimated_usd"])}
    return figures


def _cost_line(line: Mapping[str, Any]) -> dict[str, Any]:
    return {key: money(line[key]) if isinstance(line[key], Decimal) else line[key] for key in _COST_FIGURES}


def sample_examples(ledger: Ledger, spec: JobSpec, per_cell: int) -> list[dict[str, Any]]:
    """The first `per_cell` examples of each (stage, cell) among those an export writes, in the export's order:
    [{"stage", "cell", "example" (as stored, in the job's format), "provenance"}]."""
    taken: dict[tuple[str | None, str], int] = {}
    found: list[dict[str, Any]] = []
    if per_cell <= 0:
        return found
    for record in valid_examples(ledger, spec):
        where = (record.provenance.stage, cell_key(record.provenance.cell))
        if taken.get(where, 0) >= per_cell:
            continue
        taken[where] = taken.get(where, 0) + 1
        found.append({"stage": record.provenance.stage, "cell": dict(record.provenance.cell),
                      "example": _shown(record.example, spec.dataset_format),
                      "provenance": record.provenance.to_dict()})
    return found


def _shown(example: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """The example as a sample shows it: whole, but an embedding's vector, which only its size says anything
    about to a reader (`{"input", "dimensions"}`)."""
    if fmt != EMBEDDINGS_FORMAT:
        return dict(example)
    vector = example.get("embedding")
    return {"input": example.get("input"), "dimensions": len(vector) if isinstance(vector, list) else None}
