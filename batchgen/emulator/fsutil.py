"""Durable writes: write to a temporary name, fsync, rename over the target, fsync the directory.

A write the disk refuses (full, over quota, at the file size limit) raises its OSError with the file it was writing
as `filename`, and leaves nothing behind: the temporary file is removed, the target keeps its old content.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def out_of_space(error: OSError) -> bool:
    """True when the disk, the quota or the file size limit refused a write: it works again once there is room."""
    return error.errno in OUT_OF_SPACE


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError inside the block that names no file (a failed write or fsync on an open file) names `path`."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray) -> None:
    """Write every byte of `data` to `fd`: os.write may write only part of it when the disk is nearly full, and the
    next call then raises the reason (ENOSPC) instead of losing the rest silently."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` so that readers see either the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with naming(path), open(tmp, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json(path: Path, value: Any, *, durable: bool = True) -> None:
    write_atomic(path, json_bytes(value), durable=durable)


def json_bytes(value: Any) -> bytes:
    """The bytes `write_json` writes for `value`."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2)


def read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())
