"""The run catalog: schema and migrations, run ids, lineage hashing, diff, gc and check on a
temporary SQLite file; then real processes -- concurrent writers, a session killed with
SIGKILL, two concurrent sessions on different commits (one under pytest-xdist), ``runs diff``
and ``runs verify`` -- in a throwaway git repository."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from pytest_runs import clean_env

from repro_check.catalog import (
    Artifact,
    Catalog,
    CatalogError,
    DataVersion,
    RunEnd,
    RunStart,
    TestEntry,
)
from repro_check.catalog.diff import diff_runs
from repro_check.catalog.lineage import (
    first_difference,
    git_lineage,
    new_run_id,
    record_digests,
    sha256_file,
)
from repro_check.catalog.maintenance import apply_gc, check_artifacts, plan_gc
from repro_check.catalog.schema import SCHEMA_VERSION
from repro_check.catalog.session import outcome_of, session_entries, sweep_entries
from repro_check.core.datahash import data_version, hash_directory
from repro_check.core.record import Recorder

START = RunStart("session", ["--repro", "test_x.py"], "/somewhere", sys.executable, base_seed=0)


def catalog_at(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "catalog.sqlite")


def finished_run(catalog: Catalog, tests=(), artifacts=(), snapshot=None, **start) -> str:
    run_id = catalog.start_run(RunStart(**{**START.__dict__, **start}))
    catalog.finish_run(
        run_id,
        RunEnd(
            outcome="passed",
            snapshot=snapshot,
            git={"commit": "abc", "dirty": False},
            tests=list(tests),
            artifacts=list(artifacts),
            summary={"tests": len(tests)},
        ),
    )
    return run_id


# ----------------------------------------------------------------------------- ids


def test_run_ids_are_uuid7_time_ordered_and_not_from_seeded_rngs():
    first = new_run_id()
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert new_run_id(now_ns=2 * 10**18) > new_run_id(now_ns=10**18)
    ids = []
    for _ in range(2):  # the same seeds everywhere cannot give the same id twice
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        ids.append(new_run_id())
    assert ids[0] != ids[1]
    fixed = new_run_id(now_ns=1_700_000_000_000_000_000, entropy=bytes(10))
    assert fixed.startswith("018bcfe5-6800-7000-8000-")


# ----------------------------------------------------------------------------- schema


def test_a_new_catalog_is_wal_with_a_migrations_table(tmp_path):
    with catalog_at(tmp_path) as catalog:
        assert catalog.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = catalog.conn.execute("SELECT version, description FROM migrations").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    with catalog_at(tmp_path) as again:  # reopening applies nothing twice
        count = again.conn.execute("SELECT COUNT(*) FROM migrations").fetchone()[0]
    assert count == SCHEMA_VERSION


def test_a_newer_catalog_is_refused_untouched(tmp_path):
    catalog_at(tmp_path).close()
    with sqlite3.connect(tmp_path / "catalog.sqlite") as conn:
        conn.execute("INSERT INTO migrations VALUES (99, 'from the future', 'now')")
    with pytest.raises(CatalogError, match="schema version 99 is newer .* upgrade repro-check"):
        catalog_at(tmp_path)


def test_a_file_that_is_not_a_catalog_is_a_clear_error(tmp_path):
    (tmp_path / "catalog.sqlite").write_text("not a database " * 100)
    with pytest.raises(CatalogError, match="not a usable repro-check catalog"):
        catalog_at(tmp_path)


# ----------------------------------------------------------------------------- runs


def test_a_run_is_running_until_one_transaction_finishes_it(tmp_path):
    snapshot = {"schema": "repro-check/environment", "python": {"version": "3.11"}}
    with catalog_at(tmp_path) as catalog:
        run_id = catalog.start_run(START)
        run = catalog.get(run_id)
        assert (run.status, run.state, run.tests, run.artifacts) == ("running", "running", [], [])
        catalog.finish_run(
            run_id,
            RunEnd(
                outcome="failed",
                snapshot=snapshot,
                git={"commit": "c0ffee", "branch": "main", "dirty": True, "diff": "d1"},
                tests=[TestEntry("t.py::a", "identical", 7, 3, 2, "r1")],
                artifacts=[Artifact("report", "/x/report.json", "s" * 64, 10)],
                data_versions=[DataVersion("t.py::a", "train", "file", "sha256:aa", {"bytes": 3})],
            ),
        )
        run = catalog.get(run_id[:20])
        with pytest.raises(CatalogError, match="already finished"):
            catalog.finish_run(run_id, RunEnd())
        second = finished_run(catalog, snapshot=dict(snapshot, captured_at="later"))
        stored = catalog.conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
        assert catalog.get(second).snapshot_hash == run.snapshot_hash  # stored once
    assert stored == 1
    assert (run.status, run.outcome, run.git["commit"], run.git["dirty"]) == (
        "finished",
        "failed",
        "c0ffee",
        True,
    )
    assert run.tests[0].record_digest == "r1" and run.data_versions[0].detail == {"bytes": 3}


def test_a_running_row_whose_process_is_gone_is_listed_as_interrupted(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with catalog_at(tmp_path) as catalog:
        run_id = catalog.start_run(START)
        catalog.conn.execute("UPDATE runs SET pid = ?, process_start = NULL", (dead.pid,))
        (run,) = catalog.runs()
    assert run.id == run_id and (run.status, run.state) == ("running", "interrupted")


def test_runs_are_found_by_prefix_latest_and_latest_n(tmp_path):
    with catalog_at(tmp_path) as catalog:
        old = finished_run(catalog)
        new = finished_run(catalog)
        assert catalog.resolve("latest") == new and catalog.resolve("latest~1") == old
        assert catalog.resolve(new[:30]) == new
        with pytest.raises(CatalogError, match="several runs"):
            catalog.resolve(new[:4])
        with pytest.raises(CatalogError, match="no run 'zzz'"):
            catalog.resolve("zzz")
        with pytest.raises(CatalogError, match="fewer runs"):
            catalog.resolve("latest~5")


# ----------------------------------------------------------------------------- lineage


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_git_lineage_hashes_the_diff_and_the_untracked_files_that_matter(tmp_path):
    from repro_check.environment.probes.git_state import git_info

    _git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "commit", "-q", "-m", "one")

    def lineage():
        snapshot = {"git": git_info(str(tmp_path))}
        return git_lineage(snapshot, exclude=[tmp_path / "reports"])

    clean = lineage()
    assert clean["commit"] == _git(tmp_path, "rev-parse", "HEAD") and clean["dirty"] is False
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "catalog.sqlite").write_text("changes every session")
    assert lineage() == clean  # the report folder does not matter
    (tmp_path / "train.py").write_text("lr = 0.2\n")
    edited = lineage()
    assert edited["dirty"] and edited["diff"] != clean["diff"]
    (tmp_path / "helper.py").write_text("x = 1\n")
    untracked = lineage()
    assert untracked["untracked"] and untracked["untracked"] != edited["untracked"]
    (tmp_path / "helper.py").write_text("x = 2\n")
    assert lineage()["untracked"] != untracked["untracked"]


def test_a_folder_is_versioned_like_dvc(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("1,2\n")
    (data / "sub" / "b.csv").write_text("3,4\n")
    first = hash_directory(data)
    assert (first["files"], first["bytes"]) == (2, 8)
    os.utime(data / "a.csv", (1, 1))
    assert hash_directory(data)["digest"] == first["digest"]  # content, not timestamps
    (data / "sub" / "b.csv").rename(data / "sub" / "c.csv")
    renamed = hash_directory(data)["digest"]
    assert renamed != first["digest"]
    (data / "sub" / "c.csv").write_text("3,5\n")
    assert hash_directory(data)["digest"] not in (first["digest"], renamed)
    assert data_version(str(data))["kind"] == "directory"
    assert data_version(data / "a.csv")["kind"] == "file"


def test_a_tensor_version_depends_on_dtype_shape_and_bytes():
    x = torch.arange(6, dtype=torch.float32)
    versions = {
        data_version(x)["digest"],
        data_version(x.reshape(2, 3))["digest"],
        data_version(x.to(torch.float64))["digest"],
        data_version(x + 1)["digest"],
    }
    assert len(versions) == 4
    assert data_version(x.numpy())["digest"] == data_version(x)["digest"]
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        data_version("/no/such/data")
    with pytest.raises(TypeError, match="cannot version"):
        data_version(object())


def _record(values):
    recorder = Recorder()
    for step, value in enumerate(values):
        recorder.record(step, {"w": torch.tensor([value, 1.0]), "loss": float(value)})
    return recorder.close()


def test_record_digests_find_the_first_differing_step_and_key():
    a, b = record_digests(_record([1.0, 2.0, 3.0])), record_digests(_record([1.0, 2.0, 4.0]))
    assert a["record_digest"] != b["record_digest"]
    assert a["step_digests"][:2] == b["step_digests"][:2]
    assert first_difference(a["key_table"], b["key_table"]) == "step 2: w"
    assert first_difference(a["key_table"], a["key_table"]) == ""
    assert (
        record_digests(_record([1.0]))["record_digest"]
        == record_digests(_record([1.0]))["record_digest"]
    )


def test_verdicts_and_sweep_rows_become_tests_and_data_versions():
    tests, data = session_entries(
        [
            {
                "nodeid": "t::a",
                "status": "diverged",
                "seed": 1,
                "steps": 3,
                "keys": 2,
                "record_digest": "d",
                "divergence": {"step": 2, "key": "w"},
                "data_versions": {"train": {"kind": "tensor", "digest": "sha256:x", "bytes": 4}},
            },
            {"nodeid": "t::b", "status": "identical"},
        ]
    )
    assert tests[0].first_divergence == "step 2: w" and data[0].detail == {"bytes": 4}
    assert outcome_of([t.status for t in tests], False) == "failed"
    assert outcome_of(["identical"], True) == "interrupted"
    rows = [
        {"test": "t::s", "run_id": f"all:{k}", "status": "ok", "metrics": {"loss": k}}
        for k in range(3)
    ]
    (swept,), _ = sweep_entries(rows)
    (again,), _ = sweep_entries(list(reversed(rows)))
    assert swept.status == "swept" and swept.record_digest == again.record_digest


# ----------------------------------------------------------------------------- diff


def test_diff_explains_two_runs(tmp_path):
    with catalog_at(tmp_path) as catalog:
        a = catalog.get(
            finished_run(catalog, tests=[TestEntry("t::a", "identical", record_digest="x")])
        )
        b_id = catalog.start_run(RunStart(**{**START.__dict__, "options": {"runs": 3}}))
        catalog.finish_run(
            b_id,
            RunEnd(
                git={"commit": "def", "dirty": True},
                tests=[
                    TestEntry("t::a", "diverged", record_digest="y"),
                    TestEntry("t::b", "identical"),
                ],
            ),
        )
        b = catalog.get(b_id)
    tables = (
        {"t::a": {"keys": ["w"], "steps": [[0, ["1"]]]}},
        {"t::a": {"keys": ["w"], "steps": [[0, ["2"]]]}},
    )
    result = diff_runs(a, b, tables=tables)
    assert ("git commit", "abc", "def") in result.lineage
    assert ("runs", "(absent)", "3") in result.options
    assert ("t::a", "identical", "diverged", "records differ first at step 0: w") in result.tests
    assert ("t::b", "(absent)", "identical", "") in result.tests
    assert not result.same_results and "tests (2 differ):" in "\n".join(result.lines())


# ----------------------------------------------------------------------------- gc, check


def test_gc_keeps_the_newest_and_what_they_reference(tmp_path):
    shared, own = tmp_path / "shared.bin", tmp_path / "own.bin"
    shared.write_text("s"), own.write_text("o")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_text("x")
    art = lambda p: Artifact("checkpoint", str(p), sha256_file(p)[0], 1)  # noqa: E731
    with catalog_at(tmp_path) as catalog:
        oldest = finished_run(
            catalog, artifacts=[art(shared), art(own), art(outside)], snapshot={"python": 1}
        )
        verified = finished_run(catalog)
        newest = finished_run(catalog, artifacts=[art(shared)], verifies=verified)
        plan = plan_gc(catalog, keep=1)
        assert plan.keep == [newest, verified] and plan.delete == [oldest]
        assert plan.files == [own]  # shared is still used; outside is not ours to delete
        apply_gc(catalog, plan)
        assert [r.id for r in catalog.runs()] == [newest, verified]
        assert catalog.conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 0
        assert (
            catalog.conn.execute(
                "SELECT COUNT(*) FROM artifacts WHERE run_id = ?", (oldest,)
            ).fetchone()[0]
            == 0
        )
    assert shared.exists() and outside.exists() and not own.exists()


def test_check_reports_missing_and_changed_artifacts(tmp_path):
    kept, changed, gone = (tmp_path / n for n in ("kept", "changed", "gone"))
    for path in (kept, changed, gone):
        path.write_text("v1")
    arts = [Artifact("report", str(p), sha256_file(p)[0], 2) for p in (kept, changed, gone)]
    with catalog_at(tmp_path) as catalog:
        run_id = finished_run(catalog, artifacts=arts)
        assert check_artifacts(catalog) == [] and catalog.integrity() == []
        changed.write_text("v2!")
        gone.unlink()
        problems = {(p.path, p.problem) for p in check_artifacts(catalog, [run_id[:30]])}
    assert problems == {(str(changed), "changed"), (str(gone), "missing")}


# ----------------------------------------------------------------------------- processes


WRITER = """
import sys
from repro_check.catalog import Catalog, RunEnd, RunStart, TestEntry
start = RunStart("session", ["--repro"], "/somewhere", sys.executable)
with Catalog(sys.argv[1]) as catalog:
    for i in range(int(sys.argv[2])):
        run_id = catalog.start_run(start)
        catalog.finish_run(run_id, RunEnd(tests=[TestEntry(f"t::{i}", "identical")]))
"""


def test_concurrent_writers_in_separate_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "catalog.sqlite")
    Catalog(path).close()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, path, "15"], env=clean_env())
        for _ in range(3)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    with Catalog(path) as catalog:
        runs = catalog.runs()
        tests = catalog.conn.execute("SELECT COUNT(*) FROM tests").fetchone()[0]
        assert catalog.integrity() == []
    assert len(runs) == 45 and tests == 45 and {r.state for r in runs} == {"finished"}


TINY_TEST = """
from pathlib import Path

import pytest
import torch

LR = {lr}


@pytest.mark.repro(steps=3)
def test_{name}(repro):
    data = Path(__file__).with_name("data.txt")
    repro.record_data("data", data)
    scale = float(data.read_text())
    with repro.seeded("init"):
        model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    generator = repro.generator("data")
    for step in range(repro.steps):
        loss = model(torch.randn(8, 4, generator=generator) * scale).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, loss=loss)
"""

SLOW_TEST = """
import time

import pytest


@pytest.mark.repro(steps=1)
def test_slow(repro):
    time.sleep(120)
"""


def _project(root: Path) -> Path:
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n")
    (root / "data.txt").write_text("1.0\n")
    (root / "test_tiny.py").write_text(TINY_TEST.format(lr=0.1, name="tiny"))
    (root / "test_other.py").write_text(TINY_TEST.format(lr=0.05, name="other"))
    (root / "slow").mkdir()
    (root / "slow" / "test_slow.py").write_text(SLOW_TEST)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "first")
    return root


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repro_check.cli", "runs", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
        check=False,
    )


#: One replica, in the session's own process: the catalog is the subject, not the replicas.
COMMON = ["-p", "no:cacheprovider", "-p", "no:randomly", "--repro", "--repro-runs=1"]
COMMON += ["--repro-mode=inprocess", "--repro-baseline=off"]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Two concurrent sessions, on two commits, into one catalog; the second under xdist."""
    base = tmp_path_factory.mktemp("catalog-e2e")
    a = _project(base / "a")
    _git(base, "clone", "-q", str(a), str(base / "b"))
    b = base / "b"
    (b / "test_tiny.py").write_text(TINY_TEST.format(lr=0.2, name="tiny"))
    _git(b, "commit", "-q", "-am", "second: a larger learning rate")
    catalog = base / "shared" / "catalog.sqlite"
    commands = {
        "a": [*COMMON, f"--repro-catalog={catalog}", "test_tiny.py", "test_other.py"],
        "b": [*COMMON, f"--repro-catalog={catalog}", "-n", "2", "test_tiny.py", "test_other.py"],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "pytest", *args],
            cwd=base / name,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in commands.items()
    }
    outputs = {name: p.communicate(timeout=480)[0] for name, p in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name]
    listed = json.loads(_cli("--catalog", str(catalog), "list", "--json").stdout)
    runs = {Path(run["cwd"]).name: run for run in listed}
    return {"base": base, "catalog": catalog, "runs": runs, "outputs": outputs}


def test_two_sessions_on_different_commits_are_listed(sessions):
    runs = sessions["runs"]
    assert set(runs) == {"a", "b"}
    assert runs["a"]["git"]["commit"] != runs["b"]["git"]["commit"]
    assert {r["state"] for r in runs.values()} == {"finished"}
    assert runs["b"]["summary"] == {"tests": 2, "failed": 0}  # xdist: the controller wrote
    table = _cli("--catalog", str(sessions["catalog"]), "list").stdout
    assert runs["a"]["id"] in table and runs["b"]["id"] in table
    assert f"run {runs['a']['id']} recorded in" in sessions["outputs"]["a"]


def test_runs_diff_explains_the_difference(sessions):
    runs = sessions["runs"]
    done = _cli("--catalog", str(sessions["catalog"]), "diff", runs["a"]["id"], runs["b"]["id"])
    assert done.returncode == 1, done.stdout + done.stderr
    a, b = runs["a"]["git"]["commit"][:12], runs["b"]["git"]["commit"][:12]
    assert f"git commit: {a} -> {b}" in done.stdout
    assert (
        "test_tiny.py::test_tiny: single-run -> single-run; records differ first at step 0: "
        "model.weight" in done.stdout
    )
    assert "test_other.py::test_other" not in done.stdout  # unchanged by the commit


def test_runs_verify_passes_on_a_reproducible_run_and_fails_after_the_data_changed(sessions):
    catalog, run = str(sessions["catalog"]), sessions["runs"]["a"]
    done = _cli("--catalog", catalog, "verify", run["id"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reproduced: 2 tests, same verdicts and same recorded digests" in done.stdout
    (sessions["base"] / "a" / "data.txt").write_text("2.0\n")  # planted: the data drifted
    done = _cli("--catalog", catalog, "verify", run["id"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "not reproduced:" in done.stdout
    assert (
        "test_tiny.py::test_tiny: single-run -> single-run; records differ first at step 0"
        in done.stdout
    )
    assert "since then: test_tiny.py::test_tiny data:" in done.stdout
    verifies = [
        r
        for r in json.loads(_cli("--catalog", catalog, "list", "--json").stdout)
        if r["verifies"] == run["id"]
    ]
    assert len(verifies) == 2


def test_a_session_killed_mid_run_leaves_only_its_running_row(sessions):
    root, catalog = sessions["base"] / "a", sessions["base"] / "killed" / "catalog.sqlite"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            *COMMON,
            f"--repro-catalog={catalog}",
            "slow/test_slow.py",
        ],
        cwd=root,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while not _running_row(catalog):
            assert time.monotonic() < deadline and process.poll() is None, "no running row"
            time.sleep(0.2)
        time.sleep(1.0)  # well inside the session: replicas are starting
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with Catalog(catalog) as opened:
        (run,) = opened.runs()
        assert (run.status, run.state) == ("running", "interrupted")
        assert opened.get(run.id).tests == [] and opened.integrity() == []
        finished_run(opened)  # the catalog is still writable
    listed = _cli("--catalog", str(catalog), "list").stdout
    assert "interrupted" in listed


def _running_row(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return bool(
                conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0]
            )
    except sqlite3.Error:
        return False


def test_a_comparison_is_recorded_in_the_catalog_of_its_first_report_folder(tmp_path):
    import argparse

    from repro_check.commands.runs import record_compare

    args = argparse.Namespace(
        a=tmp_path, b=tmp_path / "b", test=[], atol=1e-6, rtol=None, catalog=None
    )
    record_compare(args, {"t::a": True}, 0)  # A has no catalog: nothing is written
    assert not (tmp_path / "catalog.sqlite").exists()
    catalog_at(tmp_path).close()
    record_compare(args, {"t::a": True, "t::b": False}, 1)
    with catalog_at(tmp_path) as catalog:
        (run,) = catalog.runs()
        run = catalog.get(run.id)
    assert (run.kind, run.outcome, run.exit_code) == ("compare", "failed", 1)
    assert run.argv == ["compare", str(tmp_path), str(tmp_path / "b"), "--atol=1e-06"]
    assert [(t.nodeid, t.status) for t in run.tests] == [("t::a", "agree"), ("t::b", "differ")]
