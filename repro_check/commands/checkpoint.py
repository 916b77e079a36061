"""``repro-check checkpoint``: verify a checkpoint, or diff two, bit by bit."""

from __future__ import annotations

import argparse
from typing import Any

from tabulate import tabulate


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("checkpoint", help="verify or compare checkpoints")
    sub = parser.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="check a checkpoint against its manifest")
    verify.add_argument("path")
    verify.set_defaults(func=run_verify)
    diff = sub.add_parser(
        "diff",
        help="compare two checkpoints (.safetensors with or without manifest, or a "
        "torch.save state dict, loaded with weights_only=True); exit 0 when bitwise equal, 1 "
        "when not",
    )
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--all", action="store_true", help="list equal keys too")
    diff.set_defaults(func=run_diff)


def run_verify(args: argparse.Namespace) -> int:
    from repro_check.core.checkpoint import load_checkpoint

    tensors, manifest = load_checkpoint(args.path)  # a bad file: exit 2 (repro_check.cli)
    print(f"{args.path}: OK, {len(tensors)} tensors match their fingerprints")
    for field in ("test_id", "replica", "step", "seed", "base_seed"):
        if field in manifest:
            print(f"  {field}: {manifest[field]}")
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from repro_check.core.checkpoint import diff_tensors, load_tensors

    a, b = load_tensors(args.a), load_tensors(args.b)  # a bad file: exit 2 (repro_check.cli)
    diffs = diff_tensors(a, b)
    rows = []
    for d in diffs:
        if d.status == "equal" and not args.all:
            continue
        if d.detail is not None:
            rows.append(
                [
                    d.key,
                    d.status,
                    f"{d.detail.mismatched}/{d.detail.numel}",
                    f"{d.detail.max_abs:.3g}",
                    str(d.detail.max_abs_index),
                    f"{d.detail.max_rel:.3g}",
                ]
            )
        else:
            rows.append([d.key, d.status, "", "", "", d.note])
    differing = sum(d.status != "equal" for d in diffs)
    if rows:
        print(
            tabulate(
                rows,
                headers=[
                    "key",
                    "status",
                    "elements differing",
                    "max abs diff",
                    "at index",
                    "max rel diff / note",
                ],
            )
        )
    print(f"{len(diffs)} keys, {differing} differ" + ("" if differing else ": bitwise identical"))
    return 1 if differing else 0
