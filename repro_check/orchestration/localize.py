"""Localisation: from two traced reruns of the divergent step, name the op (or the line where
the difference entered) and what to do about it."""

from __future__ import annotations

from typing import Any

from repro_check.core.compare import compare_runs
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec


def localize_from_reruns(
    reruns: list[ReplicaResult],
    step: int,
    originals: list[ReplicaSpec],
    start_after: int | None = None,
) -> dict[str, Any]:
    """Diff the traces of two reruns; explain when the reruns cannot be compared."""
    from repro_check.trace.diff import diff_traces
    from repro_check.trace.io import read_trace

    failed = [r for r in reruns if r.outcome != "passed"]
    if failed:
        return {
            "kind": "unavailable",
            "message": f"the traced rerun failed: {failed[0].error.splitlines()[-1:]}",
        }
    paths = [r.run_info.get("trace_path") for r in reruns]
    if not all(paths) or any(r.record is None for r in reruns):
        return {
            "kind": "unavailable",
            "message": f"step {step} was not reached in the traced rerun, so nothing was "
            f"traced: record every step with repro.record(step, ...)",
        }
    first, second = reruns[0].record, reruns[1].record
    assert first is not None and second is not None
    rerun_cmp = compare_runs(first, second)
    parted = rerun_cmp.divergence.step if rerun_cmp.divergence is not None else None
    window = "the whole run up to" if start_after is None else f"steps after {start_after} up to"
    note = ""
    if rerun_cmp.identical:
        note = (
            f"the reruns did not diverge this time (the nondeterminism is intermittent); "
            f"the traces of {window} step {step} are compared anyway"
        )
    elif parted is not None and start_after is not None and parted <= start_after:
        note = (
            f"in the traced reruns the replicas already parted at step {parted}, before the "
            f"traced window: the op named below may only inherit the difference"
        )
    elif parted is not None and start_after is None and parted < step:
        note = (
            f"in the traced reruns the replicas parted at step {parted}, earlier than in the "
            f"first run; the trace covers the whole run, so the finding below is where they part"
        )
    elif parted is not None and parted > step:
        note = (
            f"in the traced reruns the replicas agreed up to step {step} and parted only at "
            f"step {parted}, after the traced window"
        )
    (events_a, truncated_a), (events_b, truncated_b) = (read_trace(p) for p in paths)
    labels = (f"replica {originals[0].index}", f"replica {originals[1].index}")
    diff = diff_traces(events_a, events_b, labels=labels)
    event = diff.event_a or diff.event_b
    result: dict[str, Any] = {
        "kind": diff.kind,
        "step": parted if parted is not None and start_after is None and parted < step else step,
        "message": diff.message,
        "op": event.qualname if event is not None else None,
        "source": event.source if event is not None else None,
        "module_path": event.module_path if event is not None else None,
        "call_index": event.call_index if event is not None else None,
        "entered_at": diff.entered_at,
        "advice": diff.advice,
        "events_compared": diff.events_compared,
        "truncated": truncated_a or truncated_b,
    }
    if note:
        result["note"] = note
    return result
