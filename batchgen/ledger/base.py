"""The ledger's connection: opening and migrating the SQLite file, transactions, and the few primitives that the
record classes (`batchgen.ledger.jobs`, `.batches`, ...) build their named methods on.

Every read-modify-write runs inside `transaction()` (BEGIN IMMEDIATE), so two processes on one workspace never
interleave a decision and its record. WAL mode lets `status` read while a `run` writes. A write the disk refuses
(SQLITE_FULL, or an I/O error: over quota, the file size limit) rolls the transaction back and becomes one
`DiskError` naming the ledger: nothing of it is recorded, and the same command can run again once there is room.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

from sqlite_utils import Database

from batchgen.disk import AGAIN, make_folder, no_space, out_of_space, write_error
from batchgen.errors import BatchgenError, DiskError, LedgerError
from batchgen.ledger import migrations


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


NOT_REJECTED_BY_REVIEW = ("NOT EXISTS (SELECT 1 FROM reviews v WHERE v.custom_id = e.custom_id "
                          "AND v.position = e.position AND v.verdict = 'reject')")
"""An SQL condition on an example `e`: no domain expert rejected it (`batchgen review --import`). An export leaves
rejected examples out, and counts its cells without them."""


def dec_sum(values: Iterable[str | None]) -> Decimal:
    """Exact sum of decimal-text money values."""
    total = Decimal(0)
    for value in values:
        if value:
            total += Decimal(value)
    return total


class Store:
    """The SQLite connection under every record class; `batchgen.ledger.Ledger` is the one to use."""

    def __init__(self, db: Database, path: Path):
        self.db = db
        self.path = path

    # -- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, create: bool = True, read_only: bool = False) -> Self:
        """Open (and migrate) the ledger at `path`. create=False: LedgerError if there is none. read_only: never
        write, not even the WAL's index, so that a read-only workspace can be inspected."""
        path = Path(path)
        if not create or read_only:
            cls.require(path)
        try:
            conn = _connect_read_only(path) if read_only else cls._connect(path)
        except (OSError, sqlite3.Error) as error:
            raise _open_error(path, error) from error
        db = Database(conn)
        ledger = cls(db, path)
        try:
            ledger._migrate()
        except sqlite3.DatabaseError as error:
            conn.close()
            raise _open_error(path, error) from error
        except LedgerError:
            conn.close()
            raise
        return ledger

    @staticmethod
    def require(path: Path) -> None:
        """LedgerError unless a ledger file is there (a mistyped --workspace must not become a new ledger)."""
        if not path.is_file():
            raise LedgerError(f"No ledger at {path}; check --workspace or run a job first ('batchgen run JOB')")

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        make_folder(path.parent, f"the ledger {path}", "check --workspace and BATCHGEN_LEDGER")
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA page_size=8192")  # takes effect only on a new, empty file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        # 32 MB of page cache: fewer index pages spilled to the WAL and written again while a large batch is
        # collected in one transaction (see BENCHMARKS.md, Collect)
        conn.execute("PRAGMA cache_size=-32768")
        return conn

    @property
    def read_only(self) -> bool:
        """Whether the ledger was opened read-only (`show`, `export`, ...): nothing may be written to it."""
        return bool(self.db.conn.execute("PRAGMA query_only").fetchone()[0])

    def _migrate(self) -> None:
        read_only = self.read_only
        if read_only and "_sqlite_migrations" not in self.db.table_names():
            raise LedgerError(f"Ledger {self.path} is empty: nothing was recorded in it yet")
        known = set(migrations.known_names())
        unknown = [m.name for m in migrations.migrations.applied(self.db) if m.name not in known]
        if unknown:
            raise LedgerError(
                f"Ledger {self.path} was written by a newer batchgen (migration {unknown[-1]}); "
                "upgrade batchgen to use it"
            )
        if migrations.migrations.pending(self.db):
            if read_only:
                raise LedgerError(f"Ledger {self.path} was written by an older batchgen and needs migrating; run a "
                                  "command that writes (such as 'batchgen tick') on a writable workspace first")
            # Under the write lock, so two processes opening a new ledger do not both migrate it; apply()
            # checks again what is pending and nests each migration in a savepoint.
            with self._immediate():
                migrations.apply(self.db)

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------------------------
    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; on any error (a COMMIT the disk refused too) ROLLBACK, so nothing counts."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        except BaseException as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            refused = _disk_refused(error, self.path)
            if refused is None:
                raise
            raise refused from error

    @contextmanager
    def transaction(self) -> Iterator[Self]:
        """BEGIN IMMEDIATE ... COMMIT (nested calls join the outer transaction)."""
        if self.db.conn.in_transaction:
            yield self
            return
        with self._immediate():
            yield self

    # -- SQL primitives: for the record classes of this package, and for inspection (tests, a debugging session).
    # Code outside batchgen.ledger calls named methods instead (tests/test_architecture.py checks it).
    def _execute(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        try:
            return self.db.conn.execute(sql, params)  # type: ignore[arg-type]
        except sqlite3.OperationalError as error:
            refused = _disk_refused(error, self.path)
            if refused is None:
                raise
            raise refused from error

    def rows(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        cursor = self._execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def one(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def scalar(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> Any:
        row = self._execute(sql, params).fetchone()
        return row[0] if row else None

    # -- status, backup ------------------------------------------------------------------------------------
    def migration_status(self) -> dict[str, list[str]]:
        return {
            "applied": [m.name for m in migrations.migrations.applied(self.db)],
            "pending": [m.name for m in migrations.migrations.pending(self.db)],
        }

    def table_counts(self) -> dict[str, int]:
        names = ["jobs", "shards", "intents", "batches", "requests", "results", "examples", "events", "queue_limits",
                 "stage_shortfalls", "previews", "reviews", "judgments"]
        return {name: int(self.scalar(f"SELECT count(*) FROM {name}")) for name in names}

    def backup(self, target: str | Path) -> Path:
        """Copy the ledger to `target`, a new file; on failure (a full disk) no part of the copy is left."""
        target = Path(target)
        if target.exists():
            raise LedgerError(f"Backup target {target} already exists; choose another path")
        make_folder(target.parent, f"the backup {target}", "choose another path")
        try:
            copy = sqlite3.connect(str(target))
        except sqlite3.Error as error:
            raise LedgerError(f"Cannot write the backup {target}: {error}") from None
        try:
            self.db.conn.backup(copy)  # page by page, from a read-only connection too
        except sqlite3.Error as error:
            copy.close()
            for part in ("", "-journal", "-wal", "-shm"):  # never a half-written backup
                Path(f"{target}{part}").unlink(missing_ok=True)
            refused = _disk_refused(error, target, "the backup")
            raise refused or LedgerError(f"Cannot write the backup {target}: {error}") from None
        copy.close()
        return target

    # -- events --------------------------------------------------------------------------------------------
    def event(self, kind: str, *, job: str | None = None, batch_id: str | None = None, **detail: Any) -> None:
        self._execute(
            "INSERT INTO events (at_utc, job, batch_id, kind, detail_json) VALUES (?, ?, ?, ?, ?)",
            [utcnow(), job, batch_id, kind, json.dumps(detail, default=str, sort_keys=True)],
        )


NEARLY_FULL = 1 << 20
# The I/O errors of a write that a disk over quota or past the file size limit causes (a full disk is SQLITE_FULL).
_WRITE_FAILURES = {sqlite3.SQLITE_IOERR_WRITE, sqlite3.SQLITE_IOERR_FSYNC, sqlite3.SQLITE_IOERR_TRUNCATE,
                   sqlite3.SQLITE_IOERR_SHMSIZE}


def _disk_refused(error: BaseException, path: Path, what: str = "the ledger") -> DiskError | None:
    """SQLite's word for a write the disk refused, as one line naming the file; None for any other error.

    SQLITE_FULL is a full disk. Other refusals reach SQLite as a failed write (an I/O error, whose cause it does
    not pass on): on a disk with almost nothing free (the -shm file of WAL mode could not grow) that is a full disk
    too; otherwise the message names the likely causes, a quota or the file size limit."""
    if not isinstance(error, sqlite3.OperationalError):
        return None
    code = error.sqlite_errorcode
    if code == sqlite3.SQLITE_FULL or (code in _WRITE_FAILURES and _nearly_full(path.parent)):
        return no_space(f"{what} {path}")
    if code in _WRITE_FAILURES:
        return DiskError(f"Cannot write {what} {path}: {error} ({error.sqlite_errorname}); if its disk is full, "
                         f"over quota or at the file size limit (ulimit -f), make room and {AGAIN}")
    return None


def _nearly_full(folder: Path) -> bool:
    """Less than a megabyte free for this user on the disk of `folder`."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL


def _open_error(path: Path, error: OSError | sqlite3.Error) -> BatchgenError:
    """Why the ledger cannot be opened, in one line."""
    if isinstance(error, OSError) and out_of_space(error):
        return write_error(error, f"the ledger {path}")
    refused = _disk_refused(error, path)
    if refused is not None:
        return refused
    if isinstance(error, sqlite3.DatabaseError):
        return LedgerError(f"Ledger {path} is not a usable SQLite database: {error}")
    return LedgerError(f"Cannot open ledger {path}: {error}")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing. In a read-only folder SQLite cannot make the WAL's index file, so the
    ledger is then opened as immutable (nothing else can be writing it there)."""
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=30,
                               check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn

