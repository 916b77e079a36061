"""Op traces on disk: one JSON line per event (replica processes hand traces to the parent).

JSON, never pickle: a trace file is data, whoever wrote it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from repro_check.core.optrace import OpEvent, TensorSig


def _sig(sig: TensorSig) -> list[Any]:
    return [sig.hash, sig.dtype, list(sig.shape), sig.origin, sig.origin_event, sig.cls]


def _unsig(data: list[Any]) -> TensorSig:
    h, dtype, shape, origin, origin_event, cls = data
    return TensorSig(int(h), dtype, tuple(shape), origin, int(origin_event), cls)


def write_trace(path: str | os.PathLike[str], events: Iterable[OpEvent], truncated: bool) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"truncated": truncated}) + "\n")
        for e in events:
            handle.write(
                json.dumps(
                    [
                        e.index,
                        e.op,
                        e.overload,
                        e.call_index,
                        [_sig(s) for s in e.inputs],
                        [_sig(s) for s in e.outputs],
                        e.source,
                        e.module_path,
                        e.args_hash,
                        e.rng_state,
                        list(e.flags),
                        e.autograd_node,
                        e.forward_index,
                        e.requires_grad,
                    ],
                    default=repr,
                )
                + "\n"
            )  # flags may hold dtypes or enums: kept as their repr


def read_trace(path: str | os.PathLike[str]) -> tuple[list[OpEvent], bool]:
    events = []
    with open(path, encoding="utf-8") as handle:
        truncated = bool(json.loads(handle.readline())["truncated"])
        for line in handle:
            (
                index,
                op,
                overload,
                call_index,
                inputs,
                outputs,
                source,
                module_path,
                args_hash,
                rng_state,
                flags,
                autograd_node,
                forward_index,
                requires_grad,
            ) = json.loads(line)
            events.append(
                OpEvent(
                    index,
                    op,
                    overload,
                    call_index,
                    tuple(_unsig(s) for s in inputs),
                    tuple(_unsig(s) for s in outputs),
                    source,
                    module_path,
                    args_hash,
                    rng_state,
                    tuple(flags),
                    autograd_node,
                    forward_index,
                    requires_grad,
                )
            )
    return events, truncated
