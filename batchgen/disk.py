"""What to say when the disk refuses a write, in one line that names the file or folder and what to do.

A full disk (ENOSPC), a used-up quota (EDQUOT) and the file size limit (EFBIG: `ulimit -f`, or the largest file
the file system takes) can meet any write: a shard, a downloaded result file, the dataset, the ledger. Each becomes
a `DiskError` saying what ran out while writing what, and that the same command can simply be run again once there
is room: every writer removes its own temporary file and records nothing before its file is complete, so the
command that failed left nothing behind that counts. A folder that cannot be made (a file in its way, no
permission) is named the same way. This module only words the errors; it writes nothing.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batchgen.errors import DiskError

AGAIN = "run the same command again"
_SPACE = {
    errno.ENOSPC: ("No space left on device", "free some space"),
    errno.EDQUOT: ("Disk quota exceeded", "free some space (or have the quota raised)"),
    errno.EFBIG: ("File too large", "raise the file size limit (ulimit -f)"),
}


def out_of_space(error: OSError) -> bool:
    """True when the disk, the quota or the file size limit refused the write (not a bug, not a bad path)."""
    return error.errno in _SPACE


def no_space(what: str, code: int = errno.ENOSPC) -> DiskError:
    """What ran out (ENOSPC, EDQUOT or EFBIG) while writing `what`, and how to go on."""
    reason, remedy = _SPACE[code]
    return DiskError(f"{reason} while writing {what}: {remedy} and {AGAIN}")


def write_error(error: OSError, what: str, fix: str = "") -> DiskError:
    """`error`, met while writing `what` (such as "shard /ws/shards/.../shard-00000.jsonl"), as one line.

    Out of space: what ran out and how to go on. Anything else: the system's reason, then `fix` if given."""
    if error.errno in _SPACE:
        return no_space(what, error.errno)
    return DiskError(f"Cannot write {what}: {error.strerror or error}" + (f"; {fix}" if fix else ""))


@contextmanager
def writing(what: str, fix: str = "") -> Iterator[None]:
    """Any OSError inside the block becomes `write_error(error, what, fix)`; the caller cleans up first."""
    try:
        yield
    except OSError as error:
        raise write_error(error, what, fix) from error


def make_folder(folder: Path, what: str, fix: str) -> None:
    """Create `folder` and its parents for `what`; one DiskError naming the folder (and why) when it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if out_of_space(error):
            raise write_error(error, f"folder {folder}") from error
        raise DiskError(f"Cannot create folder {folder} for {what}: {_why_not(folder, error)}; {fix}") from error


def _why_not(folder: Path, error: OSError) -> str:
    """The reason a folder cannot be made: the file in its way when there is one, else the system's words."""
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        for place in (folder, *folder.parents):
            if place.exists():
                if not place.is_dir():
                    return f"{place} is a file, not a folder"
                break
    return error.strerror or str(error)
