"""`batchgen ledger reconcile`: does the ledger agree with what the provider says about every batch?

For each batch the ledger recorded (of one job, or all), the provider's batch is retrieved and compared:

- status: a collected batch has the status the provider reports; a batch not collected yet is only noted;
- requests: the provider's `request_counts.total` is the number of requests the ledger sent in the batch, and
  its `completed` the number of output-file rows the ledger recorded;
- tokens: the provider's `usage` (input, cached input, output) equals the sum over the batch's result rows
  (the provider sums successful rows; the ledger's error rows carry no tokens); batches created before the
  provider reported usage are noted, not compared;
- money: the provider's usage priced at batch rates, next to the ledger's exact cost. Tokens decide agreement: a
  model with a long-context tier is priced per request, which a batch-level sum cannot repeat;
- prices: the batch's results priced again at today's price; a difference from what was recorded when they were
  collected (a price or a price file changed) is noted with both sources. Records are never rewritten.

Then the provider's batch list is searched for batches that carry a key of this ledger's submissions but are not
recorded (a submission that crashed after the create; the next `tick` adopts them). Read-only: nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batchgen.errors import BackendError
from batchgen.ledger import TERMINAL, Ledger
from batchgen.money import format_usd
from batchgen.recipe.pricing import ModelPrice
from batchgen.run.client import BatchClient


@dataclass
class BatchAudit:
    batch: str
    job: str
    ledger_status: str
    provider_status: str | None = None
    ledger_tokens: tuple[int, int, int] | None = None  # input, cached input, output
    provider_tokens: tuple[int, int, int] | None = None
    ledger_usd: Decimal | None = None
    provider_usd: Decimal | None = None
    repriced_usd: Decimal | None = None  # the results at today's price, when that differs from what was recorded
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "differs" if self.problems else ("agrees" if not self.notes else "noted")

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "job": self.job, "verdict": self.verdict,
                "ledger_status": self.ledger_status, "provider_status": self.provider_status,
                "ledger_tokens": _tokens(self.ledger_tokens), "provider_tokens": _tokens(self.provider_tokens),
                "ledger_usd": self.ledger_usd, "provider_usd": self.provider_usd, "repriced_usd": self.repriced_usd,
                "problems": self.problems, "notes": self.notes}


@dataclass
class Audit:
    batches: list[BatchAudit] = field(default_factory=list)
    unrecorded: list[dict[str, Any]] = field(default_factory=list)  # {"batch", "job", "status"}

    @property
    def clean(self) -> bool:
        return not self.unrecorded and all(not b.problems for b in self.batches)

    def summary(self) -> str:
        agree = sum(1 for b in self.batches if not b.problems)
        text = f"{agree} of {len(self.batches)} batch(es) agree with the provider"
        if self.unrecorded:
            jobs = " ".join(sorted({u["job"] for u in self.unrecorded}))
            text += (f"; {len(self.unrecorded)} batch(es) at the provider are not in the ledger yet: "
                     f"'batchgen run {jobs}' adopts them instead of paying for them again")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "summary": self.summary(), "batches": [b.to_dict() for b in self.batches],
                "unrecorded": self.unrecorded}


def _tokens(tokens: tuple[int, int, int] | None) -> dict[str, int] | None:
    return None if tokens is None else dict(zip(("input", "cached", "output"), tokens, strict=True))


def audit(ledger: Ledger, client_for: Callable[[str], BatchClient], job: str | None = None) -> Audit:
    """Compare every recorded batch (of `job`, or of all jobs) with the provider; `client_for(backend)` gives the
    client of a backend name ("embedded", "openai", "azure")."""
    report = Audit()
    rows = ledger.batches_with_model(job)
    for row in rows:
        report.batches.append(_audit_batch(ledger, client_for(_backend(row["backend"])), row))
    backends = {_backend(row["backend"]) for row in rows} | ledger.job_backends(job)
    for backend in sorted(backends):
        report.unrecorded += _unrecorded(ledger, client_for(backend), job)
    return report


def _backend(identity: str) -> str:
    """The backend name of a recorded identity ("embedded", "openai:<base url>")."""
    return identity.split(":", 1)[0]


def _audit_batch(ledger: Ledger, client: BatchClient, row: dict[str, Any]) -> BatchAudit:
    found = BatchAudit(row["id"], row["job"], row["status"])
    if client.identity != row["backend"]:
        found.problems.append(f"submitted to {row['backend']}, but this command reaches {client.identity} "
                              "(set OPENAI_BASE_URL / the Azure settings as they were)")
        return found
    try:
        remote = client.retrieve(row["id"]).model_dump(mode="json")
    except BackendError as error:
        if error.status_code == 404:
            found.problems.append("the provider does not know this batch")
            return found
        raise
    found.provider_status = remote.get("status")
    if not row["collected"]:
        found.notes.append("not collected yet" if found.provider_status in TERMINAL
                           else f"still {found.provider_status} at the provider")
        return found
    if found.provider_status != row["status"]:
        found.problems.append(f"status: ledger {row['status']}, provider {found.provider_status}")
    counts = remote.get("request_counts") or {}
    sent = ledger.requests_sent(row["id"])
    outputs = ledger.output_results(row["id"])
    if row["status"] != "failed":
        if counts.get("total") is not None and counts["total"] != sent:
            found.problems.append(f"requests: ledger sent {sent}, provider counts {counts['total']}")
        if counts.get("completed") is not None and counts["completed"] != outputs:
            found.problems.append(f"completed: ledger recorded {outputs}, provider counts {counts['completed']}")
    found.ledger_tokens = ledger.batch_token_sums(row["id"])
    found.ledger_usd = ledger.batch_spent_usd(row["id"])
    usage = remote.get("usage")
    if not usage:
        found.notes.append("the provider reports no usage for this batch")
        return found
    found.provider_tokens = (int(usage.get("input_tokens") or 0),
                             int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0),
                             int(usage.get("output_tokens") or 0))
    price = ledger.job_price(row["job"], row["model"])
    found.provider_usd = price.cost(*found.provider_tokens)
    _repriced(ledger, row["id"], price, found)
    if found.provider_tokens != found.ledger_tokens:
        names = ("input", "cached input", "output")
        found.problems += [f"{name} tokens: ledger {ours:,}, provider {theirs:,}" for name, ours, theirs
                           in zip(names, found.ledger_tokens, found.provider_tokens, strict=True) if ours != theirs]
    return found


def _repriced(ledger: Ledger, batch_id: str, price: ModelPrice, found: BatchAudit) -> None:
    """A note when the batch's results, priced again today, cost other than what was recorded when they were
    collected (a price changed, or the price file): the record stands; reconcile only says so."""
    rows = ledger.batch_result_usage(batch_id)
    recorded = sum((Decimal(cost) for *_, cost, _ in rows), Decimal(0))
    today = sum((price.cost(prompt, cached, completion) for prompt, cached, completion, *_ in rows), Decimal(0))
    if today != recorded:
        sources = sorted({source for *_, source in rows if source})
        found.repriced_usd = today
        found.notes.append(f"priced {format_usd(recorded)} when collected ({'; '.join(sources) or 'no source'}); "
                           f"today's price gives {format_usd(today)} ({price.source}); the record stands")


def _unrecorded(ledger: Ledger, client: BatchClient, job: str | None) -> list[dict[str, Any]]:
    """Provider batches made for this ledger's jobs (a submission key it wrote, or `metadata.batchgen_job` naming one
    of its jobs, as after a ledger was restored from a backup) that the ledger has not recorded."""
    keys = ledger.submission_keys(job)
    names = {job} if job else {row["name"] for row in ledger.jobs()}
    known = ledger.recorded_batch_ids()
    missing = []
    for batch in client.list_batches():
        metadata = batch.metadata or {}
        owner = keys.get(metadata.get("batchgen_key", "")) or (
            metadata.get("batchgen_job") if metadata.get("batchgen_key") and metadata.get("batchgen_job") in names
            else None)
        if owner is not None and batch.id not in known:
            missing.append({"batch": batch.id, "job": owner, "status": batch.status})
    return missing
