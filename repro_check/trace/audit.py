"""Which ops of a (CPU) run would be nondeterministic on CUDA, and which lines call them.

The knowledge lives in data, not code: :mod:`repro_check.trace.ops` loads
``repro_check/data/op_knowledge.json``, which lists every op the docstring of
``torch.use_deterministic_algorithms`` (installed torch) names as normally nondeterministic, and
the kernels PyTorch's CUDA sources warn about (attention backward, cuBLAS workspaces,
``index_reduce``), mapped to the aten ops a trace shows, with device(s), the behaviour under
``torch.use_deterministic_algorithms(True)``, the alternative and the torch range the list was
checked for. :func:`docstring_items` parses the installed docstring so a test can fail loudly
when a torch upgrade changes the list.

:func:`audit` maps the events of an :class:`~repro_check.trace.tracer.OpTracer` trace to entries
of that table. Backward kernels (``aten::upsample_bilinear2d_backward``) are seen when
``loss.backward()`` runs inside the tracer; their own source line is the ``backward()`` call, so
each is attributed to the forward call that created its autograd node (linked by autograd
sequence number), falling back to the forward ops of the same kind when the link is missing.

:func:`alerts_under_deterministic_mode` asks PyTorch itself: it runs a function under
``torch.use_deterministic_algorithms(True, warn_only=True)`` and collects the alerts. On a CPU
build few ops alert (observed on torch 2.13: ``max_unpool2d``/``max_unpool3d``,
``put_(accumulate=False)``, ``resize_`` of a quantized tensor); the CUDA-only alerts cannot fire
without CUDA tensors, which is why the table exists.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from repro_check.trace.events import OpEvent
from repro_check.trace.frames import SourceLocator
from repro_check.trace.ops import (
    ALERT_WARNING_PATTERNS,
    OpEntry,
    OpTable,
    load_table,
    nondeterminism_alert,
)

__all__ = [
    "CallSite",
    "DeterminismAlert",
    "RiskFinding",
    "alerts_under_deterministic_mode",
    "audit",
    "docstring_items",
    "format_findings",
    "version_in_range",
]


def docstring_items(doc: str | None = None) -> dict[str, list[str]]:
    """Bullet items of ``torch.use_deterministic_algorithms.__doc__``, whitespace-collapsed.

    Returns ``{"deterministic-alternative-used": [...], "raises-in-deterministic-mode": [...]}``
    (the "will act deterministically" and the "will throw a RuntimeError" lists). Empty lists
    when the docstring no longer has those sections.
    """
    if doc is None:
        import torch

        doc = torch.use_deterministic_algorithms.__doc__ or ""
    starts = (
        re.search(r"will\s+act\s+deterministically\s+when\s+``mode=True``:", doc),
        re.search(r"will\s+throw\s+a\s+:class:`RuntimeError`\s+when\s+``mode=True``:", doc),
        re.search(r"In\s+addition,\s+several\s+operations", doc),
    )
    out: dict[str, list[str]] = {}
    sections = (("deterministic-alternative-used", 0, 1), ("raises-in-deterministic-mode", 1, 2))
    for name, i, j in sections:
        a, b = starts[i], starts[j]
        if a is None or b is None:
            out[name] = []
            continue
        text = doc[a.end() : b.start()]
        cut = text.rfind("The following")
        if cut >= 0:
            text = text[:cut]
        parts = re.split(r"\n\s*\*\s+", "\n" + text)
        out[name] = [" ".join(p.split()) for p in parts[1:] if p.strip()]
    return out


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("+")[0].split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def version_in_range(version: str, spec: str) -> bool:
    """``"2.13.0+cpu"`` in ``">=2.13,<2.14"``? (comma-separated ``>= > <= < == !=`` clauses on
    numeric release parts; local labels and pre-release suffixes are ignored)."""
    v = _version_tuple(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.match(r"(>=|<=|==|!=|>|<)\s*(.+)", clause)
        if not m:
            raise ValueError(f"unsupported version clause {clause!r} in {spec!r}")
        op, bound = m.group(1), _version_tuple(m.group(2))
        n = max(len(v), len(bound))
        a, b = v + (0,) * (n - len(v)), bound + (0,) * (n - len(bound))
        ok = {
            ">=": a >= b,
            "<=": a <= b,
            "==": a == b,
            "!=": a != b,
            ">": a > b,
            "<": a < b,
        }[op]
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------------------------
# findings


@dataclass
class CallSite:
    """One user line that (directly or through backward) runs a risky op."""

    source: str  # the user line: the forward call for backward kernels when it is known
    module_path: str
    count: int
    via: str  # "forward" | "backward" | "backward, linked by op name" | "if differentiated"
    backward_source: str | None = None  # the backward() line, for backward kernels


@dataclass
class RiskFinding:
    """A risky op seen in the trace, grouped over all its calls."""

    op: str  # aten op as seen, e.g. "aten::upsample_bilinear2d_backward"
    entry_id: str
    api: str
    behaviour: str
    devices: tuple[str, ...]
    alternative: str
    count: int
    call_sites: list[CallSite]
    first_event: int
    certainty: str = "seen"  # "seen" | "if-differentiated" (forward ran with grad, no backward)
    doc_items: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        dev = "/".join(d.upper() for d in self.devices)
        what = {
            "deterministic-alternative-used": "nondeterministic by default; "
            "torch.use_deterministic_algorithms(True) switches to a deterministic algorithm",
            "raises-in-deterministic-mode": "nondeterministic, no deterministic kernel: "
            "torch.use_deterministic_algorithms(True) raises",
            "nondeterministic": "nondeterministic",
        }.get(self.behaviour, self.behaviour)
        pending = " (will run when this is differentiated)" if self.certainty != "seen" else ""
        lines = [f"{self.op} [{self.api}] on {dev}: {what}{pending}; {self.count} call(s):"]
        for s in self.call_sites:
            mod = f" [{s.module_path}]" if s.module_path else ""
            back = f" (backward at {s.backward_source})" if s.backward_source else ""
            lines.append(f"    {s.count}x {s.source}{mod} via {s.via}{back}")
        lines.append(f"  alternative: {self.alternative}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def format_findings(findings: Sequence[RiskFinding]) -> str:
    if not findings:
        return "No op of this trace is listed as nondeterministic on the device."
    return "\n".join(str(f) for f in findings)


def _index(entries: list[OpEntry], forward: bool) -> dict[str, list[OpEntry]]:
    idx: dict[str, list[OpEntry]] = {}
    for entry in entries:
        for op in entry.forward_ops if forward else entry.aten_ops:
            idx.setdefault(op, []).append(entry)
    return idx


class _Groups:
    """Findings being collected, one per (entry, op as seen)."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, entry: OpEntry, op: str, e: OpEvent, site: tuple, certainty: str) -> None:
        g = self.groups.get((entry.id, op))
        if g is None:
            g = self.groups[(entry.id, op)] = {
                "entry": entry,
                "op": op,
                "count": 0,
                "sites": {},
                "first": e.index,
                "certainty": certainty,
            }
        g["count"] += 1
        g["sites"][site] = g["sites"].get(site, 0) + 1
        if certainty == "seen":
            g["certainty"] = "seen"

    def findings(self, version_notes: list[str]) -> list[RiskFinding]:
        out = []
        for g in sorted(self.groups.values(), key=lambda g: g["first"]):
            entry: OpEntry = g["entry"]
            sites = [
                CallSite(source=k[0], module_path=k[1], count=n, via=k[2], backward_source=k[3])
                for k, n in g["sites"].items()
            ]
            notes = list(version_notes) + ([entry.notes] if entry.notes else [])
            out.append(
                RiskFinding(
                    op=g["op"],
                    entry_id=entry.id,
                    api=entry.api,
                    behaviour=entry.behaviour,
                    devices=entry.devices,
                    alternative=entry.alternative,
                    count=g["count"],
                    call_sites=sites,
                    first_event=g["first"],
                    certainty=g["certainty"],
                    doc_items=entry.doc_items,
                    notes=notes,
                )
            )
        return out


def audit(
    events: Any,
    torch_version: str | None = None,
    *,
    device: str | None = "cuda",
    table: OpTable | None = None,
    traced_on: str | None = None,
) -> list[RiskFinding]:
    """Risky ops of a trace on ``device`` ("cuda" default; "cpu"; ``None``: any), grouped by op.

    ``events``: an :class:`~repro_check.trace.tracer.OpTracer` or its list of events. Each
    finding lists the user lines that run the op, with counts. For backward kernels the line
    is the forward call behind them (``via="backward"``; the ``backward()`` line is kept in
    ``backward_source``); forward ops that ran with grad but whose backward was not traced are
    reported with ``certainty="if-differentiated"``. ``traced_on``: the device the trace was
    taken on (a tracer knows: ``OpTracer.traced_on``); rows standing in for CUDA kernels in a
    CPU trace (attention's CPU kernel and math path) apply only to CPU traces. Unknown (a
    plain list of events): every row.
    """
    traced_on = traced_on or getattr(events, "traced_on", None)
    events: Sequence[OpEvent] = getattr(events, "events", events)
    table = table or load_table()
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    entries = table.entries_for(device, traced_on)
    by_op, by_fwd = _index(entries, forward=False), _index(entries, forward=True)
    version_notes: list[str] = []
    if not version_in_range(torch_version, table.valid_for):
        version_notes.append(
            f"this list was checked for torch {table.valid_for} ({table.source}); torch "
            f"{torch_version} may differ: see help(torch.use_deterministic_algorithms)"
        )
    groups = _Groups()
    linked_forward: set[int] = set()
    for e in events:
        cands = by_op.get(e.qualname, []) + (by_op.get(e.op, []) if e.overload != "default" else [])
        entry = next((c for c in cands if c.applies_to(e)), None)  # the first that applies
        if entry is None:
            continue
        op = e.qualname
        if not e.is_backward:
            groups.add(entry, op, e, (e.source, e.module_path, "forward", None), "seen")
        elif 0 <= e.forward_index < len(events):
            fwd = events[e.forward_index]
            linked_forward.add(fwd.index)
            groups.add(entry, op, e, (fwd.source, fwd.module_path, "backward", e.source), "seen")
        else:
            fwd_ops = set(entry.forward_ops)
            fwds = [f for f in events if f.op in fwd_ops or f.qualname in fwd_ops]
            linked_forward.update(f.index for f in fwds)
            for src, mod in {(f.source, f.module_path) for f in fwds}:
                site = (src, mod, "backward, linked by op name", e.source)
                groups.add(entry, op, e, site, "seen")
            if not fwds:
                groups.add(entry, op, e, (e.source, e.module_path, "backward", e.source), "seen")

    # forward ops that will be differentiated, but whose backward was not in the trace
    for e in events:
        if e.is_backward or not e.requires_grad or e.index in linked_forward:
            continue
        for entry in by_fwd.get(e.qualname, []) + by_fwd.get(e.op, []):
            if "backward" in entry.phase and entry.applies_to_forward(e):
                site = (e.source, e.module_path, "if differentiated", None)
                groups.add(entry, e.qualname, e, site, "if-differentiated")
                break
    return groups.findings(version_notes)


# --------------------------------------------------------------------------------------------
# asking PyTorch


@dataclass
class DeterminismAlert:
    """One nondeterminism alert PyTorch emitted (``alertNotDeterministic`` or an attention
    kernel's "defaults to a non-deterministic algorithm")."""

    kernel: str  # e.g. "max_unpooling2d_forward_out"
    message: str
    source: str  # user line (innermost frame outside torch / repro_check / stdlib)


def alerts_under_deterministic_mode(
    fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> list[DeterminismAlert]:
    """Run ``fn(*args, **kwargs)`` under ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` and return the alerts it triggered; the previous flags are restored.

    Beware: deterministic mode also changes what some ops compute (other algorithms, e.g.
    CPU ``index_put_(accumulate=True)``) and fills new memory with NaN, so ``fn``'s results may
    differ from a normal run; its return value is discarded. Exceptions propagate (after the
    flags are restored).
    """
    import torch

    prev_mode = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    alerts: list[DeterminismAlert] = []
    locator = SourceLocator()

    with warnings.catch_warnings():
        original = warnings.showwarning
        for pattern in ALERT_WARNING_PATTERNS:  # every alert, not only the first per line
            warnings.filterwarnings("always", message=pattern)

        def hook(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            text = str(message)
            kernel = nondeterminism_alert(text)
            if kernel is not None:
                alerts.append(DeterminismAlert(kernel, text, locator.locate(sys._getframe(1))))
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = hook
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            fn(*args, **kwargs)
        finally:
            torch.use_deterministic_algorithms(prev_mode, warn_only=prev_warn)
    return alerts
