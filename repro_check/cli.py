"""The ``repro-check`` command line: one subcommand per module in ``repro_check.commands``.

Each command module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func`` (a callable taking the parsed args and returning an exit code) as a default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Imported lazily so that `repro-check --help` does not pay for torch.
COMMAND_MODULES = ("env", "checkpoint", "sensitivity")


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


if __name__ == "__main__":
    sys.exit(main())
