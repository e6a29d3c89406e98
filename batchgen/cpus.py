"""How many CPUs this process may run on: the affinity mask where there is one (as in a container), else all."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


__all__ = ["usable_cpus"]
