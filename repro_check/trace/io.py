"""Op traces on disk: a schema header, then one JSON line per event.

A replica process writes its trace once, when the traced window closes, and the parent reads
it back to diff two of them. The file is written whole through
:func:`repro_check.core.atomic.atomic_writer` (temp file, fsync, rename), so a reader never
sees a half-written trace; JSON lines keep a long trace streamable on read. JSON, never
pickle: a trace file is data, whoever wrote it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from repro_check.core.atomic import StoredFileError, atomic_writer
from repro_check.trace.events import OpEvent, TensorSig

__all__ = ["TRACE_SCHEMA", "read_trace", "write_trace"]

TRACE_SCHEMA = "repro-check/op-trace"
TRACE_SCHEMA_VERSION = 1


def _sig(sig: TensorSig) -> list[Any]:
    return [sig.hash, sig.dtype, list(sig.shape), sig.origin, sig.origin_event, sig.cls]


def _unsig(data: list[Any]) -> TensorSig:
    h, dtype, shape, origin, origin_event, cls = data
    return TensorSig(int(h), dtype, tuple(shape), origin, int(origin_event), cls)


def _line(e: OpEvent) -> str:
    fields = [
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
    ]
    return json.dumps(fields, default=repr) + "\n"  # flags may hold dtypes or enums: their repr


def write_trace(path: str | os.PathLike[str], events: Iterable[OpEvent], truncated: bool) -> None:
    """Write a trace atomically: a header line, then one line per event."""
    events = list(events)
    header = {
        "schema": TRACE_SCHEMA,
        "schema_version": TRACE_SCHEMA_VERSION,
        "truncated": bool(truncated),
        "events": len(events),
    }
    with atomic_writer(path) as handle:
        handle.write((json.dumps(header) + "\n").encode("utf-8"))
        for e in events:
            handle.write(_line(e).encode("utf-8"))


def _event(fields: list[Any]) -> OpEvent:
    (index, op, overload, call_index, inputs, outputs, *rest) = fields
    source, module_path, args_hash, rng_state, flags, node, forward_index, requires_grad = rest
    return OpEvent(
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
        node,
        forward_index,
        requires_grad,
    )


def read_trace(path: str | os.PathLike[str]) -> tuple[list[OpEvent], bool]:
    """The events of a trace file and whether the tracer truncated it (``max_events``)."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise StoredFileError(f"{path}: cannot read the trace ({exc.strerror})") from None
    with handle:
        try:
            header = json.loads(handle.readline() or "null")
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("schema") != TRACE_SCHEMA:
            raise StoredFileError(
                f"{path}: not a {TRACE_SCHEMA!r} file (written by another repro-check version, "
                "or not a trace): rerun to trace again"
            )
        version = header.get("schema_version")
        if not isinstance(version, int) or version > TRACE_SCHEMA_VERSION:
            raise StoredFileError(
                f"{path}: trace schema_version {version!r} is newer than this repro-check "
                f"understands ({TRACE_SCHEMA_VERSION}); upgrade repro-check"
            )
        events = []
        for number, line in enumerate(handle, start=2):
            try:
                events.append(_event(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                raise StoredFileError(f"{path}:{number}: corrupt trace event ({exc})") from None
    if len(events) != header.get("events", len(events)):
        raise StoredFileError(
            f"{path}: {len(events)} events, the header says {header['events']}: the file is "
            "truncated"
        )
    return events, bool(header.get("truncated"))
