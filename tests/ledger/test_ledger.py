import sqlite3

import pytest
from sqlite_utils import Database

from batchgen.errors import LedgerError, NotFoundError
from batchgen.ledger import Ledger, dec_sum, migrations


@pytest.fixture
def ledger(tmp_path):
    with Ledger.open(tmp_path / "ledger.db") as opened:
        yield opened


SCHEMA = {
    "batches": {"id": str, "job": str, "shard_id": str, "backend": str, "status": str, "input_file_id": str,
                "output_file_id": str, "error_file_id": str, "total": int, "completed": int, "failed": int,
                "created_at": int, "completed_at": int, "est_cost_usd": str, "actual_cost_usd": str, "usage_json": str,
                "batch_json": str, "collected": int, "polls": int, "next_poll_utc": str, "submitted_utc": str,
                "updated_utc": str},
    "cell_shortfalls": {"job": str, "stage": str, "cell_json": str, "share": int, "valid": int, "requests": int,
                        "top_ups": int, "reason": str, "at_utc": str},
    "events": {"id": int, "at_utc": str, "job": str, "batch_id": str, "kind": str, "detail_json": str},
    "examples": {"id": int, "job": str, "stage": str, "custom_id": str, "position": int, "content_json": str,
                 "content_hash": str, "valid": int, "category": str, "reason": str, "duplicate_of": str,
                 "parent": str, "root": str},
    "intents": {"id": int, "idempotency_key": str, "job": str, "shard_id": str, "kind": str, "status": str,
                "file_id": str, "batch_id": str, "created_utc": str, "updated_utc": str},
    "jobs": {"name": str, "spec_hash": str, "spec_json": str, "job_dir": str, "status": str, "stage": str,
             "backend": str, "budget_usd": str, "created_utc": str, "updated_utc": str, "dataset_path": str,
             "dataset_examples": int, "dataset_sha256": str, "blocked_reason": str, "job_dir_relative": str,
             "job_files_json": str},
    "previews": {"id": int, "job": str, "run": int, "stage": str, "variant": int, "cell_json": str, "backend": str,
                 "model": str, "finish_reason": str, "prompt_tokens": int, "cached_tokens": int,
                 "completion_tokens": int, "reasoning_tokens": int, "cost_usd": str, "priced_by": str,
                 "examples": int, "valid": int, "at_utc": str},
    "queue_limits": {"model": str, "limit_tokens": int, "learned_utc": str},
    "requests": {"custom_id": str, "job": str, "stage": str, "variant": int, "cell_json": str, "shard_id": str,
                 "attempt": int, "input_tokens": int, "status": str, "batch_id": str, "parents_json": str},
    "results": {"custom_id": str, "batch_id": str, "job": str, "source": str, "status_code": int, "error_code": str,
                "error_message": str, "finish_reason": str, "prompt_tokens": int, "cached_tokens": int,
                "completion_tokens": int, "reasoning_tokens": int, "cost_usd": str, "priced_by": str,
                "request_id": str, "collected_utc": str, "standard_cost_usd": str},
    "shards": {"id": str, "job": str, "stage": str, "attempt": int, "model": str, "path": str, "sha256": str,
               "lines": int, "bytes": int, "input_tokens": int, "est_cost_usd": str, "max_cost_usd": str,
               "status": str, "created_utc": str, "estimate_basis": str, "est_output_tokens": int,
               "template_digest": str},
    "stage_shortfalls": {"job": str, "stage": str, "target": int, "missing": int, "top_ups": int, "reason": str,
                         "at_utc": str},
    "unblocks": {"id": int, "job": str, "stage": str, "attempt": int, "cause": str, "at_utc": str},
    "reviews": {"custom_id": str, "position": int, "job": str, "stage": str, "verdict": str, "note": str,
                "source": str, "reviewed_utc": str},
    "judgments": {"job": str, "stage": str, "example": str, "custom_id": str, "shown": int, "score": float,
                  "passed": int, "reason": str, "at_utc": str},
}
PRIMARY_KEYS = {"batches": ["id"], "cell_shortfalls": ["job", "stage", "cell_json"],
                "events": ["id"], "examples": ["id"], "intents": ["id"], "jobs": ["name"],
                "previews": ["id"],
                "queue_limits": ["model"], "requests": ["custom_id"], "results": ["custom_id"], "shards": ["id"],
                "stage_shortfalls": ["job", "stage"], "unblocks": ["id"], "reviews": ["custom_id", "position"],
                "judgments": ["job", "stage", "example"]}


def blank(path):
    return Database(sqlite3.connect(str(path), isolation_level=None))


def test_blank_database_migrates_to_the_full_schema(tmp_path):
    db = blank(tmp_path / "x.db")
    migrations.apply(db)
    assert set(db.table_names()) == {*SCHEMA, "_sqlite_migrations"}
    for name, columns in SCHEMA.items():
        assert db[name].columns_dict == columns, name
        assert db[name].pks == PRIMARY_KEYS[name], name
    db.conn.close()


def test_a_ledger_of_the_first_schema_keeps_what_its_events_knew(tmp_path):
    """m002 gives the learned queue limit, the dataset and the shortfalls homes of their own, filled from events."""
    db = blank(tmp_path / "old.db")
    migrations.migrations.apply(db, stop_before="m002_facts_of_their_own")
    db["jobs"].insert({"name": "j", "spec_hash": "h", "spec_json": "{}", "job_dir": "jobs/j", "status": "done",
                       "stage": "main", "backend": "embedded", "created_utc": "t0", "updated_utc": "t0"})
    for at, kind, detail in [
            ("t1", "queue_limit", '{"model": "gpt-4o-mini", "limit": 1000}'),
            ("t2", "queue_limit", '{"model": "gpt-4o-mini", "limit": 800}'),
            ("t3", "short", '{"stage": "main", "target": 10, "missing": 4, "top_ups": 1, "reason": "budget"}'),
            ("t4", "short", '{"stage": "main", "target": 10, "missing": 2, "top_ups": 2, "reason": "max_top_ups"}'),
            ("t5", "done", '{"dataset": "/d/j.jsonl", "written": 8, "sha256": "abc"}')]:
        db["events"].insert({"at_utc": at, "job": "j", "kind": kind, "detail_json": detail})
    db.conn.close()
    with Ledger.open(tmp_path / "old.db") as ledger:
        assert ledger.migration_status()["pending"] == []
        assert ledger.learned_queue_limit("gpt-4o-mini") == 800
        assert ledger.dataset("j") == {"path": "/d/j.jsonl", "examples": 8, "sha256": "abc"}
        assert ledger.shortfalls("j") == [{"stage": "main", "target": 10, "missing": 2, "top_ups": 2,
                                           "reason": "max_top_ups"}]


def _shard_row(shard_id, job, path):
    return {"id": shard_id, "job": job, "stage": "main", "attempt": 1, "model": "gpt-4o-mini", "path": path,
            "sha256": "s", "lines": 1, "bytes": 1, "input_tokens": 1, "est_cost_usd": "0", "max_cost_usd": "0",
            "status": "done", "created_utc": "t0"}


def test_m005_records_the_paths_inside_a_workspace_relative_to_it(tmp_path):
    """Shard files and datasets become relative to the workspace they were in, read off each shard's path (so a
    workspace moved before the migration is rewritten too); the job directory gets its path from the project."""
    db = blank(tmp_path / "old.db")
    migrations.migrations.apply(db, stop_before="m005_paths_relative_to_the_workspace")
    jobs = [("here", "/proj/.batchgen", "/proj/jobs/here"), ("moved", "/old place/ws", "/elsewhere/jobs/moved")]
    for name, root, job_dir in jobs:
        db["jobs"].insert({"name": name, "spec_hash": "h", "spec_json": "{}", "job_dir": job_dir, "status": "done",
                           "stage": "main", "backend": "embedded", "created_utc": "t0", "updated_utc": "t0",
                           "dataset_path": f"{root}/datasets/{name}.sharegpt.jsonl"})
        path = f"{root}/shards/{name}/main/abc/a1/shard-00000.jsonl"
        db["shards"].insert(_shard_row(f"{name}/main/a1/00000", name, path))
    db["shards"].insert(_shard_row("here/main/a1/00001", "here", "/somewhere/else/shard-00001.jsonl"))
    db.conn.close()
    with Ledger.open(tmp_path / "old.db") as ledger:
        assert ledger.rows("SELECT id, path FROM shards ORDER BY id") == [
            {"id": "here/main/a1/00000", "path": "shards/here/main/abc/a1/shard-00000.jsonl"},
            {"id": "here/main/a1/00001", "path": "/somewhere/else/shard-00001.jsonl"},  # not of the layout: as it was
            {"id": "moved/main/a1/00000", "path": "shards/moved/main/abc/a1/shard-00000.jsonl"}]
        assert ledger.rows("SELECT name, job_dir, job_dir_relative, dataset_path, job_files_json FROM jobs "
                           "ORDER BY name") == [
            {"name": "here", "job_dir": "/proj/jobs/here", "job_dir_relative": "jobs/here",
             "dataset_path": "datasets/here.sharegpt.jsonl", "job_files_json": None},
            {"name": "moved", "job_dir": "/elsewhere/jobs/moved", "job_dir_relative": None,  # outside its project
             "dataset_path": "datasets/moved.sharegpt.jsonl", "job_files_json": None}]


def test_no_two_record_classes_define_the_same_method():
    """Ledger is composed of one record class per part of the schema; a name defined twice would silently shadow."""
    seen: dict[str, str] = {}
    for cls in Ledger.__mro__[1:-1]:
        for name, value in vars(cls).items():
            if callable(value) and not name.startswith("__"):
                assert name not in seen, f"{name} is defined in {seen.get(name)} and {cls.__name__}"
                seen[name] = cls.__name__


def test_open_is_idempotent_and_records_migrations(tmp_path):
    Ledger.open(tmp_path / "l.db").close()
    with Ledger.open(tmp_path / "l.db") as again:
        applied = ["m001_initial", "m002_facts_of_their_own", "m003_blocked_jobs", "m004_unblocks",
                   "m005_paths_relative_to_the_workspace", "m006_lineage", "m007_cell_shortfalls",
                   "m009_reviews", "m010_previews", "m011_judgments", "m012_standard_price",
                   "m013_estimate_basis"]
        assert again.migration_status() == {"applied": applied, "pending": []}
        assert again.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_ledger_from_a_newer_batchgen_is_refused(tmp_path):
    path = tmp_path / "l.db"
    with Ledger.open(path) as ledger:
        ledger.db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
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
