"""Where two traces first part, and why.

:func:`diff_traces` walks two traces in order and classifies the *first* difference:

* ``"structural"``: the runs executed different ops (control flow depended on a value);
* ``"external-input"``: same op, but an input differs while every earlier op agreed, so the
  value came from outside the traced ops (numpy/Python RNG, data, state made before tracing);
* ``"nondeterministic-op"``: same op, bitwise-equal inputs, different outputs: the op's kernel
  is not repeatable; the advice comes from the op knowledge table (:mod:`repro_check.trace.ops`);
* ``"identical"``.

Plain data in, plain data out: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from repro_check.trace.events import OpEvent, TensorSig
from repro_check.trace.ops import advice_for

__all__ = ["TraceDiff", "diff_traces"]


@dataclass
class TraceDiff:
    """Where two traces first part, and why (``kind``)."""

    kind: str  # "identical" | "nondeterministic-op" | "external-input" | "structural"
    index: int | None = None  # event index (the same in both traces up to the difference)
    event_a: OpEvent | None = None
    event_b: OpEvent | None = None
    input_position: int | None = None  # external-input: which tensor input (-1: non-tensor args)
    entered_at: str | None = None  # external-input: source line where the input was first seen
    entered_event: int | None = None
    forward_source: str | None = None  # backward events: the forward line behind the node
    first_structural: int | None = None  # later: first event where the op sequences part
    events_compared: int = 0
    truncated: bool = False
    advice: str | None = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


_UNTRACED_NOTE = (
    "If this tensor was produced by a custom C++/CUDA/Triton kernel that bypasses the dispatcher, "
    "the op that produced this input was not seen by the dispatcher: the nondeterminism is in "
    "that kernel, which ran just before this line, and shows up here one op later."
)


def _events_of(x: Any) -> tuple[Sequence[OpEvent], bool]:
    """A tracer's events and truncation flag, or a plain list of events (never truncated)."""
    return getattr(x, "events", x), bool(getattr(x, "truncated", False))


def _key(sig: TensorSig) -> tuple:
    return (sig.hash, sig.dtype, sig.shape)


def _fmt_sigs(sigs: Sequence[TensorSig]) -> str:
    return ", ".join(s.describe() for s in sigs) or "(none)"


def _same_op(a: OpEvent, b: OpEvent) -> bool:
    return a.op == b.op and a.overload == b.overload


def diff_traces(
    a: Any,
    b: Any,
    *,
    labels: tuple[str, str] = ("run A", "run B"),
) -> TraceDiff:
    """Walk two traces (tracers or event lists) in order and classify their first difference
    (see the module docstring)."""
    ev_a, trunc_a = _events_of(a)
    ev_b, trunc_b = _events_of(b)
    la, lb = labels
    n = min(len(ev_a), len(ev_b))
    for i in range(n):
        ea, eb = ev_a[i], ev_b[i]
        if not _same_op(ea, eb) or len(ea.inputs) != len(eb.inputs):
            return _structural(i, ea, eb, ev_a, labels, trunc_a or trunc_b)
        diff_in = [
            k
            for k, (x, y) in enumerate(zip(ea.inputs, eb.inputs, strict=True))
            if _key(x) != _key(y)
        ]
        if diff_in:
            k = diff_in[0]
            return _external(i, k, ea, eb, ev_a, ev_b, labels, trunc_a or trunc_b)
        if ea.rng_state != eb.rng_state:
            return _external(i, -2, ea, eb, ev_a, ev_b, labels, trunc_a or trunc_b)
        if ea.args_hash != eb.args_hash:
            return _external(i, -1, ea, eb, ev_a, ev_b, labels, trunc_a or trunc_b)
        if [_key(x) for x in ea.outputs] != [_key(y) for y in eb.outputs]:
            if _rebinds_storage(ea):
                return _storage_entry(i, ea, eb, labels, trunc_a or trunc_b)
            return _nondeterministic(i, ea, eb, ev_a, ev_b, labels, trunc_a or trunc_b)
    truncated = trunc_a or trunc_b
    if len(ev_a) != len(ev_b) and not truncated:
        longer, name = (ev_a, la) if len(ev_a) > len(ev_b) else (ev_b, lb)
        extra = longer[n]
        d = TraceDiff(
            "structural",
            index=n,
            event_a=ev_a[n] if n < len(ev_a) else None,
            event_b=ev_b[n] if n < len(ev_b) else None,
            events_compared=n,
            message=(
                f"Structural difference: both runs executed the same {n} ops, then {name} went "
                f"on with {extra.describe()} ({len(ev_a)} vs {len(ev_b)} ops in all). Control "
                "flow (a loop count or an early exit) depended on something that differed."
            ),
        )
        return d
    note = f" (over the first {n} ops only: trace truncated by max_events)" if truncated else ""
    return TraceDiff(
        "identical",
        events_compared=n,
        truncated=truncated,
        message=f"Identical: {n} ops with bitwise-equal inputs and outputs{note}.",
    )


def _last_scalar_read(events: Sequence[OpEvent], before: int) -> OpEvent | None:
    for j in range(before - 1, -1, -1):
        if events[j].op in ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::item"):
            return events[j]
    return None


def _first_structural(ev_a: Sequence[OpEvent], ev_b: Sequence[OpEvent], start: int) -> int | None:
    n = min(len(ev_a), len(ev_b))
    for j in range(start, n):
        if not _same_op(ev_a[j], ev_b[j]):
            return j
    return n if len(ev_a) != len(ev_b) else None


def _structural(
    i: int,
    ea: OpEvent,
    eb: OpEvent,
    ev_a: Sequence[OpEvent],
    labels: tuple[str, str],
    truncated: bool,
) -> TraceDiff:
    la, lb = labels
    read = _last_scalar_read(ev_a, i)
    hint = (
        f" The last tensor value read into Python before this point was {read.describe()} "
        "(item()/bool()/if-test): its value was equal in both runs, so the branch was taken on "
        "something outside torch ops (Python/numpy random numbers, data, time, dict/set order)."
        if read is not None
        else " The branch was taken on something outside torch ops (a Python/numpy random "
        "number, data, time, dict/set iteration order)."
    )
    msg = (
        f"Structural difference at op #{i}: the runs executed different ops, so control flow "
        f"depended on a value that differed.\n  {la}: {ea.describe()}\n  {lb}: {eb.describe()}\n"
        f"All {i} ops before agreed bitwise.{hint}"
    )
    return TraceDiff(
        "structural",
        index=i,
        event_a=ea,
        event_b=eb,
        events_compared=i,
        truncated=truncated,
        message=msg,
        details={"source_a": ea.source, "source_b": eb.source},
    )


def _external(
    i: int,
    k: int,
    ea: OpEvent,
    eb: OpEvent,
    ev_a: Sequence[OpEvent],
    ev_b: Sequence[OpEvent],
    labels: tuple[str, str],
    truncated: bool,
) -> TraceDiff:
    la, lb = labels
    later = _first_structural(ev_a, ev_b, i + 1)
    tail = f"\nControl flow parts later, at op #{later}." if later is not None and later > i else ""
    base = dict(
        index=i,
        event_a=ea,
        event_b=eb,
        input_position=k,
        events_compared=i,
        truncated=truncated,
        first_structural=later,
    )
    if k == -2:
        msg = (
            f"External input at op #{i}: {ea.describe()} is a random op and the random generator "
            f"state before it differed ({la}: {ea.rng_state:016x}, {lb}: {eb.rng_state:016x}), "
            f"while all {i} earlier ops agreed. The generator was seeded differently, or random "
            "numbers were drawn outside the traced ops: seed it from the run's seed "
            "(repro.seed_for(...)) before this point."
        )
        return TraceDiff(
            "external-input", entered_at=ea.source, entered_event=i, message=msg, **base
        )
    if k == -1:
        msg = (
            f"External input at op #{i}: {ea.describe()} got different non-tensor arguments "
            "(Python numbers, sizes or flags), with equal tensor inputs. The value came from "
            "Python code, not from a torch op: random.random(), numpy, time, dict/set order... "
            "Seed or remove it."
        )
        return TraceDiff(
            "external-input", entered_at=ea.source, entered_event=i, message=msg, **base
        )
    sa, sb = ea.inputs[k], eb.inputs[k]
    if sa.origin == "traced" and sb.origin == "traced":
        pa, pb = ev_a[sa.origin_event], ev_b[sb.origin_event]
        msg = (
            f"External input at op #{i}: tensor input {k} of {ea.describe()} differs "
            f"({la}: {sa.describe()}, {lb}: {sb.describe()}), while all {i} earlier ops agreed "
            f"bitwise. Both values were produced by traced ops, but different ones ({la}: "
            f"{pa.describe()}; {lb}: {pb.describe()}): Python code chose which tensor to pass "
            "(a random choice, dict/set iteration order, a value read from outside)."
        )
        return TraceDiff(
            "external-input",
            entered_at=ea.source,
            entered_event=i,
            message=msg + tail,
            details={"origin": "traced-choice", "sig_a": sa, "sig_b": sb},
            **base,
        )
    # the side whose value is not traced and was seen most recently is where it entered
    cands = [(s.origin_event, s.origin, evs) for s, evs in ((sa, ev_a), (sb, ev_b))]
    cands = [c for c in cands if c[1] != "traced"]
    first, origin, evs = max(cands, key=lambda c: c[0])
    first_ev = evs[first] if 0 <= first < len(evs) else ea
    if origin == "modified":
        prod = first_ev
        msg = (
            f"External input at op #{i}: tensor input {k} of {ea.describe()} differs "
            f"({la}: {sa.describe()}, {lb}: {sb.describe()}), while all {i} earlier ops agreed "
            f"bitwise. This tensor was produced by traced op {prod.describe()}, and its content "
            "changed afterwards outside the dispatcher: a write through numpy (.numpy() / "
            "from_numpy aliasing), a raw data pointer, or a custom C++/CUDA/Triton kernel. "
            + _UNTRACED_NOTE
        )
        return TraceDiff(
            "external-input",
            entered_at=prod.source,
            entered_event=prod.index,
            message=msg,
            details={"origin": "modified", "sig_a": sa, "sig_b": sb},
            **base,
        )
    msg = (
        f"External input at op #{i}: tensor input {k} of {ea.describe()} differs "
        f"({la}: {sa.describe()}, {lb}: {sb.describe()}), while all {i} earlier ops agreed "
        f"bitwise. No traced op produced this tensor: it entered from outside torch ops, first "
        f"seen at {first_ev.source} (op #{first_ev.index}). The nondeterminism came from outside "
        "the traced ops: numpy or Python RNG (torch.from_numpy / torch.tensor of unseeded "
        "values), the data pipeline (DataLoader order, workers, augmentation), the file "
        "system, or state created before tracing began (model initialisation). " + _UNTRACED_NOTE
    )
    return TraceDiff(
        "external-input",
        entered_at=first_ev.source,
        entered_event=first_ev.index,
        message=msg + tail,
        details={"origin": "external", "sig_a": sa, "sig_b": sb},
        **base,
    )


def _rebinds_storage(event: OpEvent) -> bool:
    """``aten::set_`` onto a Storage: the tensor now shows bytes no traced op wrote -- a
    DataLoader batch arriving from a worker process through shared memory, or a file."""
    return event.op == "aten::set_" and event.overload.startswith("source_Storage")


def _storage_entry(
    i: int, ea: OpEvent, eb: OpEvent, labels: tuple[str, str], truncated: bool
) -> TraceDiff:
    la, lb = labels
    msg = (
        f"External input at op #{i}: {ea.describe()} attached a tensor to memory filled outside "
        f"the traced process (a DataLoader batch built by a worker process, or bytes read from a "
        f"file), and its content differs ({la}: {_fmt_sigs(ea.outputs)}; {lb}: "
        f"{_fmt_sigs(eb.outputs)}). The nondeterminism entered with the data at {ea.source}, "
        "not in a torch op: look at the Dataset, its augmentation and the loader's "
        "worker_init_fn (seed workers from torch.initial_seed(), as repro.dataloader_kwargs() "
        "does)."
    )
    return TraceDiff(
        "external-input",
        index=i,
        event_a=ea,
        event_b=eb,
        entered_at=ea.source,
        entered_event=i,
        events_compared=i,
        truncated=truncated,
        message=msg,
        advice="seed every worker from the loader's generator (repro.dataloader_kwargs())",
    )


def _nondeterministic(
    i: int,
    ea: OpEvent,
    eb: OpEvent,
    ev_a: Sequence[OpEvent],
    ev_b: Sequence[OpEvent],
    labels: tuple[str, str],
    truncated: bool,
) -> TraceDiff:
    la, lb = labels
    fwd = ev_a[ea.forward_index].source if 0 <= ea.forward_index < len(ev_a) else None
    advice = advice_for(ea)
    flags = ea.flag_dict()
    flag_txt = (
        " with " + ", ".join(f"{k}={v!r}" for k, v in flags.items() if isinstance(v, (bool, str)))
        if any(isinstance(v, (bool, str)) for v in flags.values())
        else ""
    )
    bwd = (
        f" It ran in backward (autograd node {ea.autograd_node}) for the forward call at {fwd}."
        if ea.is_backward and fwd
        else ""
    )
    random_note = (
        " It is a random op with equal generator state, so its kernel is not repeatable."
        if ea.rng_state is not None
        else ""
    )
    later = _first_structural(ev_a, ev_b, i + 1)
    msg = (
        f"Nondeterministic op at #{i}: {ea.describe()}{flag_txt} got bitwise-equal inputs in "
        f"both runs ({_fmt_sigs(ea.inputs)}) but produced different outputs ({la}: "
        f"{_fmt_sigs(ea.outputs)}; {lb}: {_fmt_sigs(eb.outputs)}). All {i} earlier ops agreed."
        f"{bwd}{random_note}\nAdvice: {advice}"
    )
    if later is not None:
        msg += f"\nControl flow parts later, at op #{later}."
    return TraceDiff(
        "nondeterministic-op",
        index=i,
        event_a=ea,
        event_b=eb,
        events_compared=i,
        truncated=truncated,
        forward_source=fwd,
        first_structural=later,
        advice=advice,
        message=msg,
        details={"flags": flags},
    )
