"""``repro-check env``: capture, compare and pin environment snapshots.

    repro-check env                          readable summary of this machine
    repro-check env -o FILE                  write the JSON snapshot
    repro-check env diff A B                 differences, relevant first (exit 1 if any)
    repro-check env check FILE               this machine against a snapshot (exit 1 if different)
    repro-check env requirements [FILE] [-o OUT]   pinned requirements (one pip command)

Exit codes follow diff(1): 0 no differences, 1 differences, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

_EPILOG = """\
exit status: 0 no differences, 1 differences found, 2 bad input (missing, corrupt or newer file)

examples:
  repro-check env -o env.json                     # on the reference machine
  repro-check env check env.json                  # on another machine: what differs?
  repro-check env diff a.json b.json --relevant-only
  repro-check env requirements env.json -o requirements-pinned.txt
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "env",
        help="capture, compare and pin environment snapshots",
        description="Capture everything outside the code that decides the numbers (torch build, "
        "determinism flags, CPU capability, threads, BLAS, CUDA/GPUs, packages, git, "
        "environment variables), compare snapshots, pin requirements.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write the JSON snapshot to FILE")
    parser.add_argument("--json", action="store_true", help="print the JSON snapshot")
    _capture_options(parser)
    parser.set_defaults(func=_run_capture)

    actions = parser.add_subparsers(dest="env_action", metavar="ACTION")

    p_diff = actions.add_parser(
        "diff",
        help="differences between two snapshots (exit 1 if any)",
        description="List the fields that differ from snapshot A to snapshot B, the ones that "
        "can change results first.",
    )
    p_diff.add_argument("a", metavar="A", help="snapshot JSON (before)")
    p_diff.add_argument("b", metavar="B", help="snapshot JSON (after)")
    _diff_options(p_diff)
    p_diff.set_defaults(func=_run_diff)

    p_check = actions.add_parser(
        "check",
        help="compare this machine with a snapshot (exit 1 if different)",
        description="Capture this machine and list what differs from the saved snapshot.",
    )
    p_check.add_argument("file", metavar="FILE", help="saved snapshot JSON")
    _diff_options(p_check)
    p_check.add_argument(
        "--repo", metavar="DIR", default=None, help="git repository to inspect (default: cwd)"
    )
    p_check.set_defaults(func=_run_check)

    p_req = actions.add_parser(
        "requirements",
        help="pinned requirements from a snapshot",
        description="Write name==version for every package in the snapshot (VCS installs as "
        "'name @ git+url@commit', editable installs as comments), with the PyTorch wheel index "
        "that matches torch's build (+cpu, +cuXYZ, +rocmX.Y).",
    )
    p_req.add_argument(
        "file", metavar="FILE", nargs="?", help="saved snapshot JSON (default: this machine)"
    )
    p_req.add_argument("-o", "--output", metavar="OUT", help="write to OUT instead of stdout")
    p_req.set_defaults(func=_run_requirements)
    return parser


def _capture_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-packages", action="store_true", help="skip the installed-package list (faster)"
    )
    parser.add_argument(
        "--repo", metavar="DIR", default=None, help="git repository to inspect (default: cwd)"
    )


def _diff_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--relevant-only",
        action="store_true",
        help="ignore informational differences (hostname, git, non-numeric packages...)",
    )
    parser.add_argument("--json", action="store_true", help="print the differences as JSON")


def _fail(message: str) -> int:
    print(f"repro-check: error: {message}", file=sys.stderr)
    return 2


def _run_capture(args: argparse.Namespace) -> int:
    from repro_check.core import environment  # noqa: PLC0415 - keep `--help` cheap

    snapshot = environment.capture(
        repo_dir=args.repo, include_packages=not args.no_packages, init_cuda=True
    )
    if args.output:
        try:
            environment.save(snapshot, args.output)
        except OSError as exc:
            return _fail(f"{args.output}: cannot write ({exc.strerror or exc})")
        print(
            f"repro-check: environment snapshot written to {args.output} "
            f"(hash {environment.snapshot_hash(snapshot)[:12]})"
        )
        return 0
    if args.json:
        sys.stdout.write(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(environment.render_text(snapshot))
    return 0


def _report(
    diffs: list[Any], before: str, after: str, args: argparse.Namespace, environment: Any
) -> int:
    if args.relevant_only:
        diffs = [d for d in diffs if d.relevant]
    if args.json:
        rows = [
            {
                "path": d.path,
                "before": None if d.before is environment.UNSET else d.before,
                "after": None if d.after is environment.UNSET else d.after,
                "before_set": d.before is not environment.UNSET,
                "after_set": d.after is not environment.UNSET,
                "relevant": d.relevant,
            }
            for d in diffs
        ]
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return 1 if diffs else 0
    if not diffs:
        print(f"no differences between {before} and {after}")
        return 0
    n_rel = sum(1 for d in diffs if d.relevant)
    print(
        f"{before} -> {after}: {n_rel} relevant, {len(diffs) - n_rel} informational "
        f"difference{'s' if len(diffs) != 1 else ''}"
    )
    print(environment.format_diff(diffs))
    return 1


def _run_diff(args: argparse.Namespace) -> int:
    from repro_check.core import environment  # noqa: PLC0415

    try:
        a = environment.load(args.a)
        b = environment.load(args.b)
    except environment.StoredFileError as exc:
        return _fail(str(exc))
    return _report(environment.diff(a, b), args.a, args.b, args, environment)


def _run_check(args: argparse.Namespace) -> int:
    from repro_check.core import environment  # noqa: PLC0415

    try:
        saved = environment.load(args.file)
    except environment.StoredFileError as exc:
        return _fail(str(exc))
    packages = saved.get("packages")
    with_packages = not (isinstance(packages, dict) and "status" in packages)
    current = environment.capture(
        repo_dir=args.repo, include_packages=with_packages, init_cuda=True
    )
    return _report(environment.diff(saved, current), args.file, "this machine", args, environment)


def _run_requirements(args: argparse.Namespace) -> int:
    from repro_check.core import environment  # noqa: PLC0415
    from repro_check.core.atomic import atomic_write_text  # noqa: PLC0415

    try:
        snapshot = (
            environment.load(args.file) if args.file else environment.capture(include_packages=True)
        )
        text = environment.requirements(snapshot)
    except environment.StoredFileError as exc:
        return _fail(str(exc))
    if args.output:
        try:
            atomic_write_text(args.output, text)
        except OSError as exc:
            return _fail(f"{args.output}: cannot write ({exc.strerror or exc})")
        print(f"repro-check: pinned requirements written to {args.output}")
        return 0
    sys.stdout.write(text)
    return 0
