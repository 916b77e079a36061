"""``repro-check sensitivity``: run a seed-sensitivity sweep, or compare two configurations.

repro-check sensitivity run suites/test_seed_sensitivity.py --seeds 8 --sources init,data
repro-check sensitivity compare reports/sensitivity/runs.csv TEST_A TEST_B --metric eval_accuracy
"""

from __future__ import annotations

import argparse
import subprocess
import sys
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
        help="P(A > B) over paired seeds with its bootstrap CI and Bouthillier et "
        "al.'s decision rule, from a sweep's runs.csv",
    )
    compare.add_argument("runs_csv")
    compare.add_argument("test_a")
    compare.add_argument("test_b")
    compare.add_argument("--metric", required=True, help="metric name (loss or metric.loss)")
    compare.add_argument("--source", default="all")
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


def run_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from repro_check.reporting.sensitivity import compare

    try:
        runs = pd.read_csv(args.runs_csv)
    except (OSError, ValueError) as exc:
        print(f"repro-check: error: cannot read {args.runs_csv}: {exc}", file=sys.stderr)
        return 2
    tests = set(runs.get("test", []))
    for test in (args.test_a, args.test_b):
        if test not in tests:
            print(
                f"repro-check: error: {test!r} is not in {args.runs_csv}; tests there: "
                f"{', '.join(sorted(tests))}",
                file=sys.stderr,
            )
            return 2
    result = compare(
        runs,
        args.test_a,
        args.test_b,
        args.metric,
        source=args.source,
        higher_is_better=not args.lower_is_better,
    )
    print(
        f"P({args.test_a} better than {args.test_b} on {args.metric}) = {result.p:.3f} "
        f"[{result.ci_low:.3f}, {result.ci_high:.3f}] ({result.confidence:.0%} bootstrap CI, "
        f"{'paired' if result.paired else 'unpaired'}, n={result.n_a}/{result.n_b})"
    )
    print(f"decision: {result.decision}")
    print(f"rule: {result.rule}")
    return 0
