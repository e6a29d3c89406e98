"""`Session`: what every step of a run needs: the ledger, the workspace, one Batch API client per backend, and the
run's settings (clock, budget mode, queue limit, poll interval)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from batchgen.errors import BatchgenError
from batchgen.ledger import Ledger, Workspace
from batchgen.run.client import BatchClient

BUDGET_MODES = ("worst", "expected")


class Session:
    """The ledger, the workspace and (lazily) one Batch API client per backend; close() closes the clients."""

    def __init__(self, ledger: Ledger, workspace: Workspace, *, backend: str | None = None,
                 clock: Callable[[], float] = time.time, budget_mode: str = "worst",
                 queue_limit: int | None = None, poll_interval: float | None = None):
        if budget_mode not in BUDGET_MODES:
            raise BatchgenError(f"Unknown budget mode {budget_mode!r}; use one of {', '.join(BUDGET_MODES)}")
        self.ledger = ledger
        self.workspace = workspace
        self.backend_flag = backend
        self.clock = clock
        self.budget_mode = budget_mode
        self.queue_limit = queue_limit
        self.poll_base = poll_interval
        self._clients: dict[str, BatchClient] = {}
        # The provider's batch list as far as read in this tick, per client identity (see run/submission.py).
        self.listings: dict[str, Any] = {}

    def new_tick(self) -> None:
        """Forget what was read from the providers in the last tick."""
        self.listings.clear()

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
