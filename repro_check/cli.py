"""The ``repro-check`` command line: one subcommand per module in ``repro_check.commands``.

Each command module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func`` (a callable taking the parsed args and returning an exit code) as a default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from repro_check.core.atomic import StoredFileError

# Imported lazily so that `repro-check --help` does not pay for torch.
COMMAND_MODULES = ("env", "checkpoint", "sensitivity", "runs", "compare")
#: Exit codes of every command: 0 the inputs agree (or the action succeeded), 1 they differ,
#: 2 bad input or an internal error (argparse's usage errors are 2 as well).
EXIT_OK, EXIT_DIFFER, EXIT_BAD_INPUT = 0, 1, 2
DEBUG_ENV = "REPRO_CHECK_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repro-check",
        description="Determinism verification for PyTorch training (see also: pytest --repro).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"repro_check.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("repro-check: interrupted", file=sys.stderr)
        return 130
    except StoredFileError as exc:  # a file given on the command line is unusable
        print(f"repro-check: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into exit 2
        if os.environ.get(DEBUG_ENV):
            raise
        where = " ".join(["repro-check", *(argv if argv is not None else sys.argv[1:])])
        print(
            f"repro-check: internal error: {type(exc).__name__}: {exc}\n"
            f"  while running: {where}\n"
            f"  This is a bug in repro-check: please report it with the command above (set "
            f"{DEBUG_ENV}=1 to see the traceback).",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
