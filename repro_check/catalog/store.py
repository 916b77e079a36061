"""The run catalog: an SQLite file (stdlib ``sqlite3``) indexing every run and its lineage.

Concurrency: WAL journal (readers never block the writer), a 30 s busy timeout, and every write
in a ``BEGIN IMMEDIATE`` transaction, so two sessions -- or an xdist controller and a sweep --
writing at once wait their turn instead of failing. A run is written twice: its row, with status
``running``, when it starts (one small transaction), and everything else -- tests, artifacts,
data versions, the snapshot, the final status -- in one transaction when it ends. A process
killed in between leaves the ``running`` row alone, which :meth:`Catalog.runs` reports as
``interrupted`` once its process is gone; nothing is ever half-written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from repro_check.catalog import lineage
from repro_check.catalog.model import (
    FINISHED,
    INTERRUPTED,
    KINDS,
    RUNNING,
    Artifact,
    DataVersion,
    RunEnd,
    RunRow,
    RunStart,
    TestEntry,
    dumps,
    loads,
)
from repro_check.catalog.schema import CatalogError, migrate

BUSY_TIMEOUT_S = 30.0
_RUN_COLUMNS = (
    "id, kind, status, outcome, exit_code, started_at, finished_at, host, pid, process_start, "
    "cwd, argv, python, base_seed, options, git_commit, git_branch, git_dirty, git_diff_sha256, "
    "git_untracked_sha256, snapshot_hash, report_dir, archive, verifies, summary"
)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class Catalog:
    """One catalog file; open it with :func:`open_catalog` (or as a context manager)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a network file system without shared memory
                raise CatalogError(
                    f"{self.path}: SQLite cannot use WAL mode here (journal mode {mode}); put "
                    f"the catalog on a local disk (--repro-catalog=PATH)"
                )
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            migrate(self.conn, str(self.path))
        except sqlite3.DatabaseError as exc:
            raise CatalogError(
                f"{self.path}: not a usable repro-check catalog ({exc}); move it aside or "
                f"choose another path with --repro-catalog=PATH"
            ) from None
        except OSError as exc:
            raise CatalogError(f"{self.path}: cannot open the catalog ({exc.strerror})") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: it commits whole or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ----------------------------------------------------------------------------- writing

    def start_run(self, start: RunStart, run_id: str | None = None) -> str:
        """Insert the run's row (status ``running``); returns its new, immutable id."""
        if start.kind not in KINDS:
            raise ValueError(f"run kind {start.kind!r}: expected one of {', '.join(KINDS)}")
        run_id = run_id or lineage.new_run_id()
        who = lineage.owner()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, kind, status, started_at, host, pid, process_start, cwd, "
                "argv, python, base_seed, options, report_dir, verifies) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    start.kind,
                    RUNNING,
                    now(),
                    who["host"],
                    who["pid"],
                    who["process_start"],
                    start.cwd,
                    dumps(list(start.argv)),
                    start.python,
                    start.base_seed,
                    dumps(start.options),
                    start.report_dir,
                    start.verifies,
                ),
            )
        return run_id

    def finish_run(self, run_id: str, end: RunEnd) -> None:
        """Everything the run adds, and its final status, in one transaction."""
        if end.status not in (FINISHED, INTERRUPTED):
            raise ValueError(f"a run ends finished or interrupted, not {end.status!r}")
        snapshot_hash = None
        if end.snapshot:
            snapshot_hash = snapshot_key(end.snapshot)
        git = end.git or lineage.git_lineage(end.snapshot)
        with self.transaction() as conn:
            found = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if found is None:
                raise CatalogError(f"{self.path}: no run {run_id} to finish")
            if found[0] != RUNNING:
                raise CatalogError(f"{self.path}: run {run_id} is already {found[0]}")
            if snapshot_hash is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO snapshots VALUES (?, ?, ?)",
                    (snapshot_hash, end.snapshot.get("captured_at"), dumps(end.snapshot)),
                )
            conn.executemany(
                "INSERT OR REPLACE INTO tests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        t.nodeid,
                        t.status,
                        t.seed,
                        t.steps,
                        t.keys,
                        t.record_digest,
                        t.first_divergence,
                        dumps(t.resume) if t.resume else None,
                    )
                    for t in end.tests
                ],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        a.kind,
                        a.path,
                        a.nodeid,
                        a.sha256,
                        a.bytes,
                        dumps(a.manifest) if a.manifest is not None else None,
                    )
                    for a in end.artifacts
                ],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO data_versions VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (run_id, d.nodeid, d.name, d.kind, d.digest, dumps(d.detail))
                    for d in end.data_versions
                ],
            )
            conn.execute(
                "UPDATE runs SET status = ?, outcome = ?, exit_code = ?, finished_at = ?, "
                "git_commit = ?, git_branch = ?, git_dirty = ?, git_diff_sha256 = ?, "
                "git_untracked_sha256 = ?, snapshot_hash = ?, archive = ?, summary = ? "
                "WHERE id = ?",
                (
                    end.status,
                    end.outcome,
                    end.exit_code,
                    now(),
                    git.get("commit"),
                    git.get("branch"),
                    None if git.get("dirty") is None else int(bool(git.get("dirty"))),
                    git.get("diff"),
                    git.get("untracked"),
                    snapshot_hash,
                    end.archive,
                    dumps(end.summary),
                    run_id,
                ),
            )

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        """Delete runs (their tests, artifacts and data versions with them) and the snapshots
        no remaining run uses, in one transaction."""
        with self.transaction() as conn:
            conn.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in run_ids])
            conn.execute(
                "DELETE FROM snapshots WHERE hash NOT IN "
                "(SELECT snapshot_hash FROM runs WHERE snapshot_hash IS NOT NULL)"
            )

    # ----------------------------------------------------------------------------- reading

    def runs(self, limit: int | None = None) -> list[RunRow]:
        """Runs, newest first (without their tests and artifacts)."""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY started_at DESC, rowid DESC"
        rows = self.conn.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        return [_run_row(row) for row in rows.fetchall()]

    def resolve(self, ref: str) -> str:
        """A run id from a full id, a unique prefix, ``latest`` or ``latest~N``."""
        ref = ref.strip()
        if ref == "latest" or ref.startswith("latest~"):
            back = ref.partition("~")[2] or "0"
            if not back.isdigit():
                raise CatalogError(f"{ref!r}: write latest~N with N a number (latest~1)")
            row = self.conn.execute(
                "SELECT id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1 OFFSET ?",
                (int(back),),
            ).fetchone()
            if row is None:
                raise CatalogError(f"{self.path}: no run {ref} (the catalog holds fewer runs)")
            return str(row[0])
        found = self.conn.execute(
            "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY started_at LIMIT 3",
            (ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
        ).fetchall()
        if not found or not ref:
            raise CatalogError(
                f"{self.path}: no run {ref!r}; list them with: repro-check runs list"
            )
        if len(found) > 1:
            raise CatalogError(
                f"{self.path}: {ref!r} is the start of several runs ({found[0][0]}, "
                f"{found[1][0]}, ...); give more characters of the id"
            )
        return str(found[0][0])

    def get(self, ref: str) -> RunRow:
        """One run with its tests, artifacts and data versions."""
        run_id = self.resolve(ref)
        row = self.conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        run = _run_row(row.fetchone())
        run.tests = [
            TestEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6] or "", loads(r[7]))
            for r in self.conn.execute(
                "SELECT nodeid, status, seed, steps, keys, record_digest, first_divergence, "
                "resume FROM tests WHERE run_id = ? ORDER BY nodeid",
                (run_id,),
            )
        ]
        run.artifacts = [
            Artifact(r[0], r[1], r[2], r[3], r[4], loads(r[5]))
            for r in self.conn.execute(
                "SELECT kind, path, sha256, bytes, nodeid, manifest FROM artifacts "
                "WHERE run_id = ? ORDER BY kind, path",
                (run_id,),
            )
        ]
        run.data_versions = [
            DataVersion(r[0], r[1], r[2], r[3], loads(r[4], {}))
            for r in self.conn.execute(
                "SELECT nodeid, name, kind, digest, detail FROM data_versions WHERE run_id = ? "
                "ORDER BY nodeid, name",
                (run_id,),
            )
        ]
        return run

    def snapshot(self, snapshot_hash: str | None) -> dict[str, Any] | None:
        if snapshot_hash is None:
            return None
        row = self.conn.execute("SELECT body FROM snapshots WHERE hash = ?", (snapshot_hash,))
        found = row.fetchone()
        return loads(found[0]) if found else None

    def referenced_paths(self, excluding: Sequence[str] = ()) -> set[str]:
        """Artifact paths that runs other than ``excluding`` still reference."""
        rows = self.conn.execute("SELECT run_id, path FROM artifacts").fetchall()
        skip = set(excluding)
        return {path for run_id, path in rows if run_id not in skip}

    def integrity(self) -> list[str]:
        """SQLite's own integrity and foreign-key checks ([] when the file is sound)."""
        problems = [str(r[0]) for r in self.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [
            f"{r[0]} row {r[1]} references a missing {r[2]} row"
            for r in self.conn.execute("PRAGMA foreign_key_check")
        ]
        return problems


def snapshot_key(snapshot: dict[str, Any]) -> str:
    """The hash a snapshot is stored under: ``environment.snapshot_hash`` of the snapshot
    without its ``git`` section (git facts live on the run row), so that sessions in one
    environment share one stored snapshot whatever the state of the working tree."""
    from repro_check import environment

    return environment.snapshot_hash({k: v for k, v in snapshot.items() if k != "git"})


def _run_row(row: Sequence[Any]) -> RunRow:
    (
        run_id,
        kind,
        status,
        outcome,
        exit_code,
        started_at,
        finished_at,
        host,
        pid,
        process_start,
        cwd,
        argv,
        python,
        base_seed,
        options,
        commit,
        branch,
        dirty,
        diff,
        untracked,
        snapshot_hash,
        report_dir,
        archive,
        verifies,
        summary,
    ) = row
    state = status
    if status == RUNNING and lineage.alive(host, pid, process_start) is False:
        state = INTERRUPTED
    return RunRow(
        id=run_id,
        kind=kind,
        status=status,
        state=state,
        outcome=outcome,
        exit_code=exit_code,
        started_at=started_at,
        finished_at=finished_at,
        host=host,
        pid=pid,
        cwd=cwd,
        argv=loads(argv, []),
        python=python,
        base_seed=base_seed,
        options=loads(options, {}),
        git={
            "commit": commit,
            "branch": branch,
            "dirty": None if dirty is None else bool(dirty),
            "diff": diff,
            "untracked": untracked,
        },
        snapshot_hash=snapshot_hash,
        report_dir=report_dir,
        archive=archive,
        verifies=verifies,
        summary=loads(summary, {}),
    )


def open_catalog(path: str | os.PathLike[str]) -> Catalog:
    return Catalog(path)


def python_executable() -> str:
    return sys.executable
