import sqlite3

import pytest
from sqlite_utils import Database

from batchgen.errors import LedgerError, NotFoundError
from batchgen.ledger import Ledger, dec_sum, migrations


@pytest.fixture
def ledger(tmp_path):
    with Ledger.open(tmp_path / "ledger.db") as opened:
        yield opened


def test_blank_database_migrates_to_the_full_schema(tmp_path):
    db = Database(sqlite3.connect(str(tmp_path / "x.db"), isolation_level=None))
    migrations.apply(db)
    assert set(db.table_names()) >= {"jobs", "shards", "intents", "batches", "requests", "results",
                                     "examples", "events", "_sqlite_migrations"}
    assert db["results"].columns_dict == {
        "custom_id": str, "batch_id": str, "job": str, "source": str, "status_code": int, "error_code": str,
        "error_message": str, "finish_reason": str, "prompt_tokens": int, "cached_tokens": int,
        "completion_tokens": int, "reasoning_tokens": int, "cost_usd": str, "priced_by": str,
        "request_id": str, "collected_utc": str,
    }
    assert db["requests"].pks == ["custom_id"]
    db.conn.close()


def test_open_is_idempotent_and_records_migrations(tmp_path):
    Ledger.open(tmp_path / "l.db").close()
    with Ledger.open(tmp_path / "l.db") as again:
        assert again.migration_status() == {"applied": ["m001_initial"], "pending": []}
        assert again.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_ledger_from_a_newer_batchgen_is_refused(tmp_path):
    path = tmp_path / "l.db"
    with Ledger.open(path) as ledger:
        ledger.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                       "VALUES ('batchgen', 'm999_future', 'now')")
    with pytest.raises(LedgerError, match="newer batchgen"):
        Ledger.open(path)


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    path = tmp_path / "l.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="not a usable SQLite database"):
        Ledger.open(path)


def test_transaction_rolls_back_on_error(ledger):
    with pytest.raises(RuntimeError):
        with ledger.transaction():
            ledger.event("x", job="j")
            raise RuntimeError("boom")
    assert ledger.table_counts()["events"] == 0
    with ledger.transaction():
        ledger.event("y", job="j", n=1)
    assert ledger.rows("SELECT kind, detail_json FROM events") == [{"kind": "y", "detail_json": '{"n": 1}'}]


def test_unknown_job_names_the_fix(ledger):
    with pytest.raises(NotFoundError, match="batchgen jobs list"):
        ledger.job("nope")


def test_backup_copies_the_ledger(ledger, tmp_path):
    with ledger.transaction():
        ledger.event("hello")
    target = ledger.backup(tmp_path / "backup.db")
    with Ledger.open(target) as copy:
        assert copy.table_counts()["events"] == 1
    with pytest.raises(LedgerError, match="already exists"):
        ledger.backup(target)


def test_money_sums_are_exact():
    assert dec_sum(["0.000009225", "0.1", "0.2", None]) == __import__("decimal").Decimal("0.300009225")
