"""The review file: a CSV a domain expert fills in with a spreadsheet or a text editor, and its reading back.

One row per example, the columns an expert fills in first, then what the expert reads::

    example,verdict,note,stage,cell,conversation
    task_api-1a2b3c4d-main-12-a1#3,,,main,"operation=create, style=casual, include_errors=false","user: ...

    assistant: ..."

`verdict` is `accept`, `reject` or empty (not reviewed yet); `note` is free text. CSV because a spreadsheet opens it
as it is and a text editor can fill it in; UTF-8 with a byte-order mark, so that Excel shows every character. A
file saved again by a spreadsheet may use `;` or a tab between fields (Excel does in some countries): the header
line says which. Only `example` and `verdict` are needed back (and `note` when there is one); other columns may
be moved, deleted or added.

The text is untrusted model output: a field that a spreadsheet would run as a formula (it starts with `=`, `+`,
`-`, `@`, a tab or a carriage return) is written after a `'`, which spreadsheets show as text; reading a note takes
that mark off again, so a file written, filled in and read back gives the note as it was typed.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchgen.disk import make_folder, write_error
from batchgen.errors import BatchgenError

COLUMNS = ("example", "verdict", "note", "stage", "cell", "conversation")
VERDICTS = ("accept", "reject")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
DELIMITERS = (",", ";", "\t")
ENCODING = "utf-8-sig"  # writes a byte-order mark, reads a file with or without one


class ReviewFileError(BatchgenError):
    """A review file that cannot be read back: one line naming the file and the line."""


@dataclass(frozen=True)
class FileVerdict:
    """One row of a review file: its example key as written, and the expert's verdict (None: left empty)."""

    line: int  # where the row starts in the file (1-based; the header is line 1)
    example: str
    verdict: str | None
    note: str


def defuse(text: str) -> str:
    """`text` as a spreadsheet shows it without running it: a leading `'` before what would start a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def undefuse(text: str) -> str:
    """The text `defuse` was given back (a `'` it put before a formula start taken off)."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


def write_review_file(path: Path, rows: Iterable[Sequence[str]]) -> None:
    """Write the header and `rows` (one value per column of COLUMNS) to `path` atomically: a temporary file
    beside it, fsynced and renamed, so that a reader (or a full disk) never leaves half a file."""
    make_folder(path.parent, f"review file {path}", "choose another file with -o")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=ENCODING, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            writer.writerows([defuse(value) for value in row] for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        raise write_error(error, f"review file {path}", "choose another file with -o") from error
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_review_file(path: Path) -> list[FileVerdict]:
    """Every row of a review file, checked: known columns, one verdict per row (accept, reject or empty), each
    example named once. ReviewFileError (file and line) for the first problem, so nothing of a bad file counts."""
    text = _read_text(path)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ReviewFileError(f"{path} line 1: no header line; the file must start with {','.join(COLUMNS)}")
    delimiter, header = _header(path, lines[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    next(reader)
    found: list[FileVerdict] = []
    seen: dict[str, int] = {}
    line = reader.line_num + 1
    try:
        for row in reader:
            if any(value.strip() for value in row):
                verdict = _row(path, line, row, header)
                if verdict.example in seen:
                    raise ReviewFileError(f"{path} line {line}: example {verdict.example} is already on line "
                                          f"{seen[verdict.example]}; keep one row per example")
                seen[verdict.example] = line
                found.append(verdict)
            line = reader.line_num + 1
    except csv.Error as error:
        raise ReviewFileError(f"{path} line {line}: not CSV ({error}); save the file as CSV again") from None
    return found


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReviewFileError(f"No review file {path}; write one with 'batchgen review JOB -o {path}'") from None
    except OSError as error:
        raise ReviewFileError(f"Cannot read review file {path}: {error.strerror or error}") from None
    try:
        return data.decode(ENCODING)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ReviewFileError(f"{path} line {line}: not UTF-8 text; save the file as CSV UTF-8") from None


@dataclass(frozen=True)
class _Header:
    """The columns a review file's header names (their index), and how many fields it has."""

    index: dict[str, int]
    width: int


def _header(path: Path, first: str) -> tuple[str, _Header]:
    """The delimiter the header line uses, and its columns (example and verdict needed)."""
    for delimiter in DELIMITERS:
        names = [name.strip().lower() for name in next(csv.reader([first], delimiter=delimiter))]
        if "example" in names and "verdict" in names:
            return delimiter, _Header({name: names.index(name) for name in COLUMNS if name in names}, len(names))
    raise ReviewFileError(f"{path} line 1: the header names no 'example' and 'verdict' columns; keep the header "
                          "line that 'batchgen review' wrote")


def _row(path: Path, line: int, row: list[str], header: _Header) -> FileVerdict:
    """One row as a FileVerdict; ReviewFileError for a row of the wrong width, a missing example key or a bad
    verdict. A row may lack empty fields at its end (some editors drop them), never one the import reads."""
    columns = header.index
    if len(row) > header.width:
        raise ReviewFileError(f"{path} line {line}: {len(row)} fields, more than the header's {header.width}; "
                              "put a note that holds the delimiter in double quotes")
    if len(row) <= max(columns.values()):
        raise ReviewFileError(f"{path} line {line}: {len(row)} field(s), fewer than the header's {header.width}")
    example = row[columns["example"]].strip()
    if not example:
        raise ReviewFileError(f"{path} line {line}: the example column is empty; keep it as 'batchgen review' wrote "
                              "it")
    verdict = row[columns["verdict"]].strip().lower()
    if verdict and verdict not in VERDICTS:
        raise ReviewFileError(f"{path} line {line}: verdict {row[columns['verdict']].strip()!r} is neither accept "
                              "nor reject; write one of them, or leave it empty for an example not reviewed yet")
    note = undefuse(row[columns["note"]].strip()) if "note" in columns else ""
    return FileVerdict(line, example, verdict or None, note)
