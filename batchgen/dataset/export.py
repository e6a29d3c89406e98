"""Write valid examples as a dataset: ShareGPT, Alpaca or ChatML (OpenAI fine-tuning `messages`) JSONL, or for
an embeddings job `embeddings` JSONL, one `{"input": text, "embedding": [numbers]}` per line (its only format).

One JSON object per line, UTF-8 (not ASCII-escaped), every line newline-terminated. Each line's provenance
(job, stage, custom_id, position, attempt, batch id, model, variant cell, content hash, parent, root) goes where
`provenance=` says:

    "inline"   (default) a top-level "_provenance" object after the example's own keys:
               {"conversations": [...], "_provenance": {"job": ..., "custom_id": ..., ...}}
    "sidecar"  the dataset holds bare examples (what OpenAI fine-tuning accepts) and `<file>.provenance.jsonl`
               holds one provenance object per line, aligned by line number and carrying "line" (1-based)
    "none"     bare examples only

By default a ChatML file keeps its provenance in the sidecar, since OpenAI's fine-tuning (what ChatML is for) takes
documented keys only (a pipe, which has no sidecar, gets none); the other formats keep it inline. A ChatML export
given a `TrainingFileCheck` leaves out, with the reason, the examples fine-tuning would refuse or truncate.

A `Card` (a dataset card, `dataset/card.py`) is written next to the file, with it: its text is rendered once the
examples are written, from what the write counted (per stage and cell, the batches, the fine-tuning check), and it
is put on disk with the dataset and the sidecar, so all of them are replaced together or none. A pipe has no card.

Records are streamed: nothing holds the whole dataset. The file (and its sidecar) is written to a temporary
file in the target's directory, fsynced and renamed over the target, so a reader never sees half a dataset and
a failure part-way (a full disk: one `DiskError` line) leaves the previous file untouched and no temporary file.
An example that the target format cannot hold (a multi-turn chat as Alpaca) or that does not parse is skipped
and counted by reason.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import orjson
from pydantic import ValidationError

from batchgen.crashpoints import crash_point
from batchgen.dataset.training_file import TrainingFileCheck
from batchgen.disk import make_folder, write_error
from batchgen.errors import BatchgenError
from batchgen.recipe.formats import (
    DATASET_FORMATS,
    EMBEDDINGS_FORMAT,
    NotRepresentable,
    dump_example,
    from_turns,
    parse_example,
    to_turns,
)

ProvenanceMode = Literal["inline", "sidecar", "none"]
PROVENANCE_MODES: tuple[str, ...] = ("inline", "sidecar", "none")
PROVENANCE_KEY = "_provenance"
SIDECAR_SUFFIX = ".provenance.jsonl"
SAMPLE_LIMIT = 20


@dataclass(frozen=True)
class Provenance:
    """Where one example came from. Serialised with every key present (null when unknown), in this order."""

    custom_id: str
    job: str | None = None
    stage: str | None = None
    position: int = 0
    attempt: int | None = None
    batch_id: str | None = None
    model: str | None = None
    cell: Mapping[str, Any] = field(default_factory=dict)
    content_hash: str | None = None
    parent: str | None = None
    root: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "stage": self.stage, "custom_id": self.custom_id, "position": self.position,
                "attempt": self.attempt, "batch_id": self.batch_id, "model": self.model,
                "cell": dict(self.cell), "content_hash": self.content_hash, "parent": self.parent, "root": self.root}


@dataclass(frozen=True)
class ExportRecord:
    """One example to write: its JSON dict in format `fmt` (as stored in the ledger) and its provenance."""

    example: Mapping[str, Any]
    fmt: str
    provenance: Provenance


@dataclass
class ExportResult:
    """What a write produced; `str(result)` is the dataset's path.

    `skipped` counts by category ("not_representable", "schema", "not_fine_tunable", "over_context");
    `samples` keeps the first few skipped examples as (custom_id, reason) for display. `exported` counts the
    examples written by (stage, `cell_key(cell)`), `batches` by batch id.
    """

    path: Path
    format: str
    provenance: str
    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    samples: list[tuple[str, str]] = field(default_factory=list)
    sha256: str = ""
    sidecar_path: Path | None = None
    sidecar_sha256: str | None = None
    card_path: Path | None = None
    card_sha256: str | None = None
    training: TrainingFileCheck | None = None
    exported: Counter[tuple[str | None, str]] = field(default_factory=Counter)
    batches: Counter[str] = field(default_factory=Counter)
    first_example: dict[str, Any] | None = None

    @property
    def warnings(self) -> list[str]:
        """What a reader should know before using the file (the fine-tuning check's warnings)."""
        return self.training.warnings() if self.training is not None else []

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        return str(self.path)

    def skip(self, category: str, custom_id: str, reason: str) -> None:
        self.skipped[category] += 1
        if len(self.samples) < SAMPLE_LIMIT:
            self.samples.append((custom_id, reason))

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "provenance": self.provenance,
                "written": self.written, "skipped": dict(self.skipped), "skipped_total": self.skipped_total,
                "samples": [list(sample) for sample in self.samples], "sha256": self.sha256,
                "sidecar_path": str(self.sidecar_path) if self.sidecar_path else None,
                "sidecar_sha256": self.sidecar_sha256,
                "card_path": str(self.card_path) if self.card_path else None, "card_sha256": self.card_sha256,
                "fine_tuning": self.training.to_dict() if self.training is not None else None,
                "warnings": self.warnings}


class Card(Protocol):
    """What `export_dataset` needs of a dataset card: where it goes beside a dataset, and its text."""

    def path_for(self, dataset: Path) -> Path: ...

    def render(self, result: ExportResult) -> str: ...


def cell_key(cell: Mapping[str, Any]) -> str:
    """One text per variant cell whatever the order of its keys: how an export's counts meet the ledger's."""
    return orjson.dumps(dict(cell), option=orjson.OPT_SORT_KEYS, default=str).decode()


def default_provenance(fmt: str, stream: bool = False) -> str:
    """Where provenance goes unless asked: beside a ChatML file (fine-tuning takes documented keys only; a pipe
    gets none), inline in the others."""
    if fmt == "chatml":
        return "none" if stream else "sidecar"
    return "inline"


def convert_example(example: Mapping[str, Any], source_fmt: str, target_fmt: str) -> dict[str, Any]:
    """An example in another format, checked against both schemas.

    Raises pydantic.ValidationError when the example does not fit `source_fmt`, and formats.NotRepresentable
    when `target_fmt` cannot hold it. The same format is re-dumped as is (an Alpaca `input` stays separate). An
    embedding converts to no chat format, nor a chat example to an embedding.
    """
    if EMBEDDINGS_FORMAT in (source_fmt, target_fmt):
        if source_fmt != target_fmt:
            raise NotRepresentable(f"a {source_fmt} example cannot be written as {target_fmt}")
        return {"input": example["input"], "embedding": example["embedding"]}
    parsed = parse_example(example, source_fmt)
    if source_fmt == target_fmt:
        return dump_example(parsed)
    return from_turns(to_turns(parsed), target_fmt)


def export_dataset(records: Iterable[ExportRecord], path: str | os.PathLike[str], fmt: str, *,
                   provenance: str | None = None, training: TrainingFileCheck | None = None,
                   card: Card | None = None) -> ExportResult:
    """Write `records` to `path` as `fmt` JSONL, atomically; BatchgenError when the file cannot be written.

    `provenance` None: `default_provenance(fmt)`. `training` checks each line of a ChatML file for fine-tuning;
    `card` is written beside a regular file. An exception raised while iterating `records` propagates after the
    temporary files are removed; the target is then exactly as it was before.
    """
    if fmt not in DATASET_FORMATS:
        raise BatchgenError(f"Unknown dataset format {fmt!r}; use one of {', '.join(DATASET_FORMATS)}")
    if provenance is not None and provenance not in PROVENANCE_MODES:
        raise BatchgenError(f"Unknown provenance mode {provenance!r}; "
                            f"use one of {', '.join(PROVENANCE_MODES)}")
    target = Path(path)
    # A FIFO, a terminal, /dev/stdout: written through, never replaced by a file. A link to a file: the file it
    # names is replaced, and the link stays.
    stream = target.exists() and not stat.S_ISREG(target.stat().st_mode)
    if not stream and target.is_symlink():
        target = target.resolve()
    provenance = provenance or default_provenance(fmt, stream)
    if stream and provenance == "sidecar":
        raise BatchgenError(f"{path} is not a regular file, so it has no sidecar; use --provenance inline or none")
    sidecar = sidecar_path(target) if provenance == "sidecar" else None
    result = ExportResult(target, fmt, provenance, sidecar_path=sidecar,
                          training=training if fmt == "chatml" else None)
    if not stream:
        make_folder(target.parent, f"dataset {target}", "choose another file with -o")
    try:
        if stream:
            with _stream_writer(target) as main:
                _write_records(records, fmt, provenance, main, None, result)
            result.sha256 = main.sha256.hexdigest()
        else:
            result.card_path = card.path_for(target) if card is not None else None
            _write_files(records, fmt, provenance, target, sidecar, result, card)
    except OSError as error:
        raise write_error(error, f"dataset {target}",
                          "choose another file with -o or check the folder's permissions") from error
    return result


def _write_files(records: Iterable[ExportRecord], fmt: str, provenance: str, target: Path, sidecar: Path | None,
                 result: ExportResult, card: Card | None = None) -> None:
    """Write the dataset (and its sidecar and card) beside the old ones; all are complete and on disk before any
    replaces its old file, so a full disk part-way leaves the previous files as they were and no temporary file.
    The dataset is renamed last: once it is new, so are the others."""
    pending: list[_Pending] = []
    try:
        pending.append(_Pending(target))
        if sidecar is not None:
            pending.append(_Pending(sidecar))
        main, side = pending[0].file, (pending[1].file if sidecar is not None else None)
        _write_records(records, fmt, provenance, main, side, result)
        if card is not None and result.card_path is not None:
            result.sha256 = main.sha256.hexdigest()
            result.sidecar_sha256 = side.sha256.hexdigest() if side is not None else None
            pending.append(_Pending(result.card_path))
            pending[-1].file.write_bytes(card.render(result).encode("utf-8"))
            result.card_sha256 = pending[-1].file.sha256.hexdigest()
        for file in pending:
            file.finish()
        for file in reversed(pending):
            file.commit()
    except BaseException:
        for file in pending:
            file.discard()
        raise
    _fsync_dir(target.parent)
    result.sha256 = main.sha256.hexdigest()
    result.sidecar_sha256 = side.sha256.hexdigest() if side is not None else None


def _write_records(records: Iterable[ExportRecord], fmt: str, provenance: str, main: _HashingFile,
                   side: _HashingFile | None, result: ExportResult) -> None:
    for record in records:
        custom_id = record.provenance.custom_id
        try:
            example = convert_example(record.example, record.fmt, fmt)
        except NotRepresentable as error:
            result.skip("not_representable", custom_id, str(error))
            continue
        except ValidationError as error:
            first = error.errors(include_url=False, include_input=False)[0]
            loc = ".".join(str(part) for part in first["loc"])
            result.skip("schema", custom_id, f"not a valid {record.fmt} example: {loc}: {first['msg']}")
            continue
        problem = result.training.problem(example) if result.training is not None else None
        if problem is not None:
            category, reason = problem
            result.skip(category, custom_id, reason)
            continue
        _count(result, record, example)
        if provenance == "inline":
            example[PROVENANCE_KEY] = record.provenance.to_dict()
        elif side is not None:
            side.write_line({"line": result.written, **record.provenance.to_dict()})
        main.write_line(example)
        crash_point("export")


def _count(result: ExportResult, record: ExportRecord, example: dict[str, Any]) -> None:
    """One more example written: its stage and cell, its batch, and the first one kept as the card's sample."""
    result.written += 1
    result.exported[(record.provenance.stage, cell_key(record.provenance.cell))] += 1
    if record.provenance.batch_id is not None:
        result.batches[record.provenance.batch_id] += 1
    if result.first_example is None:
        result.first_example = dict(example)


class _HashingFile:
    """A binary file that keeps the sha256 of what was written to it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()

    def write_line(self, obj: Mapping[str, Any]) -> None:
        self.write_bytes(orjson.dumps(obj) + b"\n")

    def write_bytes(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha256.update(data)


@contextmanager
def _stream_writer(target: Path) -> Iterator[_HashingFile]:
    """Write into something that is not a regular file (a pipe, a device) as it is: it cannot be replaced."""
    if target.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(target))
    with open(target, "ab", buffering=1 << 20) as handle:
        yield _HashingFile(handle)


class _Pending:
    """A new file for `target`, written under a temporary name beside it: `finish()` puts it on disk (where a
    full disk shows), `commit()` renames it over `target`, `discard()` removes it."""

    def __init__(self, target: Path) -> None:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        self.target, self.temp = target, Path(temp_name)
        self.file = _HashingFile(os.fdopen(fd, "wb", buffering=1 << 20))

    def finish(self) -> None:
        handle = self.file.handle
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()

    def commit(self) -> None:
        # mkstemp makes 0600: keep the mode of the file being replaced, else the usual 0644 (reading the umask
        # would mean setting it, which is not thread-safe while the embedded emulator writes files).
        os.chmod(self.temp, self.target.stat().st_mode & 0o7777 if self.target.exists() else 0o644)
        os.replace(self.temp, self.target)

    def discard(self) -> None:
        try:
            self.file.handle.close()  # flushes what is buffered: on a full disk this fails too
        except OSError:
            pass
        self.temp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows it (not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the provenance of a dataset written with provenance="sidecar" goes."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def dataset_filename(job: str, fmt: str) -> str:
    """The default file name of a job's dataset under the workspace's datasets/ folder."""
    return f"{job}.{fmt}.jsonl"


def read_dataset(path: str | os.PathLike[str]) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Stream (example, provenance) pairs back from a dataset; provenance None when a line has none inline."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                data = orjson.loads(line)
                yield data, data.pop(PROVENANCE_KEY, None)


__all__ = ["PROVENANCE_KEY", "PROVENANCE_MODES", "SIDECAR_SUFFIX", "Card", "ExportRecord", "ExportResult",
           "Provenance", "cell_key", "convert_example", "dataset_filename", "default_provenance", "export_dataset",
           "read_dataset", "sidecar_path"]
