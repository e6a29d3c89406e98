"""One emulator per state directory, shared by every process that uses it.

Only the process holding `<state>/.lock` runs an engine on the state. Once its server listens it publishes
`<state>/server.json` (written atomically) and removes it when it stops cleanly:

    {"base_url": "http://127.0.0.1:PORT/v1", "pid": 1234, "instance": "<random hex>",
     "control": true, "auth": false}

Another process that finds the lock taken reads the file and attaches to that server, after checking that
it answers `GET /_emulator/health` with the same `instance` (so a stale file whose port now belongs to
someone else is never trusted). A holder killed with SIGKILL leaves the file behind, but its lock is gone
with it, so the next process takes the lock, starts its own server and overwrites the file.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from batchgen.emulator.control_client import ControlError, EmulatorControl
from batchgen.emulator.fsutil import read_json, write_json

SERVER_FILE = "server.json"
HEALTH_PATH = "/_emulator/health"
HEALTH_TIMEOUT = 2.0


@dataclass(frozen=True)
class Published:
    """What a holder writes into `server.json` about its server."""

    base_url: str
    pid: int
    instance: str
    control: bool = False
    auth: bool = False

    @classmethod
    def new(cls, base_url: str, *, control: bool, auth: bool) -> Published:
        return cls(base_url, os.getpid(), secrets.token_hex(8), control, auth)

    def identity(self) -> dict[str, object]:
        """The body of the holder's health route."""
        return {"instance": self.instance, "pid": self.pid}


def publish(state_dir: Path, published: Published) -> None:
    """Announce the holder's server (atomic replace: readers see the old file or the new one)."""
    write_json(Path(state_dir) / SERVER_FILE, asdict(published), durable=False)


def withdraw(state_dir: Path, published: Published) -> None:
    """Remove `server.json` if it still describes `published`."""
    path = Path(state_dir) / SERVER_FILE
    if read_published(state_dir) == published:
        path.unlink(missing_ok=True)


def read_published(state_dir: Path) -> Published | None:
    """The announced server, or None when there is none (or the file is unreadable)."""
    try:
        data = read_json(Path(state_dir) / SERVER_FILE)
        return Published(str(data["base_url"]), int(data["pid"]), str(data["instance"]),
                         bool(data.get("control", False)), bool(data.get("auth", False)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def answers(published: Published, timeout: float = HEALTH_TIMEOUT) -> bool:
    """True if the announced server is up and is the instance the file names."""
    root = published.base_url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(root + HEALTH_PATH, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:  # someone else's server on a reused port, or no such route
        error.close()
        return False
    except (OSError, http.client.HTTPException, ValueError):  # refused, reset, timed out, cut short, not JSON
        return False
    return isinstance(body, dict) and body.get("instance") == published.instance


class AttachedEmulator:
    """A handle on another process's emulator, with the interface of `EmbeddedEmulator`.

    `stop()` only forgets the server; the holder keeps running it.
    """

    attached = True

    def __init__(self, state_dir: Path, published: Published) -> None:
        self.state_dir = Path(state_dir)
        self.published = published

    @property
    def base_url(self) -> str:
        return self.published.base_url

    @property
    def pid(self) -> int:
        """The process that runs the server."""
        return self.published.pid

    @property
    def control(self) -> EmulatorControl:
        """The holder's control API; ControlError if the holder runs without one."""
        if not self.published.control:
            raise ControlError(f"the emulator at {self.base_url} (pid {self.pid}) has no control API")
        return EmulatorControl(self.base_url)

    def alive(self) -> bool:
        """True while the holder still serves."""
        return answers(self.published)

    def stop(self) -> None:
        """Detach; the holder's server keeps running."""

    def __enter__(self) -> AttachedEmulator:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def attach(state_dir: Path) -> AttachedEmulator | None:
    """A handle on the announced server if it answers as itself, else None."""
    published = read_published(state_dir)
    if published is None or published.auth or not answers(published):
        return None
    return AttachedEmulator(state_dir, published)
