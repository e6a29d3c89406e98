"""The workspace lock: one batchgen process at a time does work that calls the Batch API.

Every unit of work that submits, polls, collects or cancels (each tick of `run`, `tick`, `submit`, `collect`,
`cancel`) holds an exclusive `flock` on `<workspace>/lock`, so two processes never decide to submit the same shard,
and the embedded emulator (whose state is under the workspace) is only ever started by the lock's holder.

Stale locks cannot happen: the lock is the kernel's flock on the open file, not the file's existence, and the
kernel drops it when the holder exits, however it exits (SIGKILL, OOM, a power cut ends every process anyway).
The file stays behind on purpose; it only says who holds the lock (pid, host, command, since) for the messages,
and the next holder overwrites it. On NFS, Linux turns flock into a POSIX lock that the server releases when the
client's lease ends. A filesystem without any lock support fails `flock` with ENOLCK/EOPNOTSUPP: batchgen then
refuses to work there rather than run unprotected (the message asks for a workspace on a local disk).

Waiting is cooperative: a process that waits takes a shared lock on `<workspace>/lock.wait`; a holder that sleeps
between ticks (`run`) checks that file and steps aside (`pausing`), so a second `run` or a cron `tick` gets its
turn between ticks instead of waiting for the whole job.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from batchgen.crashpoints import crash_point
from batchgen.disk import out_of_space
from batchgen.errors import BatchgenError, WorkspaceBusy

LOCK_FILE = "lock"
WAIT_FILE = "lock.wait"
POLL_SECONDS = 0.05
CHECK_SECONDS = 0.2
HANDOVER_SECONDS = 1.0
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


@dataclass(frozen=True)
class Holder:
    """Who holds the lock, as its holder wrote it into the lock file."""

    pid: int | None = None
    host: str | None = None
    command: str | None = None
    since_utc: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return "pid unknown"
        where = "" if self.host in (None, socket.gethostname()) else f" on {self.host}"
        return f"pid {self.pid}{where}"


class WorkspaceLock:
    """An exclusive, crash-safe lock on a workspace directory."""

    def __init__(self, root: Path, command: str | None = None):
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.command = command or " ".join(["batchgen", *sys.argv[1:2]])
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None, on_wait: Callable[[Holder], None] | None = None) -> None:
        """Take the lock, waiting up to `timeout` seconds (None: as long as it takes); WorkspaceBusy on timeout.

        `on_wait` is called once, with the current holder, if the lock is not free at once. Only a process that
        is ready to wait (timeout != 0) is announced to the holder as waiting.
        """
        if self._fd is not None:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise BatchgenError(f"Cannot open the workspace lock {self.path}: {error.strerror or error}; remove it "
                                "if it is not a file batchgen made") from None
        waiting: int | None = None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self._try_lock(fd):
                if waiting is None and timeout != 0:
                    waiting = os.open(self.root / WAIT_FILE, os.O_RDWR | os.O_CREAT, 0o644)
                    fcntl.flock(waiting, fcntl.LOCK_SH)
                    if on_wait is not None:
                        on_wait(self.holder())
                if deadline is not None and time.monotonic() >= deadline:
                    raise WorkspaceBusy(f"another batchgen is working on {self.root} ({self.holder().describe()})")
                time.sleep(POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        finally:
            if waiting is not None:
                os.close(waiting)
        self._fd = fd
        self._write_holder(fd)

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now."""
        try:
            self.acquire(timeout=0)
        except WorkspaceBusy:
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def holder(self) -> Holder:
        """What the lock file says (an empty Holder when it is missing, unreadable or half written)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return Holder(int(data["pid"]), str(data["host"]), data.get("command"), data.get("since_utc"))
        except (OSError, ValueError, KeyError, TypeError):
            return Holder()

    def others_waiting(self) -> bool:
        """True while another process waits for this lock (it holds a shared lock on the wait file)."""
        try:
            fd = os.open(self.root / WAIT_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def pausing(self, step_aside: Callable[[], None], on_wait: Callable[[Holder], None] | None = None,
                sleep: Callable[[float], None] = time.sleep) -> Callable[[float], None]:
        """A `sleep(seconds)` for a loop of ticks that hands the lock to a waiting process.

        While it sleeps it checks for waiters; if one appears it calls `step_aside` (close what only the holder
        may keep open, such as the embedded emulator), releases the lock, lets the waiter take it, and waits for
        its own next turn before returning.
        """

        def pause(seconds: float) -> None:
            end = time.monotonic() + seconds
            while True:
                if self.others_waiting():
                    step_aside()
                    self._hand_over(sleep)
                    self.acquire(on_wait=on_wait)
                    return
                left = end - time.monotonic()
                if left <= 0:
                    return
                sleep(min(left, CHECK_SECONDS))

        return pause

    def _hand_over(self, sleep: Callable[[float], None]) -> None:
        """Release, then wait (bounded) until another process has taken the lock."""
        self.release()
        deadline = time.monotonic() + HANDOVER_SECONDS
        while time.monotonic() < deadline and self.holder().pid == os.getpid():
            sleep(POLL_SECONDS)

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno in _UNSUPPORTED:
                raise BatchgenError(f"Cannot lock workspace {self.root}: its filesystem has no file locks "
                                    f"({error.strerror}); use a workspace on a local disk (--workspace)") from error
            raise
        return True

    def _write_holder(self, fd: int) -> None:
        """Say who holds the lock, for the messages of those who wait. On a full disk the note stays empty
        (`holder()` then knows no pid): the flock is what locks, and the command goes on to say what ran out."""
        data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                           "since_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode()
        os.ftruncate(fd, 0)
        half = len(data) // 2
        try:
            os.pwrite(fd, data[:half], 0)
            crash_point("lock")
            os.pwrite(fd, data[half:], half)
        except OSError as error:
            if not out_of_space(error):
                raise
            os.ftruncate(fd, 0)

    def __enter__(self) -> WorkspaceLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
