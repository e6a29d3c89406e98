"""The emulator's clock: real, scaled (`time_scale` emulated seconds per real second) or frozen and driven by tests.

emulated_now = anchor_emulated + (real_now - anchor_real) * scale. The anchor is persisted in `clock.json`, so
emulated time never runs backwards across restarts, even when the scale changes, and an `advance` survives a restart.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from batchgen.emulator.fsutil import read_json, write_json

CLOCK_FILE = "clock.json"


class Clock:
    """Thread-safe emulated time in float seconds since the epoch."""

    def __init__(self, state_dir: Path | None, scale: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._path = state_dir / CLOCK_FILE if state_dir is not None else None
        self._scale = scale
        real = time.time()
        self._anchor_real = real
        self._anchor_emulated = real
        previous = self._load()
        if previous is not None:
            self._anchor_emulated = max(real, previous)
        self._save(self._anchor_real, self._anchor_emulated, self._scale)

    def _load(self) -> float | None:
        if self._path is None or not self._path.exists():
            return None
        try:
            data = read_json(self._path)
            return float(data["anchor_emulated"]) + (time.time() - float(data["anchor_real"])) * float(data["scale"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save(self, real: float, emulated: float, scale: float) -> None:
        if self._path is not None:
            write_json(self._path, {"anchor_real": real, "anchor_emulated": emulated, "scale": scale}, durable=False)

    @property
    def scale(self) -> float:
        return self._scale

    def now(self) -> float:
        with self._lock:
            return self._anchor_emulated + (time.time() - self._anchor_real) * self._scale

    def _reanchor(self, emulated: float, scale: float) -> None:
        """Saved first: a change the disk refuses (OSError) is not made, so a restart never sees time go back."""
        real = time.time()
        self._save(real, emulated, scale)
        self._anchor_real, self._anchor_emulated, self._scale = real, emulated, scale

    def advance(self, seconds: float) -> float:
        """Move emulated time forward; returns the new now."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            now = self._anchor_emulated + (time.time() - self._anchor_real) * self._scale
            self._reanchor(now + seconds, self._scale)
            return now + seconds

    def set(self, when: float) -> float:
        """Jump to an absolute emulated time (not earlier than now)."""
        with self._lock:
            now = self._anchor_emulated + (time.time() - self._anchor_real) * self._scale
            if when < now:
                raise ValueError("the clock only moves forward")
            self._reanchor(when, self._scale)
            return when

    def set_scale(self, scale: float) -> None:
        if scale < 0:
            raise ValueError("time_scale must not be negative")
        with self._lock:
            now = self._anchor_emulated + (time.time() - self._anchor_real) * self._scale
            self._reanchor(now, scale)

    def real_seconds(self, emulated_seconds: float) -> float | None:
        """Real seconds until `emulated_seconds` pass; None when the clock is frozen."""
        if self._scale == 0:
            return None
        return max(0.0, emulated_seconds) / self._scale
