"""Investigating a divergence: a control rerun, then traced reruns that name the op.

The plan is a pure function of the verdict and a *rerunner* -- anything that reruns two replicas
of one test in fresh processes, optionally tracing a window of steps -- so the loop (which
window, how many attempts, when a later attempt may replace a finding) is unit-tested with a
fake rerunner, and the pytest front end only supplies the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec
from repro_check.orchestration.verdict import Localization, TestVerdict

LOCALIZE_AUTO_S = 30.0  # "auto" localises when one replica of the test took less than this
LOCALIZE_ATTEMPTS = 3
WHOLE_RUN = 2**62  # a trace window that closes only when the test ends


@dataclass(frozen=True)
class TraceWindow:
    """Trace the ops after ``record(start_after)`` up to ``record(stop_at)`` (None: from the start)."""

    start_after: int | None
    stop_at: int


class Rerunner(Protocol):
    def __call__(
        self,
        nodeid: str,
        originals: Sequence[ReplicaSpec],
        window: TraceWindow | None,
        attempt: int,
    ) -> list[ReplicaResult]:
        """Rerun ``originals`` (replica 0 and the parting replica; only replica 0 when
        ``window`` is None) with the same process settings, tracing ``window`` if given."""
        ...


def window_start(steps: list[int], step: int, attempt: int) -> int | None:
    """The recorded step after which tracing starts (None: from the start of the test).

    The first attempt traces only the divergent step; retries trace from the start, because an
    intermittent divergence may part earlier in a rerun than in the original run.
    """
    position = steps.index(step) if step in steps else 0
    return steps[position - 1] if position and attempt == 0 else None


def rerun_divergence_step(reruns: Sequence[ReplicaResult]) -> int | None:
    """Where two traced reruns first part (None: they agree, or cannot be compared)."""
    from repro_check.core.compare import compare_runs

    if len(reruns) < 2 or any(r.record is None or r.outcome != "passed" for r in reruns):
        return None
    comparison = compare_runs(reruns[0].record, reruns[1].record)  # type: ignore[arg-type]
    if comparison.divergence is not None:
        return comparison.divergence.step
    if comparison.structural is not None:
        return comparison.structural.step
    return None


def should_localize(mode: str, duration: float, replicas: int) -> bool:
    """``always``/``never``, or ``auto``: when a rerun of two replicas is cheap next to the runs
    already made (one replica took under LOCALIZE_AUTO_S)."""
    if mode == "never":
        return False
    return mode == "always" or duration / max(1, replicas) < LOCALIZE_AUTO_S


def process_state_finding(specs: Sequence[ReplicaSpec], control_matches: bool) -> str:
    """What the control rerun of replica 0 says about where the nondeterminism lives."""
    reference = specs[0]
    differing = sorted(
        {key for spec in specs for key in spec.env if spec.env.get(key) != reference.env.get(key)}
    )
    if control_matches:
        return (
            f"only process-level state differs: a control replica with replica 0's "
            f"settings ({reference.describe()}) reproduced replica 0 bit for bit, "
            f"while replicas differing in {', '.join(differing) or 'process state'} "
            f"diverged. With PYTHONHASHSEED this is hash randomisation: iteration over a "
            f"set (or dict built from one) of str/bytes, or hash() of a string, decides "
            f"something in the run. Sort before iterating (sorted(set_of_names))."
        )
    return (
        "a control replica with replica 0's exact process settings also diverged from "
        "it: the nondeterminism is inside the run (thread scheduling in an op, an "
        "unseeded RNG, the data pipeline), not process-level state."
    )


def localize(
    reruns: Sequence[ReplicaResult],
    step: int,
    originals: Sequence[ReplicaSpec],
    start_after: int | None = None,
) -> Localization:
    from repro_check.orchestration.localize import localize_from_reruns

    found = localize_from_reruns(list(reruns), step, list(originals), start_after)
    return found if isinstance(found, Localization) else Localization.from_json(found)


def localize_from_replicas(verdict: TestVerdict, specs: Sequence[ReplicaSpec]) -> None:
    """Tests with allowances trace their replicas whole: diff those traces directly."""
    pair = [verdict.reference, verdict.other]
    divergence = verdict.comparison.divergence if verdict.comparison else None
    if (
        divergence is None
        or verdict.other_replica is None
        or any(r is None or not r.run_info.get("trace_path") for r in pair)
    ):
        return
    originals = [specs[0], specs[verdict.other_replica]]
    found = localize(pair, divergence.step, originals)  # type: ignore[arg-type]
    found.origin = "the replicas' own traces"
    verdict.localization = found


def _better(found: Localization, current: Localization | None) -> bool:
    """A later attempt that saw nothing never replaces one that named the culprit."""
    return (
        found.kind != "identical" or current is None or current.kind in ("identical", "unavailable")
    )


def investigate(
    verdict: TestVerdict,
    specs: Sequence[ReplicaSpec],
    rerun: Rerunner,
    *,
    localize_ops: bool,
    control_speaks: bool,
) -> None:
    """Rerun the two parting replicas once more, with the same process settings.

    The rerun of replica 0 is a *control*: if it matches replica 0's first run bit for bit
    while the other replica differs, only process-level state (hash randomisation) differs --
    which only means something when the replicas ran in processes of their own
    (``control_speaks``). With ``localize_ops``, both reruns trace every aten op of the step
    where they part, and the traces are diffed to find the op (or the line where data entered).
    Intermittent nondeterminism may part elsewhere (or not at all) in a rerun: the window
    follows the reruns' own first divergence, for up to LOCALIZE_ATTEMPTS attempts.
    """
    from repro_check.core.compare import compare_runs

    divergence = verdict.comparison.divergence if verdict.comparison else None
    reference = verdict.reference.record if verdict.reference else None
    if divergence is None or reference is None or verdict.other_replica is None:
        return
    originals = [specs[0], specs[verdict.other_replica]]
    steps = [s.step for s in reference.steps]
    step = divergence.step
    for attempt in range(LOCALIZE_ATTEMPTS if localize_ops else 1):
        start = window_start(steps, step, attempt)
        window = TraceWindow(start, step) if localize_ops else None
        reruns = rerun(
            verdict.nodeid, originals if localize_ops else originals[:1], window, attempt
        )
        control = reruns[0]
        if attempt == 0 and control_speaks and control.outcome == "passed" and control.record:
            verdict.diagnosis = process_state_finding(
                specs, compare_runs(reference, control.record).identical
            )
        if not localize_ops:
            return
        found = localize(reruns, step, originals, start)
        found.attempts = attempt + 1
        if _better(found, verdict.localization):
            verdict.localization = found
        parted = rerun_divergence_step(reruns)
        if parted is None or parted == step:
            if parted == step or attempt == LOCALIZE_ATTEMPTS - 1:
                return
            continue  # did not recur: try the same window again
        step = parted  # the reruns parted elsewhere: trace where they did
