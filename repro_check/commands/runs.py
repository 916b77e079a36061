"""``repro-check runs``: the run catalog -- what ran, on which code, with what result.

    repro-check runs list                      newest first; interrupted sessions say so
    repro-check runs show ID                   lineage, options, tests, artifacts, data versions
    repro-check runs diff A B                  two runs side by side (exit 1 if results differ)
    repro-check runs verify ID                 re-run ID's command; exit 0 if it reproduces
    repro-check runs gc --keep N               keep the N newest runs (and what they reference)
    repro-check runs check [ID ...]            artifacts missing or changed since recorded

ID is a full run id, a unique prefix of one, ``latest`` or ``latest~N``. The catalog is
``reports/catalog.sqlite`` (pytest's default report folder) unless ``--catalog PATH`` or
``$REPRO_CHECK_CATALOG`` says otherwise. Exit codes: 0 agree / done, 1 differ / not reproduced /
problems found, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tabulate import tabulate

from repro_check.catalog import Catalog, CatalogError, RunRow
from repro_check.catalog.lineage import new_run_id

CATALOG_ENV = "REPRO_CHECK_CATALOG"
#: Set by ``runs verify`` for the session it starts: that session's run id, and the run it re-runs.
RUN_ID_ENV = "REPRO_CHECK_RUN_ID"
VERIFIES_ENV = "REPRO_CHECK_VERIFIES"
DEFAULT_CATALOG = Path("reports") / "catalog.sqlite"
#: Options dropped from a command re-run by ``verify``: it must not rewrite baselines.
NOT_REPEATED = ("--repro-update",)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="the run catalog: list, show, diff, verify, gc, check",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--catalog",
        default=None,
        metavar="PATH",
        help=f"the catalog file (default ${CATALOG_ENV}, else {DEFAULT_CATALOG})",
    )
    sub = parser.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="runs, newest first")
    listing.add_argument("--limit", type=int, default=20, help="runs shown (default 20; 0: all)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)
    show = sub.add_parser("show", help="one run: lineage, options, tests, artifacts, data")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=run_show)
    diff = sub.add_parser("diff", help="two runs side by side; exit 1 when their results differ")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.set_defaults(func=run_diff)
    verify = sub.add_parser(
        "verify",
        help="re-run a run's command in its working folder and check it reproduces (same "
        "verdicts, same recorded digests)",
    )
    verify.add_argument("id")
    verify.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    verify.add_argument(
        "--recorded-python",
        action="store_true",
        help="re-run with the interpreter the run recorded (default: this one; a catalog from "
        "elsewhere could name any program)",
    )
    verify.set_defaults(func=run_verify)
    gc = sub.add_parser("gc", help="keep the N newest runs; delete the rest and what only they use")
    gc.add_argument("--keep", type=int, required=True, metavar="N")
    gc.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    gc.set_defaults(func=run_gc)
    check = sub.add_parser("check", help="artifacts that are missing or changed since recorded")
    check.add_argument("ids", nargs="*", metavar="ID")
    check.set_defaults(func=run_check)


def _error(message: str) -> int:
    print(f"repro-check: error: {message}", file=sys.stderr)
    return 2


def catalog_path(args: argparse.Namespace) -> Path:
    return Path(args.catalog or os.environ.get(CATALOG_ENV) or DEFAULT_CATALOG)


def _open(args: argparse.Namespace) -> Catalog:
    path = catalog_path(args)
    if not path.is_file():
        raise CatalogError(
            f"{path}: no catalog here; pytest --repro writes one into its report folder "
            f"(REPORT_DIR/catalog.sqlite), or pass --catalog PATH"
        )
    return Catalog(path)


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except CatalogError as exc:
            return _error(str(exc))

    return run


def _commit(run: RunRow) -> str:
    commit = run.git.get("commit")
    if not commit:
        return "-"
    return commit[:10] + ("+dirty" if run.git.get("dirty") else "")


def _tests(run: RunRow) -> str:
    summary = run.summary or {}
    if "tests" not in summary:
        return "-"
    failed = summary.get("failed", 0)
    return f"{summary['tests']}" + (f" ({failed} failed)" if failed else "")


def _list(args: argparse.Namespace) -> int:
    with _open(args) as catalog:
        runs = catalog.runs(args.limit or None)
    if args.json:
        print(json.dumps([r.to_json() for r in runs], indent=2, default=str))
        return 0
    if not runs:
        print(f"{catalog_path(args)}: no runs yet")
        return 0
    rows = [
        [
            r.id,
            r.kind,
            r.state,
            r.outcome or "-",
            r.started_at.replace("T", " ")[:19],
            _commit(r),
            _tests(r),
            r.base_seed if r.base_seed is not None else "-",
            " ".join(r.argv)[:50],
        ]
        for r in runs
    ]
    headers = ["id", "kind", "state", "outcome", "started (UTC)", "commit", "tests", "seed", "args"]
    print(tabulate(rows, headers=headers))
    return 0


def _show(args: argparse.Namespace) -> int:
    with _open(args) as catalog:
        run = catalog.get(args.id)
    if args.json:
        print(json.dumps(run.to_json(), indent=2, default=str))
        return 0
    print(f"run {run.id}  ({run.kind}, {run.state}, outcome {run.outcome or '-'})")
    print(f"  started {run.started_at}, finished {run.finished_at or '-'} on {run.host}")
    runner = "repro-check" if run.kind == "compare" else f"{run.python} -m pytest"
    print(f"  command: {runner} {' '.join(run.argv)}")
    print(f"  in: {run.cwd}")
    git = run.git
    print(
        f"  code: commit {git.get('commit') or '-'} (branch {git.get('branch') or '-'}), "
        f"uncommitted changes: {git.get('dirty')}, diff sha256 {git.get('diff') or '-'}, "
        f"untracked sha256 {git.get('untracked') or '-'}"
    )
    print(f"  base seed: {run.base_seed}; environment snapshot: {run.snapshot_hash or '-'}")
    if run.verifies:
        print(f"  re-runs (verifies): {run.verifies}")
    if run.archive:
        print(f"  archive: {run.archive}")
    if run.options:
        print("  options: " + ", ".join(f"{k}={v}" for k, v in sorted(run.options.items())))
    if run.tests:
        rows = [
            [t.nodeid, t.status, t.seed, t.steps, (t.record_digest or "-")[:16], t.first_divergence]
            for t in run.tests
        ]
        print(tabulate(rows, headers=["test", "status", "seed", "steps", "digest", "detail"]))
    for d in run.data_versions:
        print(f"  data {d.nodeid} {d.name}: {d.kind} {d.digest}")
    for a in run.artifacts:
        print(f"  artifact {a.kind}: {a.path} (sha256 {a.sha256[:12]}, {a.bytes} bytes)")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from repro_check.catalog.diff import diff_runs
    from repro_check.catalog.session import read_digests

    with _open(args) as catalog:
        a, b = catalog.get(args.a), catalog.get(args.b)
        snapshots = (catalog.snapshot(a.snapshot_hash), catalog.snapshot(b.snapshot_hash))
    result = diff_runs(a, b, snapshots, (read_digests(a.archive), read_digests(b.archive)))
    print("\n".join(result.lines()))
    return 0 if result.same_results else 1


def verify_command(
    run: RunRow, catalog: Path, report_dir: Path, python: str = sys.executable
) -> list[str]:
    """The recorded command, pinned to the recorded base seed, writing its report to a
    temporary folder and its run into the same catalog; ``--repro-update`` dropped."""
    if run.kind == "compare":
        return [python, "-m", "repro_check.cli", *run.argv, f"--catalog={catalog.resolve()}"]
    argv = [a for a in run.argv if a not in NOT_REPEATED]
    pins = [f"--repro-report={report_dir}", f"--repro-catalog={catalog.resolve()}"]
    if run.base_seed is not None:
        pins.insert(0, f"--repro-seed={run.base_seed}")
    return [python, "-m", "pytest", *argv, *pins]


def _verify(args: argparse.Namespace) -> int:
    from repro_check.catalog.diff import diff_runs
    from repro_check.catalog.session import read_digests

    path = catalog_path(args)
    with _open(args) as catalog:
        run = catalog.get(args.id)
    if run.state == "running":
        return _error(f"run {run.id} is still running; verify it once it has finished")
    if not run.argv:
        return _error(f"run {run.id} ({run.kind}) has no command to re-run")
    if not Path(run.cwd).is_dir():
        return _error(f"run {run.id} ran in {run.cwd}, which no longer exists")
    python = sys.executable
    if args.recorded_python:
        if not Path(run.python).is_file():
            return _error(f"the recorded interpreter {run.python} no longer exists")
        python = run.python
    elif Path(run.python).resolve() != Path(sys.executable).resolve():
        print(f"note: recorded with {run.python}; re-running with {python} (--recorded-python)")
    new_id = new_run_id()
    with tempfile.TemporaryDirectory(prefix="repro-verify-") as tmp:
        command = verify_command(run, path, Path(tmp), python)
        print(f"re-running {run.id} in {run.cwd}:\n  {' '.join(command)}")
        env = {**os.environ, RUN_ID_ENV: new_id, VERIFIES_ENV: run.id}
        try:
            done = subprocess.run(
                command,
                cwd=run.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return _error(f"the re-run did not finish within {args.timeout:.0f} s (--timeout)")
    with _open(args) as catalog:
        try:
            new = catalog.get(new_id)
        except CatalogError:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            return _error(f"the re-run (exit {done.returncode}) recorded no run:\n{tail}")
    result = diff_runs(run, new, tables=(read_digests(run.archive), read_digests(new.archive)))
    print(f"re-run: {new.id} (exit {done.returncode}, {new.state})")
    if new.state != "finished":
        print(f"not reproduced: the re-run did not finish ({new.state})")
        return 1
    if result.same_results:
        print(f"reproduced: {len(new.tests)} tests, same verdicts and same recorded digests")
        return 0
    print("not reproduced:")
    for nodeid, a, b, detail in result.tests:
        print(f"  {nodeid}: {a} -> {b}" + (f"; {detail}" if detail else ""))
    for name, a, b in result.lineage + result.data:
        print(f"  since then: {name}: {a} -> {b}")
    return 1


def _gc(args: argparse.Namespace) -> int:
    from repro_check.catalog.maintenance import apply_gc, plan_gc

    if args.keep < 0:
        return _error(f"--keep {args.keep}: keep at least 0 runs")
    with _open(args) as catalog:
        plan = plan_gc(catalog, args.keep)
        verb = "would delete" if args.dry_run else "deleted"
        if not args.dry_run:
            apply_gc(catalog, plan)
    print(
        f"{verb} {len(plan.delete)} runs, {len(plan.files)} files and {len(plan.folders)} "
        f"archive folders; kept {len(plan.keep)} runs"
    )
    for run_id in plan.delete:
        print(f"  run {run_id}")
    for path in plan.files:
        print(f"  file {path}")
    for error in plan.errors:
        print(f"  could not remove {error}", file=sys.stderr)
    return 1 if plan.errors else 0


def _check(args: argparse.Namespace) -> int:
    from repro_check.catalog.maintenance import check_artifacts

    with _open(args) as catalog:
        problems = check_artifacts(catalog, args.ids)
        integrity = catalog.integrity()
        count = len(args.ids) or len(catalog.runs())
    for line in integrity:
        print(f"catalog: {line}")
    for p in problems:
        print(f"{p.run_id} {p.kind} {p.problem}: {p.path}" + (f" ({p.detail})" if p.detail else ""))
    if not problems and not integrity:
        print(f"{count} runs checked: every artifact present and unchanged")
        return 0
    return 1


run_list = _guarded(_list)
run_show = _guarded(_show)
run_diff = _guarded(_diff)
run_verify = _guarded(_verify)
run_gc = _guarded(_gc)
run_check = _guarded(_check)


def record_compare(args: argparse.Namespace, results: dict[str, bool], exit_code: int) -> None:
    """Record a ``repro-check compare A B`` as a run of kind ``compare`` (its tests: ``agree``
    or ``differ``) in ``--catalog``, ``$REPRO_CHECK_CATALOG`` or A's report folder's catalog;
    nowhere when none is given and A has none. Never changes the comparison's outcome."""
    from repro_check.catalog import RunEnd, RunStart, TestEntry

    explicit = getattr(args, "catalog", None) or os.environ.get(CATALOG_ENV)
    found = Path(args.a) / "catalog.sqlite"
    path = Path(explicit) if explicit else found if found.is_file() else None
    if path is None:
        return
    argv = ["compare", str(args.a), str(args.b), *(f"--test={t}" for t in args.test)]
    argv += [f"--{n}={v}" for n in ("atol", "rtol") if (v := getattr(args, n)) is not None]
    tests = [TestEntry(n, "agree" if ok else "differ") for n, ok in sorted(results.items())]
    failed = sum(not ok for ok in results.values())
    try:
        with Catalog(path) as catalog:
            run_id = catalog.start_run(
                RunStart(
                    "compare",
                    argv,
                    os.getcwd(),
                    sys.executable,
                    options={"a": str(Path(args.a).resolve()), "b": str(Path(args.b).resolve())},
                    verifies=os.environ.get(VERIFIES_ENV) or None,
                ),
                os.environ.get(RUN_ID_ENV) or None,
            )
            catalog.finish_run(
                run_id,
                RunEnd(
                    outcome="passed" if exit_code == 0 else "failed",
                    exit_code=exit_code,
                    tests=tests,
                    summary={"tests": len(tests), "failed": failed},
                ),
            )
        print(f"run {run_id} recorded in {path}", file=sys.stderr)
    except (CatalogError, OSError) as exc:
        print(f"repro-check: the comparison was not recorded in {path}: {exc}", file=sys.stderr)
