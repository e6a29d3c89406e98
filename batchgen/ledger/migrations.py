"""The ledger schema, as an ordered list of migrations (sqlite-utils `Migrations`).

Never edit or rename a migration once released: add a new one. Money columns hold exact decimal text (`*_usd`),
never floats. API timestamps keep the API's names and unix ints; our own are ISO-8601 UTC text named `*_utc`.
"""

from __future__ import annotations

import posixpath

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("batchgen")


@migrations()
def m001_initial(db: Database) -> None:
    _run(
        db,
        """
        CREATE TABLE jobs (
            name TEXT PRIMARY KEY,
            spec_hash TEXT NOT NULL,
            spec_json TEXT NOT NULL,
            job_dir TEXT NOT NULL,
            status TEXT NOT NULL,            -- active | done | cancelled
            stage TEXT,                      -- the stage being worked on
            backend TEXT NOT NULL,
            budget_usd TEXT,
            created_utc TEXT NOT NULL,
            updated_utc TEXT NOT NULL
        );
        CREATE TABLE shards (
            id TEXT PRIMARY KEY,             -- <job>/<stage>/a<attempt>/<n>
            job TEXT NOT NULL REFERENCES jobs(name),
            stage TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            model TEXT NOT NULL,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            lines INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            est_cost_usd TEXT NOT NULL,      -- expected cost at batch price
            max_cost_usd TEXT NOT NULL,      -- worst case (every request at max_tokens)
            status TEXT NOT NULL,            -- pending | submitted | done | failed
            created_utc TEXT NOT NULL
        );
        CREATE INDEX shards_job ON shards(job, stage, status);
        CREATE TABLE intents (
            id INTEGER PRIMARY KEY,
            idempotency_key TEXT NOT NULL UNIQUE,
            job TEXT NOT NULL,
            shard_id TEXT NOT NULL,
            kind TEXT NOT NULL,              -- submit | cancel
            status TEXT NOT NULL,            -- pending | done | abandoned
            file_id TEXT,
            batch_id TEXT,
            created_utc TEXT NOT NULL,
            updated_utc TEXT NOT NULL
        );
        CREATE TABLE batches (
            id TEXT PRIMARY KEY,             -- remote batch id
            job TEXT NOT NULL,
            shard_id TEXT NOT NULL,
            backend TEXT NOT NULL,
            status TEXT NOT NULL,
            input_file_id TEXT NOT NULL,
            output_file_id TEXT,
            error_file_id TEXT,
            total INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER,
            completed_at INTEGER,
            est_cost_usd TEXT NOT NULL,
            actual_cost_usd TEXT,
            usage_json TEXT,
            batch_json TEXT NOT NULL,
            collected INTEGER NOT NULL DEFAULT 0,
            polls INTEGER NOT NULL DEFAULT 0,
            next_poll_utc TEXT,
            submitted_utc TEXT NOT NULL,
            updated_utc TEXT NOT NULL
        );
        CREATE INDEX batches_job ON batches(job, status);
        CREATE TABLE requests (
            custom_id TEXT PRIMARY KEY,
            job TEXT NOT NULL,
            stage TEXT NOT NULL,
            variant INTEGER NOT NULL,
            cell_json TEXT NOT NULL,
            shard_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            -- compiled -> submitted -> succeeded | failed | expired | cancelled | invalid | missing -> retried
            status TEXT NOT NULL,
            batch_id TEXT
        );
        CREATE INDEX requests_shard ON requests(shard_id);
        CREATE INDEX requests_job ON requests(job, stage, status);
        CREATE TABLE results (
            custom_id TEXT PRIMARY KEY REFERENCES requests(custom_id),
            batch_id TEXT NOT NULL,
            job TEXT NOT NULL,
            source TEXT NOT NULL,            -- output | error | missing
            status_code INTEGER,
            error_code TEXT,
            error_message TEXT,
            finish_reason TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd TEXT NOT NULL,
            priced_by TEXT,
            request_id TEXT,
            collected_utc TEXT NOT NULL
        );
        CREATE INDEX results_batch ON results(batch_id);
        CREATE INDEX results_job ON results(job);
        CREATE TABLE examples (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL,
            stage TEXT NOT NULL,
            custom_id TEXT NOT NULL,
            position INTEGER NOT NULL,       -- index of the example inside its response
            content_json TEXT,
            content_hash TEXT,
            valid INTEGER NOT NULL,
            category TEXT,                   -- rejection category, null when valid
            reason TEXT,
            duplicate_of TEXT                -- one row per (custom_id, position): collect records a batch once
        );
        CREATE INDEX examples_job ON examples(job, stage, valid);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at_utc TEXT NOT NULL,
            job TEXT,
            batch_id TEXT,
            kind TEXT NOT NULL,
            detail_json TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_job ON events(job);
        """
    )


@migrations()
def m002_facts_of_their_own(db: Database) -> None:
    """Facts that were read back out of events' JSON get homes of their own; events stay an audit trail.

    Each is filled from the events an older ledger already holds, so nothing it learned is lost.
    """
    _run(
        db,
        """
        CREATE TABLE queue_limits (
            model TEXT PRIMARY KEY,
            limit_tokens INTEGER NOT NULL,   -- the queued-token limit the provider named (token_limit_exceeded)
            learned_utc TEXT NOT NULL
        );
        INSERT INTO queue_limits (model, limit_tokens, learned_utc)
            SELECT json_extract(detail_json, '$.model'), json_extract(detail_json, '$.limit'), at_utc FROM events
            WHERE id IN (SELECT max(id) FROM events WHERE kind = 'queue_limit'
                         AND json_extract(detail_json, '$.limit') IS NOT NULL
                         GROUP BY json_extract(detail_json, '$.model'));
        -- the dataset written when the job finished
        ALTER TABLE jobs ADD COLUMN dataset_path TEXT;
        ALTER TABLE jobs ADD COLUMN dataset_examples INTEGER;
        ALTER TABLE jobs ADD COLUMN dataset_sha256 TEXT;
        UPDATE jobs SET
            dataset_path = (SELECT json_extract(e.detail_json, '$.dataset') FROM events e
                            WHERE e.job = jobs.name AND e.kind = 'done' ORDER BY e.id DESC LIMIT 1),
            dataset_examples = (SELECT json_extract(e.detail_json, '$.written') FROM events e
                                WHERE e.job = jobs.name AND e.kind = 'done' ORDER BY e.id DESC LIMIT 1),
            dataset_sha256 = (SELECT json_extract(e.detail_json, '$.sha256') FROM events e
                              WHERE e.job = jobs.name AND e.kind = 'done' ORDER BY e.id DESC LIMIT 1);
        CREATE TABLE stage_shortfalls (
            job TEXT NOT NULL,
            stage TEXT NOT NULL,
            target INTEGER NOT NULL,
            missing INTEGER NOT NULL,        -- valid examples the stage lacks
            top_ups INTEGER NOT NULL,        -- top-up rounds it had
            reason TEXT NOT NULL,            -- max_top_ups | budget
            at_utc TEXT NOT NULL,
            PRIMARY KEY (job, stage)
        );
        INSERT INTO stage_shortfalls (job, stage, target, missing, top_ups, reason, at_utc)
            SELECT job, json_extract(detail_json, '$.stage'), json_extract(detail_json, '$.target'),
                   json_extract(detail_json, '$.missing'), json_extract(detail_json, '$.top_ups'),
                   json_extract(detail_json, '$.reason'), at_utc FROM events
            WHERE id IN (SELECT max(id) FROM events WHERE kind = 'short'
                         GROUP BY job, json_extract(detail_json, '$.stage'))
        """
    )


@migrations()
def m003_blocked_jobs(db: Database) -> None:
    """A job that met a dead end (a cause retrying cannot change) ends `blocked`, and says why."""
    _run(db, "ALTER TABLE jobs ADD COLUMN blocked_reason TEXT")


@migrations()
def m004_unblocks(db: Database) -> None:
    """`batchgen jobs unblock`: the rounds a user has seen through. A dead end is judged on later rounds only, so an
    unblocked job gets one more round, and a cause that is still there blocks it again."""
    _run(
        db,
        """
        CREATE TABLE unblocks (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL REFERENCES jobs(name),
            stage TEXT NOT NULL,
            attempt INTEGER NOT NULL,        -- the stage's latest round when the job was unblocked
            cause TEXT NOT NULL,             -- the blocked_reason it was unblocked from
            at_utc TEXT NOT NULL
        );
        CREATE INDEX unblocks_job ON unblocks(job, stage)
        """
    )


@migrations()
def m005_paths_relative_to_the_workspace(db: Database) -> None:
    """Paths inside the workspace are recorded relative to it, so that the workspace can be moved; the job directory,
    which lies outside it, is also recorded relative to the workspace's parent folder (the project), for when the
    whole project moves; and what collect needs of the job directory (its seeds and price file) gets a column of its
    own, so that a job's batches can be collected after its directory is gone (filled when a job is next read).

    The workspace a shard was compiled in is read off its path (`<workspace>/shards/<job>/<stage>/...`, the layout
    compile writes), so a ledger whose workspace was moved before this migration is rewritten as well. Events keep
    the paths they were written with: they are history.
    """
    _run(
        db,
        """
        -- the job directory from the workspace's parent folder, when it lies inside that folder
        ALTER TABLE jobs ADD COLUMN job_dir_relative TEXT;
        -- what collect needs of the job directory: {"seeds": [...], "price_file": {"origin", "text"} or null}
        ALTER TABLE jobs ADD COLUMN job_files_json TEXT
        """
    )
    roots: dict[str, str] = {}
    for shard_id, job, stage, path in db.execute("SELECT id, job, stage, path FROM shards").fetchall():
        root = _workspace_of(path, job, stage)
        if root is not None:
            roots.setdefault(job, root)
            db.execute("UPDATE shards SET path = ? WHERE id = ?", [path[len(root) + 1:], shard_id])
    for name, job_dir, dataset in db.execute("SELECT name, job_dir, dataset_path FROM jobs").fetchall():
        root = roots.get(name)
        if root is not None:
            db.execute("UPDATE jobs SET dataset_path = ?, job_dir_relative = ? WHERE name = ?",
                       [_inside(dataset, root) or dataset, _inside(job_dir, posixpath.dirname(root)), name])


@migrations()
def m006_lineage(db: Database) -> None:
    """Each example knows its parent (a source example of the stage it was evolved from, or for a first stage the
    seed it most resembles) and the seed at the top of its chain; each request records the parents it was shown, so
    that collect can tell its examples theirs."""
    _run(
        db,
        """
        -- the example's parent: "custom_id#position" of a source example, or "seed:<i>"; null when unknown
        ALTER TABLE examples ADD COLUMN parent TEXT;
        -- the top of its chain: "seed:<i>", or the first-stage example whose request showed no seed
        ALTER TABLE examples ADD COLUMN root TEXT;
        -- the request's candidate parents, in the order shown: [[key, root], ...] (seeds or source examples)
        ALTER TABLE requests ADD COLUMN parents_json TEXT
        """
    )


@migrations()
def m007_cell_shortfalls(db: Database) -> None:
    """A stage's axis cells that ended below their share of its target, and why: a top-up goes to the cells below
    their share, and what it could not fill the job reports (`batchgen show`, `run`'s summary)."""
    _run(
        db,
        """
        CREATE TABLE cell_shortfalls (
            job TEXT NOT NULL,
            stage TEXT NOT NULL,
            cell_json TEXT NOT NULL,         -- the cell, as requests.cell_json has it
            share INTEGER NOT NULL,          -- its share of the stage's target
            valid INTEGER NOT NULL,          -- its valid examples when the stage ended
            requests INTEGER NOT NULL,       -- requests sent for it, every attempt
            top_ups INTEGER NOT NULL,        -- top-up rounds the stage had
            reason TEXT NOT NULL,            -- max_top_ups | budget | dead_end | no_variant
            at_utc TEXT NOT NULL,
            PRIMARY KEY (job, stage, cell_json)
        )
        """
    )


@migrations()
def m009_reviews(db: Database) -> None:
    """A domain expert's verdict on an example (`batchgen review --import`): the lesson's warning that the filter
    catches format errors, not semantic ones. One row per example, so importing a file again changes nothing; an
    example rejected here leaves the export."""
    _run(
        db,
        """
        CREATE TABLE reviews (
            custom_id TEXT NOT NULL,         -- the example's request
            position INTEGER NOT NULL,       -- and its index in the response: the key examples.duplicate_of uses
            job TEXT NOT NULL REFERENCES jobs(name),
            stage TEXT NOT NULL,
            verdict TEXT NOT NULL,           -- accept | reject
            note TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL,            -- the file the verdict came from (relative to the workspace inside it)
            reviewed_utc TEXT NOT NULL,      -- when this verdict was first imported
            PRIMARY KEY (custom_id, position)
        );
        CREATE INDEX reviews_job ON reviews(job, stage, verdict)
        """
    )


@migrations()
def m010_previews(db: Database) -> None:
    """`batchgen preview`: requests sent synchronously at standard price before a run, each with its usage, its exact
    cost and the verdict on its answer. Kept apart from batch results, so that batch spend stays what the batches
    cost, while the budget counts both."""
    _run(
        db,
        """
        CREATE TABLE previews (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL REFERENCES jobs(name),
            run INTEGER NOT NULL,            -- which preview of the job: 1, 2, ...
            stage TEXT NOT NULL,
            variant INTEGER NOT NULL,        -- the variant index the request was rendered from
            cell_json TEXT NOT NULL,
            backend TEXT NOT NULL,           -- where it was sent: embedded, or openai:<base url>, azure:<base url>
            model TEXT NOT NULL,
            finish_reason TEXT,
            prompt_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL,
            cost_usd TEXT NOT NULL,          -- the usage at standard price (the embedded emulator bills nothing)
            priced_by TEXT NOT NULL,
            examples INTEGER NOT NULL,       -- examples the answer held (a rejected answer: 0)
            valid INTEGER NOT NULL,          -- of those, the valid ones
            at_utc TEXT NOT NULL
        );
        CREATE INDEX previews_job ON previews(job, run)
        """
    )


@migrations()
def m011_judgments(db: Database) -> None:
    """The scores of a judge stage (`[[stages]] kind = "judge"`): one row per example it scored, the first score
    kept, so collecting a batch again changes nothing. An example scored below the stage's threshold is also
    rejected in `examples` (category judge), so that what reads the examples follows without reading this."""
    _run(
        db,
        """
        CREATE TABLE judgments (
            job TEXT NOT NULL REFERENCES jobs(name),
            stage TEXT NOT NULL,             -- the judge stage
            example TEXT NOT NULL,           -- the example scored: "custom_id#position" of its stage's examples
            custom_id TEXT NOT NULL,         -- the judge's request that scored it
            shown INTEGER NOT NULL,          -- the example's index among those the request showed
            score REAL NOT NULL,             -- 1 to 10
            passed INTEGER NOT NULL,         -- score >= the stage's threshold
            reason TEXT NOT NULL,            -- the judge's own words
            at_utc TEXT NOT NULL,
            PRIMARY KEY (job, stage, example)
        )
        """
    )


@migrations()
def m012_standard_price(db: Database) -> None:
    """What each result would have cost at the standard (synchronous) price, priced when it was collected by the same
    price as its `cost_usd`, so `batchgen costs` can say what the Batch API saved without pricing old tokens at
    today's rates. NULL in rows collected before this column existed (`costs` prices those when it reads them)."""
    _run(db, "ALTER TABLE results ADD COLUMN standard_cost_usd TEXT")


@migrations()
def m013_estimate_basis(db: Database) -> None:
    """What priced each shard's expected cost: the stage's prior figures, or figures learned from earlier answers
    (`batchgen.recipe.estimates`), with the output tokens a request it assumed; and the digest of the template it was
    rendered from, by which a later job of the same model and template finds the answers to learn from. Shards
    recorded before were all priced with the prior. It adds columns to `shards` alone, so it applies the same
    whatever migration ran before it."""
    _run(
        db,
        """
        ALTER TABLE shards ADD COLUMN estimate_basis TEXT NOT NULL DEFAULT 'prior';
        ALTER TABLE shards ADD COLUMN est_output_tokens INTEGER;
        ALTER TABLE shards ADD COLUMN template_digest TEXT;
        CREATE INDEX shards_template ON shards(model, template_digest)
        """
    )


def _workspace_of(path: str, job: str, stage: str) -> str | None:
    """The workspace a shard file was compiled in, from its path; None for a path not of that layout."""
    found = path.rfind(f"/shards/{job}/{stage}/")
    return path[:found] if found > 0 else None


def _inside(path: str | None, folder: str) -> str | None:
    """`path` relative to `folder` when it lies inside it, else None."""
    if path is None or not path.startswith(folder.rstrip("/") + "/"):
        return None
    return path[len(folder.rstrip("/")) + 1:]


def _run(db: Database, script: str) -> None:
    """Execute statements one by one (executescript would COMMIT the migration's transaction early)."""
    for statement in script.split(";\n"):
        if statement.strip():
            db.execute(statement)


def apply(db: Database) -> None:
    migrations.apply(db)


def known_names() -> list[str]:
    return [m.name for m in migrations._migrations]
