"""The catalog's SQLite schema, versioned by a migrations table.

Each migration is applied once, in its own transaction, and recorded in ``migrations``; a
catalog written by a newer repro-check (a version above :data:`SCHEMA_VERSION`) is refused with
a message, never altered.

Version 1:

- ``snapshots``: environment snapshots, stored once by their hash (``environment.snapshot_hash``).
- ``runs``: one row per session, sweep or comparison. ``id`` is immutable (a UUIDv7 from the
  clock and ``os.urandom``). ``status`` is ``running`` from the start, ``finished`` or
  ``interrupted`` at the end; a ``running`` row whose process is gone was killed (SIGKILL,
  power loss) and is listed as interrupted. Lineage: the command (``argv``, ``cwd``,
  ``python``), ``base_seed``, ``options``, the git commit, branch, dirty flag and hashes of the
  uncommitted diff and of the untracked files, and the environment snapshot.
- ``tests``: per test of a run: verdict, root seed, steps, keys, the digest of everything
  replica 0 recorded, the first divergence, the resume check's outcome.
- ``artifacts``: files a run produced or read, with their sha256 digest (report, environment,
  record digests, checkpoints with their manifest).
- ``data_versions``: the data a test declared with ``repro.record_data`` (content hashes).

Child rows are written only by the transaction that finishes a run, so an interrupted session
leaves its ``running`` row and nothing else.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 1

MIGRATIONS: list[tuple[int, str, tuple[str, ...]]] = [
    (
        1,
        "runs, tests, artifacts, data versions and de-duplicated environment snapshots",
        (
            """CREATE TABLE snapshots (
                hash TEXT PRIMARY KEY,
                captured_at TEXT,
                body TEXT NOT NULL
            )""",
            """CREATE TABLE runs (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted')),
                outcome TEXT,
                exit_code INTEGER,
                started_at TEXT NOT NULL,
                finished_at TEXT,
                host TEXT NOT NULL,
                pid INTEGER NOT NULL,
                process_start TEXT,
                cwd TEXT NOT NULL,
                argv TEXT NOT NULL,
                python TEXT NOT NULL,
                base_seed INTEGER,
                options TEXT NOT NULL DEFAULT '{}',
                git_commit TEXT,
                git_branch TEXT,
                git_dirty INTEGER,
                git_diff_sha256 TEXT,
                git_untracked_sha256 TEXT,
                snapshot_hash TEXT REFERENCES snapshots(hash),
                report_dir TEXT,
                archive TEXT,
                verifies TEXT,
                summary TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX runs_started ON runs (started_at)",
            """CREATE TABLE tests (
                run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
                nodeid TEXT NOT NULL,
                status TEXT NOT NULL,
                seed INTEGER,
                steps INTEGER,
                keys INTEGER,
                record_digest TEXT,
                first_divergence TEXT,
                resume TEXT,
                PRIMARY KEY (run_id, nodeid)
            )""",
            """CREATE TABLE artifacts (
                run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
                kind TEXT NOT NULL,
                path TEXT NOT NULL,
                nodeid TEXT NOT NULL DEFAULT '',
                sha256 TEXT NOT NULL,
                bytes INTEGER NOT NULL,
                manifest TEXT,
                PRIMARY KEY (run_id, path)
            )""",
            "CREATE INDEX artifacts_path ON artifacts (path)",
            """CREATE TABLE data_versions (
                run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
                nodeid TEXT NOT NULL,
                name TEXT NOT NULL,
                kind TEXT NOT NULL,
                digest TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '{}',
                PRIMARY KEY (run_id, nodeid, name)
            )""",
        ),
    ),
]


class CatalogError(RuntimeError):
    """The catalog cannot be used (newer schema, not a catalog, unreadable); says what to do."""


def applied_version(conn: sqlite3.Connection) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, "
        "description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    row = conn.execute("SELECT MAX(version) FROM migrations").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, where: str) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; returns the version found before."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = applied_version(conn)
        if found > SCHEMA_VERSION:
            raise CatalogError(
                f"{where}: catalog schema version {found} is newer than this repro-check "
                f"understands ({SCHEMA_VERSION}); upgrade repro-check (pip install -U "
                f"repro-check), or use another catalog (--repro-catalog=PATH)"
            )
        for version, description, statements in MIGRATIONS:
            if version <= found:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO migrations VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
                (version, description),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found
