"""`EmulatorControl`: a small Python handle, built on urllib, for the emulator's test-control API under
`/_emulator/` (see `batchgen.emulator.control` for the routes).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

TERMINAL = ("failed", "completed", "expired", "cancelled")


class ControlError(RuntimeError):
    """The control API answered with an error."""


class EmulatorControl:
    """Drives an emulator from tests: clock, config and faults, forced states, waiting for a status."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        root = base_url.rstrip("/")
        self.root = root[:-3] if root.endswith("/v1") else root
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.root + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                detail = error.read().decode("utf-8", "replace")
            raise ControlError(f"{method} {path}: HTTP {error.code} {detail}") from None

    def state(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_emulator/state"))

    def now(self) -> float:
        return float(self.state()["now"])

    def advance(self, seconds: float, timeout: float = 10.0) -> float:
        """Move emulated time forward and let the work that became due run; returns the new now."""
        return float(self._call("POST", "/_emulator/clock", {"advance": seconds, "timeout": timeout})["now"])

    def set_time(self, when: float, timeout: float = 10.0) -> float:
        return float(self._call("POST", "/_emulator/clock", {"set": when, "timeout": timeout})["now"])

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change config keys live (fault rates, latencies, limits, time_scale)."""
        return dict(self._call("POST", "/_emulator/config", changes)["config"])

    def settle(self, timeout: float = 10.0) -> bool:
        return bool(self._call("POST", "/_emulator/settle", {"timeout": timeout})["settled"])

    def expire_now(self, batch_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/_emulator/batches/{batch_id}/force", {"action": "expire"}))

    def stuck_finalizing(self, batch_id: str, seconds: float) -> dict[str, Any]:
        return dict(self._call("POST", f"/_emulator/batches/{batch_id}/force",
                               {"action": "stuck_finalizing", "seconds": seconds}))

    def adjust_usage(self, day: str, model: str, *, input_tokens: int = 0, cached_tokens: int = 0,
                     output_tokens: int = 0, requests: int = 0, batch: bool = True,
                     cost_usd: str = "0") -> dict[str, Any]:
        """Plant a usage record on `day` (YYYY-MM-DD), so the organization's usage differs from what was run;
        numbers may be negative. `cost_usd` is a decimal string (exact)."""
        return dict(self._call("POST", "/_emulator/usage/adjust", {
            "day": day, "model": model, "input_tokens": input_tokens, "cached_tokens": cached_tokens,
            "output_tokens": output_tokens, "requests": requests, "batch": batch, "cost_usd": str(cost_usd)}))

    def batch(self, batch_id: str) -> dict[str, Any]:
        """The batch as `GET /v1/batches/{id}` shows it, but never subject to injected HTTP faults."""
        return dict(self._call("GET", f"/_emulator/batches/{batch_id}"))

    def wait_for(self, batch_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 30.0) -> dict[str, Any]:
        """Poll (without advancing the clock) until the batch reaches one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            batch = self.batch(batch_id)
            if batch["status"] in statuses:
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is {batch['status']}, not {'/'.join(statuses)}")
            time.sleep(0.02)
