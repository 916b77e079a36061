"""``repro-check env``: capture, compare and pin environment snapshots.

    repro-check env                          readable summary of this machine
    repro-check env -o FILE                  write the JSON snapshot
    repro-check env diff A B                 relevant differences (exit 1 if any)
    repro-check env check FILE               this machine against A (exit 1 if relevant ones)
    repro-check env requirements [FILE] [-o OUT]   pinned name==version lines

Wherever a snapshot is expected, a baseline file (its embedded environment) or a report folder
(its environment.json) works too. Exit codes: 0 no differences that count, 1 differences,
2 bad input or internal error.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

_SOURCES = "a snapshot file, a baseline file or a report folder"

_EPILOG = f"""\
A and B (and FILE) may each be {_SOURCES}.
By default only differences that can change results count (torch, flags, CPU capability,
threads, BLAS, CUDA, GPUs, numeric packages...); hostname, paths, git state and the like are
informational. --strict shows and counts every difference.

exit status: 0 no differences that count, 1 differences, 2 bad input (missing, corrupt, newer or
unknown file) or an internal error

examples:
  repro-check env -o env.json                     # on the reference machine
  repro-check env check env.json                  # on another machine: what differs?
  repro-check env check tests/repro_baselines/test_mlp/test_train.json
  repro-check env diff repro-report/ other-machine-report/ --strict
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
    parser.set_defaults(func=_guarded(_run_capture))

    actions = parser.add_subparsers(dest="env_action", metavar="ACTION")

    p_diff = actions.add_parser(
        "diff",
        help="differences between two snapshots (exit 1 if any that count)",
        description="List the fields that differ from A to B, the ones that can change results "
        f"first. A and B may each be {_SOURCES}.",
    )
    p_diff.add_argument("a", metavar="A", help=f"before: {_SOURCES}")
    p_diff.add_argument("b", metavar="B", help=f"after: {_SOURCES}")
    _diff_options(p_diff)
    p_diff.set_defaults(func=_guarded(_run_diff))

    p_check = actions.add_parser(
        "check",
        help="compare this machine with a snapshot (exit 1 if different in a way that counts)",
        description=f"Capture this machine and list what differs from FILE ({_SOURCES}).",
    )
    p_check.add_argument("file", metavar="FILE", help=_SOURCES)
    _diff_options(p_check)
    p_check.add_argument(
        "--repo", metavar="DIR", default=None, help="git repository to inspect (default: cwd)"
    )
    p_check.set_defaults(func=_guarded(_run_check))

    p_req = actions.add_parser(
        "requirements",
        help="pinned requirements from a snapshot",
        description="Write validated name==version lines for every package the snapshot "
        "installed from an index; packages from VCS, URLs, local folders or editable installs "
        "are listed as comments, and the PyTorch wheel index (+cpu, +cuXYZ, +rocmX.Y) is named "
        "in a comment. No pip option or URL is ever written as a requirement.",
    )
    p_req.add_argument(
        "file", metavar="FILE", nargs="?", help=f"{_SOURCES} (default: this machine)"
    )
    p_req.add_argument("-o", "--output", metavar="OUT", help="write to OUT instead of stdout")
    p_req.set_defaults(func=_guarded(_run_requirements))
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
        "--strict",
        action="store_true",
        help="show and count informational differences too (hostname, paths, git state, "
        "non-numeric packages...)",
    )
    parser.add_argument(
        "--relevant-only",
        action="store_true",
        help="the default; accepted for compatibility with older releases",
    )
    parser.add_argument("--json", action="store_true", help="print the differences as JSON")


def _fail(message: str) -> int:
    from repro_check.environment import printable  # noqa: PLC0415

    print(f"repro-check: error: {printable(message)}", file=sys.stderr)
    return 2


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Exit 2 with one line, never a traceback, when something unforeseen breaks: exit 1 must
    keep meaning "the environments differ"."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except Exception as exc:  # noqa: BLE001 - the last line of defence of a CLI command
            return _fail(f"internal error: {type(exc).__name__}: {exc}; please report it")

    return wrapper


def _run_capture(args: argparse.Namespace) -> int:
    from repro_check import environment  # noqa: PLC0415 - keep `--help` cheap

    snapshot = environment.capture(
        repo_dir=args.repo, include_packages=not args.no_packages, init_cuda=True
    )
    if args.output:
        try:
            environment.save(snapshot, args.output)
        except OSError as exc:
            return _fail(f"{args.output}: cannot write ({exc.strerror or exc})")
        print(
            environment.printable(
                f"repro-check: environment snapshot written to {args.output} "
                f"(hash {environment.snapshot_hash(snapshot)[:12]})"
            )
        )
        return 0
    if args.json:
        sys.stdout.write(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(environment.render_text(snapshot))
    return 0


def _json_rows(diffs: list[Any], unset: Any) -> list[dict[str, Any]]:
    return [
        {
            "path": d.path,
            "before": None if d.before is unset else d.before,
            "after": None if d.after is unset else d.after,
            "before_set": d.before is not unset,
            "after_set": d.after is not unset,
            "relevant": d.relevant,
        }
        for d in diffs
    ]


def _report(diffs: list[Any], before: str, after: str, args: argparse.Namespace) -> int:
    from repro_check import environment  # noqa: PLC0415

    ignored = [] if args.strict else [d for d in diffs if not d.relevant]
    counted = diffs if args.strict else [d for d in diffs if d.relevant]
    if args.json:
        rows = _json_rows(counted, environment.UNSET)
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return 1 if counted else 0
    title = environment.printable(f"{before} -> {after}")
    if not counted:
        what = "no relevant differences" if ignored else "no differences"
        note = (
            f" ({len(ignored)} informational, such as hostname, paths or git state; "
            f"--strict lists them)"
            if ignored
            else ""
        )
        print(f"{title}: {what}{note}")
        return 0
    n_rel = sum(1 for d in counted if d.relevant)
    n_info = len(diffs) - n_rel
    tail = "" if args.strict else " (not shown; --strict lists them)"
    print(
        f"{title}: {n_rel} relevant, {n_info} informational difference(s){tail if n_info else ''}"
    )
    print(environment.format_diff(counted))
    return 1


def _run_diff(args: argparse.Namespace) -> int:
    from repro_check import environment  # noqa: PLC0415

    try:
        a = environment.load_any(args.a)
        b = environment.load_any(args.b)
    except environment.StoredFileError as exc:
        return _fail(str(exc))
    return _report(environment.diff(a, b), args.a, args.b, args)


def _run_check(args: argparse.Namespace) -> int:
    from repro_check import environment  # noqa: PLC0415

    try:
        saved = environment.load_any(args.file)
    except environment.StoredFileError as exc:
        return _fail(str(exc))
    packages = saved.get("packages")
    with_packages = not (isinstance(packages, dict) and "status" in packages)
    current = environment.capture(
        repo_dir=args.repo, include_packages=with_packages, init_cuda=True
    )
    return _report(environment.diff(saved, current), args.file, "this machine", args)


def _run_requirements(args: argparse.Namespace) -> int:
    from repro_check import environment  # noqa: PLC0415
    from repro_check.core.atomic import atomic_write_text  # noqa: PLC0415

    try:
        snapshot = (
            environment.load_any(args.file)
            if args.file
            else environment.capture(include_packages=True)
        )
        text = environment.requirements(snapshot)
    except environment.StoredFileError as exc:
        return _fail(str(exc))
    if args.output:
        try:
            atomic_write_text(args.output, text)
        except OSError as exc:
            return _fail(f"{args.output}: cannot write ({exc.strerror or exc})")
        print(environment.printable(f"repro-check: pinned requirements written to {args.output}"))
        return 0
    sys.stdout.write(text)
    return 0
