"""``repro-check sensitivity``: run a seed-sensitivity sweep, or compare two configurations.

repro-check sensitivity run suites/test_seed_sensitivity.py --seeds 8 --sources init,data
repro-check sensitivity compare reports/sensitivity/runs.csv TEST_A TEST_B --metric eval_accuracy
repro-check sensitivity compare before/sensitivity after/sensitivity   # two revisions
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("sensitivity", help="seed-sensitivity sweeps and comparisons")
    sub = parser.add_subparsers(dest="sensitivity_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="sweep marked tests (same as pytest --repro-sensitivity)")
    run.add_argument("tests", nargs="+", help="test files or ids, as for pytest")
    run.add_argument("--seeds", type=int, default=8, help="runs per source (default 8)")
    run.add_argument(
        "--sources",
        default=None,
        help="comma-separated sources (default "
        "init,data,global); 'all' is always added; also bitflip",
    )
    run.add_argument("--seed", default=None, help="base seed (default: the ini's, else 0)")
    run.add_argument("--jobs", type=int, default=None, help="runs at once")
    run.add_argument("--report", default=None, help="report folder (default reports/)")
    run.add_argument("--executor", choices=("local", "dask"), default="local")
    run.set_defaults(func=run_sweep)
    compare = sub.add_parser(
        "compare",
        help="A vs B: two tests of one sweep (RUNS TEST_A TEST_B), or two sweeps of the same "
        "tests (RUNS_A RUNS_B, paired by test, source and run k): P(A > B), mean difference, "
        "effect size, paired and unpaired, and a decision only with enough runs",
    )
    compare.add_argument(
        "inputs",
        nargs="+",
        metavar="RUNS",
        help="RUNS TEST_A TEST_B, or RUNS_A RUNS_B; RUNS is a sweep's runs.csv, runs.jsonl or "
        "report folder",
    )
    compare.add_argument("--metric", default=None, help="metric name (default: every one)")
    compare.add_argument("--source", default=None, help="source (default: all; revisions: every)")
    compare.add_argument("--test", action="append", default=None, help="revisions: only this test")
    compare.add_argument("--lower-is-better", action="store_true")
    compare.set_defaults(func=run_compare)


def pytest_command(args: argparse.Namespace) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "pytest",
        *args.tests,
        "--repro-sensitivity",
        f"--repro-seeds={args.seeds}",
    ]
    for flag, value in (
        ("--repro-sources", args.sources),
        ("--repro-seed", args.seed),
        ("--repro-jobs", args.jobs),
        ("--repro-report", args.report),
    ):
        if value is not None:
            command.append(f"{flag}={value}")
    if args.executor != "local":
        command.append(f"--repro-executor={args.executor}")
    return command


def run_sweep(args: argparse.Namespace) -> int:
    return subprocess.call(pytest_command(args))


def _read_runs(path_text: str) -> Any:
    """A sweep's runs table from runs.csv, runs.jsonl or the report folder holding them."""
    import pandas as pd

    from repro_check.orchestration.sweep import STORE_NAME, runs_frame

    path = Path(path_text)
    if path.is_dir():
        for name in ("runs.csv", STORE_NAME, f"sensitivity/{STORE_NAME}"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ValueError(f"{path_text} holds no runs.csv or {STORE_NAME}")
    if path.suffix == ".jsonl":
        rows: dict[tuple[str, str], dict[str, Any]] = {}  # the last row of a run wins
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                    rows[(row["test"], row["run_id"])] = row
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}, line {number}: not a sweep run ({exc})") from None
        return runs_frame(list(rows.values()))
    return pd.read_csv(path)


def _print(result: Any, confidence: str, revisions: tuple[str, str] | None) -> None:
    what = (
        f"{result.test_a}: A = {revisions[0]}, B = {revisions[1]}"
        if revisions
        else f"{result.test_a} vs {result.test_b}"
    )
    print(f"{what} -- {result.metric}, source {result.source}")
    if result.note:
        print(f"  not paired: {result.note}")
    for side in (result.comparison.paired, result.comparison.unpaired):
        if side is None:
            continue
        imp, diff = side.improvement, side.mean_difference
        print(
            f"  {'paired  ' if side.paired else 'unpaired'} n={imp.n_a}/{imp.n_b}: mean A - B = "
            f"{diff.point:.4g} [{diff.low:.4g}, {diff.high:.4g}] ({confidence} {diff.method}); "
            f"P(A>B) = {imp.p:.3f} [{imp.ci_low:.3f}, {imp.ci_high:.3f}] ({imp.method}); "
            f"{side.effect_size_name} = {side.effect_size:.3g}"
        )
        decision = f"none -- {imp.reason}" if imp.decision == "too few runs" else imp.decision
        print(f"    decision: {decision}")


def run_compare(args: argparse.Namespace) -> int:
    from repro_check.reporting.sensitivity import compare, compare_revisions

    if len(args.inputs) not in (2, 3):
        print(
            "repro-check: error: compare takes RUNS TEST_A TEST_B or RUNS_A RUNS_B "
            f"(got {len(args.inputs)} arguments)",
            file=sys.stderr,
        )
        return 2
    try:
        paths = args.inputs[:1] if len(args.inputs) == 3 else args.inputs
        tables = [_read_runs(path) for path in paths]
    except (OSError, ValueError) as exc:
        print(f"repro-check: error: cannot read the runs: {exc}", file=sys.stderr)
        return 2
    try:
        if len(args.inputs) == 3:
            results = [_compare_tests(compare, tables[0], args)]
        else:
            results = compare_revisions(
                tables[0],
                tables[1],
                tests=args.test,
                metrics=[args.metric] if args.metric else None,
                sources=[args.source] if args.source else None,
                higher_is_better={args.metric: False}
                if args.metric and args.lower_is_better
                else None,
            )
    except (KeyError, ValueError) as exc:
        print(f"repro-check: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    revisions = (args.inputs[0], args.inputs[1]) if len(args.inputs) == 2 else None
    for result in results:
        _print(result, "95%", revisions)
    from repro_check.core.stats import decision_rule

    print(f"rule: {decision_rule()}")
    return 0


def _compare_tests(compare: Any, runs: Any, args: argparse.Namespace) -> Any:
    _, test_a, test_b = args.inputs
    tests = set(runs.get("test", []))
    for test in (test_a, test_b):
        if test not in tests:
            raise KeyError(
                f"{test!r} is not in {args.inputs[0]}; tests there: {', '.join(sorted(tests))}"
            )
    if not args.metric:
        raise ValueError("comparing two tests needs --metric")
    return compare(
        runs,
        test_a,
        test_b,
        args.metric,
        source=args.source or "all",
        higher_is_better=not args.lower_is_better,
    )
