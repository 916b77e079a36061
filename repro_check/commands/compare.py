"""``repro-check compare A B``: two runs of the same tests made in different environments.

A and B are report folders of ``pytest --repro`` (their ``records/``), single record files,
baseline files or checkpoints. The output puts the environment differences first (the ones that
can change results at the top), then per test the verdict, the first step and key where the runs
part, and how the difference grows. The verdict is the float64 rule when either side carries a
float64 record (a run with ``--repro-variants=float64``, or any variant), else the stated
tolerances (``--atol``/``--rtol``, or the tests' own).

Exit status: 0 the runs agree (bit for bit, or within the rule), 1 they do not (or a test is
missing on one side), 2 bad input (missing, damaged or unknown files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

EXIT_AGREE, EXIT_DIFFER, EXIT_BAD_INPUT = 0, 1, 2
#: Environment differences shown before "... and N more".
SHOWN_DIFFERENCES = 15

_EPILOG = """\
A and B may each be a report folder (pytest --repro writes REPORT_DIR/records/<test>.json for
every marked test), a record file, a baseline file or a checkpoint (.safetensors or its .json).

exit status: 0 the runs agree (bit for bit, or within the float64 rule / the tolerances),
1 they do not, or a test is on one side only, 2 bad input

examples:
  repro-check compare reports-ci/ reports-laptop/
  repro-check compare reports/records/tests/test_train/test_mlp.json other/records/tests/test_train/test_mlp.json
  repro-check compare a/ b/ --test tests/test_train.py::test_mlp --atol 1e-6 --rtol 1e-4
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare",
        help="compare two runs made in different environments (report folders, records, "
        "baselines or checkpoints)",
        description="Compare two runs of the same tests made on different machines or "
        "settings: environment differences first, then per test the verdict, the first "
        "differing step and key and the drift table.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("a", type=Path, help="the reference run")
    parser.add_argument("b", type=Path, help="the run to compare with it")
    parser.add_argument("--test", action="append", default=[], help="only this test id")
    parser.add_argument(
        "--atol", type=float, default=None, help="tolerance when no float64 record is present"
    )
    parser.add_argument(
        "--rtol", type=float, default=None, help="tolerance when no float64 record is present"
    )
    parser.add_argument(
        "--catalog",
        default=None,
        metavar="PATH",
        help="record the comparison in this run catalog (default $REPRO_CHECK_CATALOG, else A's "
        "report folder's catalog.sqlite when it has one)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from repro_check.core.atomic import StoredFileError
    from repro_check.orchestration.records import iter_pairs, load_runs

    out = out or sys.stdout
    for name, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if value is not None and not value >= 0:
            print(f"repro-check compare: {name}={value}: must be >= 0", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        runs_a, runs_b = load_runs(args.a), load_runs(args.b)
    except StoredFileError as exc:
        print(f"repro-check compare: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    pairs = [p for p in iter_pairs(runs_a, runs_b) if not args.test or p[0] in args.test]
    if not pairs:
        print(
            f"repro-check compare: no test named {', '.join(args.test)} in A or B", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    first_a = next((r for _, r, _ in pairs if r is not None and r.environment), None)
    first_b = next((r for _, _, r in pairs if r is not None and r.environment), None)
    _environment(out, first_a, first_b, args.a, args.b)
    results = {nodeid: _compare_test(out, nodeid, a, b, args) for nodeid, a, b in pairs}
    agree = all(results.values())
    verdict = "agree" if agree else "do not agree"
    print(f"\nA and B {verdict} ({len(pairs)} test(s) compared)", file=out)
    from repro_check.commands.runs import record_compare

    record_compare(args, results, EXIT_AGREE if agree else EXIT_DIFFER)
    return EXIT_AGREE if agree else EXIT_DIFFER


def _environment(out: TextIO, a: Any, b: Any, path_a: Path, path_b: Path) -> None:
    from repro_check import environment

    print(f"A: {path_a}\nB: {path_b}\n", file=out)
    if a is None or b is None:
        missing = "A" if a is None else "B"
        print(f"environment: {missing} records no environment snapshot\n", file=out)
        return
    differences = environment.diff(a.environment, b.environment)
    relevant = [d for d in differences if d.relevant]
    if not differences:
        print("environment: the same in every captured field\n", file=out)
        return
    print(
        f"environment: {len(relevant)} difference(s) that can change results, "
        f"{len(differences) - len(relevant)} informational",
        file=out,
    )
    for d in differences[:SHOWN_DIFFERENCES]:
        print(f"  {'!' if d.relevant else ' '} {d}", file=out)
    if len(differences) > SHOWN_DIFFERENCES:
        print(
            f"    ... and {len(differences) - SHOWN_DIFFERENCES} more (repro-check env diff)",
            file=out,
        )
    print("", file=out)


def _compare_test(out: TextIO, nodeid: str, a: Any, b: Any, args: argparse.Namespace) -> bool:
    from repro_check.orchestration.drift import FAILING_STATUSES, analyze_drift
    from repro_check.orchestration.variant_stage import decide
    from repro_check.reporting.drift import outcome_lines

    if a is None or b is None:
        side = "A" if a is None else "B"
        print(f"{nodeid}: only in {'B' if side == 'A' else 'A'} ({side} did not run it)", file=out)
        return False
    reference, candidate, names = a, b, ("A", "B")
    if a.fp64 is None and b.fp64 is not None:  # judge against the side that has float64
        reference, candidate, names = b, a, ("B", "A")
    tolerances = reference.tolerances or (0.0, 0.0)
    atol = args.atol if args.atol is not None else tolerances[0]
    rtol = args.rtol if args.rtol is not None else tolerances[1]
    tensors = {**a.tensors, **b.tensors}

    def load(entry: Any) -> Any:
        return tensors.get(id(entry))

    notes = []
    if a.seed is not None and b.seed is not None and a.seed != b.seed:
        notes.append(f"note: the seeds differ ({a.seed} vs {b.seed}): the runs are not the same")
    analysis = analyze_drift(
        reference.record, candidate.record, reference.fp64, atol=atol, rtol=rtol, load=load
    )
    decision = decide(analysis)
    judged = (
        f"the float64 rule ({names[0]}'s float64 record)"
        if analysis.judged_by == "float64"
        else f"atol={atol:g}, rtol={rtol:g} (no float64 record)"
    )
    outcome = {
        "name": names[1],
        "label": f"{nodeid}: {names[1]} vs {names[0]}, judged by {judged}",
        "status": decision.status,
        "reason": decision.reason,
        "drift": analysis.to_json(),
        "drift_op": None,
    }
    print("\n".join(outcome_lines(outcome, "")), file=out)
    for note in notes:
        print("    " + note, file=out)
    return decision.status not in FAILING_STATUSES and not notes
