"""The emulator's core: stores, clock, executor and a worker thread that moves batches forward.

The worker runs passes over the active batches while the server lives; every API call that reads batches asks for
a fresh pass first (bounded wait), so state catches up lazily as well. A new process on the same state directory
recovers partial progress and carries on.

A step the disk refuses (full, over quota, at the file size limit) leaves its batch as it was; the worker logs one
line naming what ran out and the file, and tries again every few seconds and on each call that reads batches.
Until a pass gets through, those calls answer a 500 that says the emulator's disk is full, rather than a state that
is not moving; once there is room the batches go on from where they were.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchgen.emulator import ids
from batchgen.emulator.apierror import APIError, bad_request, disk_full
from batchgen.emulator.batches import BatchRecord, BatchStore, Run
from batchgen.emulator.clock import Clock
from batchgen.emulator.config import ConfigError, EmulatorConfig
from batchgen.emulator.executor import Executor, FaultyExecutor, close_executor
from batchgen.emulator.files import FileStore
from batchgen.emulator.fsutil import out_of_space
from batchgen.emulator.lifecycle import Lifecycle
from batchgen.emulator.runner import Runner
from batchgen.emulator.simulate import SimulateExecutor
from batchgen.emulator.tokencount import TokenCounter
from batchgen.emulator.usage import Pricer, UsageRecord, UsageStore, answer_tokens
from batchgen.emulator.validate import AZURE_KEY, operation

ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations",
             "/v1/images/generations", "/v1/images/edits", "/v1/videos")
_SLICE = 0.15
_MAX_SLEEP = 0.5
_STALLED_RETRY = 2.0  # real seconds between two tries of a step the disk refused
_STALLED_SYNC = 5.0  # the longest a read waits for the pass that tells whether there is room again
log = logging.getLogger("batchgen.emulator")
# set when the engine starts
_FIXED_KEYS = ("executor", "upstream_url", "upstream_timeout", "upstream_concurrency", "upstream_structured")


class Engine:
    """Files, batches and their progress under one state directory."""

    def __init__(self, state_dir: str | Path, config: EmulatorConfig, executor: Executor | None = None,
                 lock_timeout: float = 10.0) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock_state(self.state_dir, lock_timeout)
        try:
            self._open_state(config, executor)
        except BaseException:  # a full disk: the state stays free for the next try
            os.close(self._lock_fd)
            self._lock_fd = None
            raise
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._started_passes = 0
        self._done_passes = 0
        self._idle = False
        self._turn = 0
        self._stalled: OSError | None = None  # the write the disk refused in the last pass
        self._thread: threading.Thread | None = None

    def _open_state(self, config: EmulatorConfig, executor: Executor | None) -> None:
        """The stores on the state directory, the executor, and recovery of the batches a stop interrupted."""
        self.config = config
        self.clock = Clock(self.state_dir, config.time_scale)
        self.files = FileStore(self.state_dir)
        self.batches = BatchStore(self.state_dir)
        self.counter = TokenCounter()
        inner = executor or self._executor()
        self.executor = FaultyExecutor(inner, lambda: self.config, self.counter)
        self.usage = UsageStore(self.state_dir)
        self.pricer = Pricer(free=inner.name == "upstream")  # an upstream's answers cost nothing here
        self.runner = Runner(self.files, self.executor, lambda: self.config.seed, self.batches.save, self.clock.now,
                             self.usage, self.pricer.cost)
        self.lifecycle = Lifecycle(self.batches, self.files, self.runner, self.counter, lambda: self.config)
        for record in self.batches.all():
            if record.status in ("in_progress", "finalizing", "cancelling"):
                self.runner.recover(record)
            elif record.status in ("failed", "completed", "expired", "cancelled"):
                self.runner.cleanup(record)

    def _executor(self) -> Executor:
        """The executor the config names."""
        if self.config.executor == "upstream":
            from batchgen.emulator.upstream import UpstreamExecutor

            return UpstreamExecutor(lambda: self.config)
        return SimulateExecutor(lambda: self.config, self.counter)

    # -- worker ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="batchgen-emulator-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the worker and release the state directory; idempotent."""
        self._stop.set()
        self.runner.halt()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        close_executor(self.executor)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def poke(self) -> None:
        self._wake.set()

    def sync(self, timeout: float = 0.25) -> bool:
        """Wait (bounded) for a pass that started after this call; False on timeout or without a worker."""
        if self._thread is None:
            return False
        with self._cond:
            target = self._started_passes + 1
            self._wake.set()
            return self._cond.wait_for(lambda: self._done_passes >= target or self._stop.is_set(), timeout)

    def settle(self, timeout: float = 10.0) -> bool:
        """Run passes until nothing is due right now; False if still busy at the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sync(min(1.0, max(0.01, deadline - time.monotonic()))):
                continue
            if self._idle:
                return True
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._started_passes += 1
                number = self._started_passes
                self._wake.clear()
            try:
                wait = self._pass()
                self._room_again()
            except OSError as error:
                self._stall(error)
                wait = _STALLED_RETRY
            with self._cond:
                self._idle = wait != 0
                self._done_passes = number
                self._cond.notify_all()
            if wait != 0:
                self._wake.wait(_STALLED_RETRY if self._stalled else _MAX_SLEEP if wait is None
                                else min(wait, _MAX_SLEEP))

    def _stall(self, error: OSError) -> None:
        """A step the disk refused: its batch is as before the step; say so once, and try again later."""
        first, self._stalled = self._stalled is None, error
        if not first:
            return
        if out_of_space(error):
            log.warning("batches wait for disk space: %s while writing %s; trying again every %.0f s",
                        error.strerror, error.filename, _STALLED_RETRY)
        else:  # not a full disk: the traceback helps whoever looks into it
            log.exception("batches wait: a step failed on %s; trying again every %.0f s", error.filename,
                          _STALLED_RETRY)

    def _room_again(self) -> None:
        if self._stalled is not None:
            self._stalled = None
            log.info("batches go on: their progress is written again")

    def _check_stalled(self) -> None:
        """A call that reads batches while the disk refuses their progress gets the 500 that says so."""
        stalled = self._stalled
        if stalled is not None and out_of_space(stalled):
            raise disk_full(stalled, "the progress of batches cannot be saved until there is room")

    def _pass(self) -> float | None:
        """One round over the active batches; the real seconds until the next event (0: more work now).

        An OSError from a step (a full disk) ends the pass; the step's batch is as it was before it."""
        next_due: float | None = None
        busy = False
        active = self.batches.active()
        self._turn += 1
        for record in active[self._turn % len(active):] + active[:self._turn % len(active)] if active else []:
            began = time.monotonic()
            while not self._stop.is_set():
                step = self.lifecycle.step(record, self.clock.now())
                if step.next_due is not None and (next_due is None or step.next_due < next_due):
                    next_due = step.next_due
                if not step.worked:
                    break
                if time.monotonic() - began > _SLICE:
                    busy = True
                    break
        if busy:
            return 0.0
        if next_due is None:
            return None
        return self.clock.real_seconds(next_due - self.clock.now())

    # -- operations -----------------------------------------------------------------------------------------
    def create_batch(self, body: Any, azure: bool = False) -> dict[str, Any]:
        """`POST /v1/batches`: checks the request synchronously; the file is checked later (validating).

        On Azure's paths (`azure`) the endpoint may be given without `/v1` (`/chat/completions`), as Azure's own
        examples do, and the batch's lines are Azure's (see `validate.validate_input`)."""
        fields = _check_create(body, azure)
        now = self.clock.now()
        created = int(now)
        batch = {
            "id": ids.new_batch_id(), "object": "batch", "endpoint": fields["endpoint"], "model": None,
            "errors": None, "input_file_id": fields["input_file_id"], "completion_window": "24h",
            "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": created,
            "in_progress_at": None, "expires_at": created + self.config.completion_window_seconds,
            "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "usage": None,
            "metadata": fields["metadata"],
        }
        run = Run(created_t=now)
        if azure:
            run.extra[AZURE_KEY] = True
        if fields["output_expires_seconds"] is not None:
            run.extra["output_expires_seconds"] = fields["output_expires_seconds"]
        self.batches.add(batch, run)
        self.poke()
        return dict(batch)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        self._fresh()
        with self.batches.lock:
            record = self.batches.get(batch_id)
            self._check_stalled()
            return _copy(record.batch)

    def list_batches(self, after: str | None, limit: int) -> dict[str, Any]:
        self._fresh()
        self._check_stalled()
        return self.batches.page(after=after, limit=limit)

    def _fresh(self) -> None:
        """Ask for a fresh pass before batches are read. While the disk refuses their progress the answer depends
        on that pass (has room come back?), so it is waited for longer than the usual quarter of a second."""
        if not self.sync() and self._stalled is not None:
            self.sync(_STALLED_SYNC)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        with self.batches.lock:
            record = self.batches.get(batch_id)
            with self.batches.reverting(record):
                if record.status in ("validating", "in_progress"):
                    now = self.clock.now()
                    record.run.cancelling_t = now
                    record.batch.update(status="cancelling", cancelling_at=int(now))
                    self.batches.save(record)
                elif record.status not in ("cancelling", "cancelled"):
                    raise bad_request(f"Cannot cancel a batch with status '{record.status}'.",
                                      code="invalid_state")
            result = _copy(record.batch)
        self.poke()
        return result

    def force(self, batch_id: str, action: str, seconds: float = 0.0) -> dict[str, Any]:
        """Test control: `expire` now, or keep it `stuck_finalizing` for `seconds` more."""
        with self.batches.lock:
            record = self.batches.get(batch_id)
            with self.batches.reverting(record):
                self._force(record, action, seconds)
        self.poke()
        return self.get_batch(batch_id)

    def _force(self, record: BatchRecord, action: str, seconds: float) -> None:
        if action == "expire":
            record.run.force_expire = True
        elif action == "stuck_finalizing":
            record.run.stuck_seconds = float(seconds)
        else:
            raise bad_request(f"Unknown action '{action}'; use 'expire' or 'stuck_finalizing'.", param="action")
        self.batches.save(record)

    def record_sync(self, request_id: str, model: str, body: Any) -> None:
        """A synchronous call answered 2xx enters the organization's usage now, at standard price."""
        prompt, cached, completion = answer_tokens(body)
        cost = self.pricer.cost(model, prompt, cached, completion, False)
        self.usage.add([UsageRecord(f"sync:{request_id}", int(self.clock.now()), model, False, prompt, cached,
                                    completion, 1, cost)])

    def adjust_usage(self, body: Any) -> dict[str, Any]:
        """Test control: plant a usage record on a day (numbers may be negative), so the provider's usage can
        differ from what a client recorded."""
        if not isinstance(body, dict):
            raise bad_request("Expected a JSON object.")
        try:
            day = datetime.date.fromisoformat(str(body["day"]))
            model = body["model"]
            if not isinstance(model, str) or not model:
                raise ValueError("model must be a model name")
            numbers = {name: int(body.get(name, 0)) for name in ("input_tokens", "cached_tokens", "output_tokens",
                                                                  "requests")}
            cost = Decimal(str(body.get("cost_usd", "0")))
            if not cost.is_finite():
                raise ValueError("cost_usd must be a finite amount")
        except (KeyError, TypeError, ValueError, ArithmeticError) as error:
            raise bad_request(f"Bad usage adjustment: {error}") from error
        when = int(datetime.datetime.combine(day, datetime.time(12), datetime.timezone.utc).timestamp())
        record = UsageRecord(f"adjust:{ids.random_request_id()}", when, model, bool(body.get("batch", True)),
                             numbers["input_tokens"], numbers["cached_tokens"], numbers["output_tokens"],
                             numbers["requests"], cost)
        self.usage.add([record])
        return {"key": record.key, "time": record.time, "model": model, "batch": record.batch, **numbers,
                "cost_usd": str(cost)}

    def set_config(self, config: EmulatorConfig) -> None:
        """Apply a new config live; ConfigError for the executor's settings, which need a restart."""
        changed = [key for key in _FIXED_KEYS if getattr(config, key) != getattr(self.config, key)]
        if changed:
            raise ConfigError(f"{', '.join(changed)} cannot change while the emulator runs; restart it")
        if config.time_scale != self.clock.scale:
            self.clock.set_scale(config.time_scale)
        self.config = config
        self.poke()


class StateInUse(RuntimeError):
    """Another emulator process works on the same state directory."""


def _lock_state(state_dir: Path, timeout: float) -> int:
    """An exclusive lock on `<state>/.lock`, so two processes never run the same batches."""
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise StateInUse(f"the emulator state {state_dir} is in use by another process") from None
            time.sleep(0.05)


def _copy(batch: dict[str, Any]) -> dict[str, Any]:
    out = dict(batch)
    for key in ("request_counts", "usage", "errors", "metadata"):
        if isinstance(out.get(key), dict):
            out[key] = _deep(out[key])
    return out


def _deep(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep(v) for v in value]
    return value


def _check_create(body: Any, azure: bool = False) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if body.get(name) in (None, ""):
            raise bad_request(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if not isinstance(body["input_file_id"], str):
        raise bad_request("'input_file_id' must be a string.", param="input_file_id", code="invalid_type")
    if (operation(body["endpoint"]) if azure and isinstance(body["endpoint"], str) else body["endpoint"]) \
            not in ENDPOINTS:
        raise bad_request(f"Invalid value for 'endpoint': '{body['endpoint']}'. Supported: {', '.join(ENDPOINTS)}.",
                          param="endpoint", code="invalid_value")
    if body["completion_window"] != "24h":
        raise bad_request(f"Invalid value for 'completion_window': '{body['completion_window']}'. Only '24h' "
                          "is supported.", param="completion_window", code="invalid_value")
    return {"input_file_id": body["input_file_id"], "endpoint": body["endpoint"],
            "metadata": _check_metadata(body.get("metadata")),
            "output_expires_seconds": _check_output_expiry(body.get("output_expires_after"))}


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise bad_request("'metadata' must be an object of string keys and values.", param="metadata",
                          code="invalid_type")
    if len(metadata) > 16:
        raise bad_request(f"'metadata' has {len(metadata)} keys; at most 16 are allowed.", param="metadata",
                          code="invalid_value")
    for key, value in metadata.items():
        if len(key) > 64:
            raise bad_request(f"Metadata key '{key[:20]}...' is longer than 64 characters.", param="metadata",
                              code="invalid_value")
        if not isinstance(value, str) or len(value) > 512:
            raise bad_request(f"Metadata value of '{key}' must be a string of at most 512 characters.",
                              param="metadata", code="invalid_value")
    return dict(metadata)


def _check_output_expiry(value: Any) -> int | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or value.get("anchor") != "created_at"
            or not isinstance(value.get("seconds"), int) or not 3600 <= value["seconds"] <= 2_592_000):
        raise bad_request("'output_expires_after' must be {anchor: 'created_at', seconds: 3600..2592000}.",
                          param="output_expires_after", code="invalid_value")
    return int(value["seconds"])


__all__ = ["APIError", "ENDPOINTS", "Engine", "StateInUse"]
