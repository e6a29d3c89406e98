"""The ledger's connection: opening and migrating the SQLite file, transactions, and the few primitives that the
record classes (`batchgen.ledger.jobs`, `.batches`, ...) build their named methods on.

Every read-modify-write runs inside `transaction()` (BEGIN IMMEDIATE), so two processes on one workspace never
interleave a decision and its record. WAL mode lets `status` read while a `run` writes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

from sqlite_utils import Database

from batchgen.errors import LedgerError
from batchgen.ledger import migrations


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


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
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"Ledger {path} is not a usable SQLite database: {error}") from error
        except (OSError, sqlite3.Error) as error:
            raise LedgerError(f"Cannot open ledger {path}: {error}") from error
        db = Database(conn)
        ledger = cls(db, path)
        try:
            ledger._migrate()
        except sqlite3.DatabaseError as error:
            conn.close()
            raise LedgerError(f"Ledger {path} is not a usable SQLite database: {error}") from error
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
        path.parent.mkdir(parents=True, exist_ok=True)
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
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

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
        return self.db.conn.execute(sql, params)  # type: ignore[arg-type]

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
                 "stage_shortfalls"]
        return {name: int(self.scalar(f"SELECT count(*) FROM {name}")) for name in names}

    def backup(self, target: str | Path) -> Path:
        target = Path(target)
        if target.exists():
            raise LedgerError(f"Backup target {target} already exists; choose another path")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            copy = sqlite3.connect(str(target))
        except (OSError, sqlite3.Error) as error:
            raise LedgerError(f"Cannot write the backup {target}: {error}") from None
        try:
            self.db.conn.backup(copy)  # page by page, from a read-only connection too
        except sqlite3.Error as error:
            copy.close()
            target.unlink(missing_ok=True)  # never a half-written backup
            raise LedgerError(f"Cannot write the backup {target}: {error}") from None
        copy.close()
        return target

    # -- events --------------------------------------------------------------------------------------------
    def event(self, kind: str, *, job: str | None = None, batch_id: str | None = None, **detail: Any) -> None:
        self._execute(
            "INSERT INTO events (at_utc, job, batch_id, kind, detail_json) VALUES (?, ?, ?, ?, ?)",
            [utcnow(), job, batch_id, kind, json.dumps(detail, default=str, sort_keys=True)],
        )


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

