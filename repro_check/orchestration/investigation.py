"""Investigating a divergence: a control rerun, then traced reruns that name the op.

The plan is a pure function of the verdict and a *rerunner* -- anything that reruns two replicas
of one test in fresh processes, optionally tracing a window of steps -- so the loop (which
window, how many attempts, when a later attempt may replace a finding) is unit-tested with a
fake rerunner, and the pytest front end only supplies the real one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec
from repro_check.orchestration.verdict import Localization, TestVerdict

if TYPE_CHECKING:
    from repro_check.core.record import RunRecord

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


PARAMETER_ORDER = "parameter order differs"
_OPTIMIZER_GROUP = re.compile(r"^(.+)\.param_groups\.\d+\.")
_OPTIMIZER_STATE = re.compile(r"^(.+)\.state\.(\d+)\.(.+)$")


def parameter_order_differs(reference: RunRecord, other: RunRecord) -> bool:
    """Whether two records differ only in how an optimizer's state is indexed: every other
    key bitwise equal at every step, and each optimizer's per-parameter states the same
    collection, assigned to different parameter positions (the optimizer was given the
    parameters in another order, e.g. from a set)."""
    if [s.step for s in reference.steps] != [s.step for s in other.steps]:
        return False
    permuted = False
    for a, b in zip(reference.steps, other.steps, strict=True):
        optimizers = {m.group(1) for key in a.entries if (m := _OPTIMIZER_GROUP.match(key))}
        states_a, rest_a = _split_states(a.entries, optimizers)
        states_b, rest_b = _split_states(b.entries, optimizers)
        if rest_a != rest_b:
            return False
        for name in optimizers:
            by_position_a, by_position_b = states_a.get(name, {}), states_b.get(name, {})
            if sorted(by_position_a.values()) != sorted(by_position_b.values()):
                return False
            permuted = permuted or by_position_a != by_position_b
    return permuted


def _split_states(
    entries: dict, optimizers: set[str]
) -> tuple[dict[str, dict[str, tuple]], dict[str, tuple]]:
    """(optimizer -> parameter position -> its state's fingerprints, every other key's)."""
    states: dict[str, dict[str, tuple]] = {}
    rest = {}
    for key, entry in entries.items():
        fp = entry.fingerprint
        identity = (fp.digest, fp.dtype, fp.shape)
        match = _OPTIMIZER_STATE.match(key)
        if match and match.group(1) in optimizers:
            position = states.setdefault(match.group(1), {})
            state = dict(position.get(match.group(2), ()))
            state[match.group(3)] = identity
            position[match.group(2)] = tuple(sorted(state.items()))
        else:
            rest[key] = identity
    return states, rest


def parameter_order_finding() -> str:
    return (
        f"{PARAMETER_ORDER}: every model weight and every other recorded value agrees bit for "
        f"bit, and the optimizer holds the same per-parameter state -- at other positions. "
        f"Its state is indexed by the order the parameters were passed in, and the replicas "
        f"passed them in different orders (built from a set, or a dict keyed by strings?). "
        f"Pass model.parameters(), or sort the named parameters, when building the optimizer."
    )


def control_rerun(verdict: TestVerdict, specs: Sequence[ReplicaSpec], rerun: Rerunner) -> None:
    """Only the control: rerun replica 0 with its own process settings. For a structural
    mismatch (other steps, keys or shapes) there is no divergent op to trace, but whether a
    control reproduces replica 0 still separates process state (hash randomisation deciding
    a set's order) from nondeterminism inside the run."""
    reference = verdict.reference.record if verdict.reference else None
    if reference is None or verdict.other_replica is None:
        return
    _control_finding(verdict, specs, reference, rerun(verdict.nodeid, specs[:1], None, 0)[0])


def _control_finding(
    verdict: TestVerdict,
    specs: Sequence[ReplicaSpec],
    reference: RunRecord,
    control: ReplicaResult,
) -> None:
    from repro_check.core.compare import compare_runs

    if control.outcome == "passed" and control.record:
        identical = compare_runs(reference, control.record).identical
        verdict.diagnosis = process_state_finding(specs, identical)


def localize(
    reruns: Sequence[ReplicaResult],
    step: int,
    originals: Sequence[ReplicaSpec],
    start_after: int | None = None,
) -> Localization:
    from repro_check.orchestration.localize import localize_from_reruns

    return Localization.from_json(
        localize_from_reruns(list(reruns), step, list(originals), start_after)
    )


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
        if attempt == 0 and control_speaks:
            _control_finding(verdict, specs, reference, reruns[0])
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
