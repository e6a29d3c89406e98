"""`Session`: what every step of a run needs: the ledger, the workspace, one Batch API client per backend, and the
run's settings (clock, budget mode, queue limit, poll interval)."""

from __future__ import annotations

import time
from collections.abc import Callable

from batchgen.errors import BatchgenError
from batchgen.ledger import Ledger, Workspace
from batchgen.run.client import BatchClient
from batchgen.run.listing import SCAN_DAYS, ProviderBatches

BUDGET_MODES = ("worst", "expected")


class Session:
    """The ledger, the workspace and (lazily) one Batch API client per backend; close() closes the clients."""

    def __init__(self, ledger: Ledger, workspace: Workspace, *, backend: str | None = None,
                 clock: Callable[[], float] = time.time, budget_mode: str = "worst",
                 queue_limit: int | None = None, poll_interval: float | None = None, learn: bool = True):
        if budget_mode not in BUDGET_MODES:
            raise BatchgenError(f"Unknown budget mode {budget_mode!r}; use one of {', '.join(BUDGET_MODES)}")
        self.ledger = ledger
        self.workspace = workspace
        self.backend_flag = backend
        self.clock = clock
        self.budget_mode = budget_mode
        self.queue_limit = queue_limit
        self.poll_base = poll_interval
        self.learn = learn  # estimates learn from observed answers (`run/learning`); False: the priors alone
        self._clients: dict[str, BatchClient] = {}
        self._listings: dict[str, ProviderBatches] = {}

    def new_tick(self) -> None:
        """Forget what was read from the providers in the last tick."""
        self._listings.clear()

    def provider_batches(self, client: BatchClient, job: str) -> ProviderBatches:
        """The provider's batches by key, for this tick (one listing per client, shared by recovery and
        submission), read back to the job's first recorded batch, or SCAN_DAYS when none is recorded."""
        listing = self._listings.get(client.identity)
        if listing is None:
            first = self.ledger.first_batch_created_at(job)
            since = first - 1 if first is not None else self.clock() - SCAN_DAYS * 86400
            listing = self._listings[client.identity] = ProviderBatches(client, since)
        return listing

    def client(self, backend: str) -> BatchClient:
        if backend not in self._clients:
            self._clients[backend] = BatchClient(backend, emulator_dir=self.workspace.emulator_dir)
        return self._clients[backend]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
