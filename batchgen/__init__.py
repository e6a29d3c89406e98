"""batchgen: synthetic training data through OpenAI's Batch API, validated, and accounted to the cent.

The public Python API, the same flow as the command line::

    from batchgen import Ledger, Session, Workspace, job_summary, load_spec, plan_job, register_job, run_job

    print(plan_job(load_spec("jobs/task_api")).cost.batch_expected)   # dollars at batch price, nothing sent
    workspace = Workspace.resolve().ensure()
    with Ledger.open(workspace.ledger_path) as ledger, Session(ledger, workspace) as session:
        spec = register_job(session, "jobs/task_api")
        run_job(session, spec)
        print(job_summary(ledger, spec.name)["quality"])

Each name is imported on first use, so `import batchgen` stays cheap for the command line and for the worker
process that judges large result files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchgen._lazy import lazy_names
from batchgen._version import __version__

_EXPORTS = {
    "BackendError": "batchgen.errors",
    "BatchgenError": "batchgen.errors",
    "BudgetExceeded": "batchgen.errors",
    "JobProgress": "batchgen.run.tick",
    "JobSpec": "batchgen.recipe.spec",
    "Ledger": "batchgen.ledger",
    "LedgerError": "batchgen.errors",
    "NotFoundError": "batchgen.errors",
    "Plan": "batchgen.recipe.plan",
    "PricingError": "batchgen.errors",
    "Session": "batchgen.run.session",
    "SpecError": "batchgen.errors",
    "StageProgress": "batchgen.run.tick",
    "ValidationFailed": "batchgen.errors",
    "Workspace": "batchgen.ledger",
    "WorkspaceBusy": "batchgen.errors",
    "cancel": "batchgen.run.verbs",
    "collect_jobs": "batchgen.run.verbs",
    "compile_stage": "batchgen.recipe.compile",
    "export_job": "batchgen.dataset.report",
    "job_summary": "batchgen.dataset.report",
    "load_spec": "batchgen.recipe.loader",
    "plan_job": "batchgen.recipe.plan",
    "register_job": "batchgen.run.tick",
    "run_job": "batchgen.run.verbs",
    "submit_job": "batchgen.run.verbs",
    "tick": "batchgen.run.tick",
}

__all__ = [
    "BackendError",
    "BatchgenError",
    "BudgetExceeded",
    "JobProgress",
    "JobSpec",
    "Ledger",
    "LedgerError",
    "NotFoundError",
    "Plan",
    "PricingError",
    "Session",
    "SpecError",
    "StageProgress",
    "ValidationFailed",
    "Workspace",
    "WorkspaceBusy",
    "__version__",
    "cancel",
    "collect_jobs",
    "compile_stage",
    "export_job",
    "job_summary",
    "load_spec",
    "plan_job",
    "register_job",
    "run_job",
    "submit_job",
    "tick",
]


__getattr__ = lazy_names(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return list(__all__)


if TYPE_CHECKING:
    from batchgen.dataset.report import export_job, job_summary
    from batchgen.errors import (
        BackendError,
        BatchgenError,
        BudgetExceeded,
        LedgerError,
        NotFoundError,
        PricingError,
        SpecError,
        ValidationFailed,
        WorkspaceBusy,
    )
    from batchgen.ledger import Ledger, Workspace
    from batchgen.recipe.compile import compile_stage
    from batchgen.recipe.loader import load_spec
    from batchgen.recipe.plan import Plan, plan_job
    from batchgen.recipe.spec import JobSpec
    from batchgen.run.session import Session
    from batchgen.run.tick import JobProgress, StageProgress, register_job, tick
    from batchgen.run.verbs import cancel, collect_jobs, run_job, submit_job
