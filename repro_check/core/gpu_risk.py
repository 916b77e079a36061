"""Which ops of a (CPU) run would be nondeterministic on CUDA, and which lines call them.

The knowledge lives in data, not code: ``repro_check/data/cuda_nondeterminism.json`` lists the
ops that the docstring of ``torch.use_deterministic_algorithms`` (installed torch) names as
normally nondeterministic, mapped to the aten ops a trace shows, with the device(s), the
behaviour under ``torch.use_deterministic_algorithms(True)`` ("deterministic-alternative-used"
or "raises-in-deterministic-mode"), the documented alternative and the torch range the list was
checked for. :func:`docstring_items` parses the installed docstring so a test can fail loudly
when a torch upgrade changes the list.

:func:`audit` maps the events of an :class:`~repro_check.core.optrace.OpTracer` trace to
entries of that table. Backward kernels (``aten::upsample_bilinear2d_backward``) are seen when
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

import functools
import json
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from repro_check.core.optrace import OpEvent, OpTracer

__all__ = [
    "CallSite",
    "DeterminismAlert",
    "RiskFinding",
    "alerts_under_deterministic_mode",
    "audit",
    "docstring_items",
    "format_findings",
    "load_table",
    "version_in_range",
]

TABLE_SCHEMA = "repro-check/cuda-nondeterminism"
TABLE_SCHEMA_VERSION = 1
BEHAVIOURS = ("deterministic-alternative-used", "raises-in-deterministic-mode", "nondeterministic")
CONDITION_KEYS = {
    "flag",
    "equals",
    "not_equals",
    "in",
    "overloads",
    "input_layout",
    "min_tensor_inputs",
    "output_dtype_kind",
    "input_dtype_prefix",
}


# --------------------------------------------------------------------------------------------
# the table


@functools.lru_cache(maxsize=4)
def _load(path: str | None) -> dict[str, Any]:
    if path is None:
        text = resources.files("repro_check").joinpath("data/cuda_nondeterminism.json").read_text()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    table = json.loads(text)
    if table.get("schema") != TABLE_SCHEMA:
        raise ValueError(f"{path or 'cuda_nondeterminism.json'}: not a {TABLE_SCHEMA} table")
    if int(table.get("schema_version", 0)) > TABLE_SCHEMA_VERSION:
        raise ValueError(
            f"cuda_nondeterminism.json has schema_version {table['schema_version']}, newer than "
            f"this repro-check understands ({TABLE_SCHEMA_VERSION}): upgrade repro-check"
        )
    return table


def load_table(path: str | None = None) -> dict[str, Any]:
    """The parsed CUDA nondeterminism table (the packaged one unless ``path`` is given)."""
    return _load(path)


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


def _dtype_kind(dtype: str) -> str:
    if dtype.startswith("complex"):
        return "complex"
    if dtype.startswith(("float", "bfloat", "half", "double")):
        return "floating"
    return "other"


def _condition_holds(cond: dict[str, Any] | None, e: OpEvent) -> bool:
    if not cond:
        return True
    if "flag" in cond:
        flags = e.flag_dict()
        if cond["flag"] not in flags:
            return False
        v = flags[cond["flag"]]
        if "equals" in cond and v != cond["equals"]:
            return False
        if "not_equals" in cond and v == cond["not_equals"]:
            return False
        if "in" in cond and v not in cond["in"]:
            return False
    if "overloads" in cond and e.overload not in cond["overloads"]:
        return False
    if "input_layout" in cond and not any(
        s.cls and s.cls.startswith(cond["input_layout"]) for s in e.inputs
    ):
        return False
    if "min_tensor_inputs" in cond and len(e.inputs) < cond["min_tensor_inputs"]:
        return False
    if "output_dtype_kind" in cond:
        if not e.outputs or _dtype_kind(e.outputs[0].dtype) not in cond["output_dtype_kind"]:
            return False
    if "input_dtype_prefix" in cond and not any(
        s.dtype.startswith(cond["input_dtype_prefix"]) for s in e.inputs
    ):
        return False
    return True


def _forward_condition_holds(cond: dict[str, Any] | None, e: OpEvent) -> bool:
    """Conditions on a forward op standing in for its backward: only flags it has count."""
    if not cond or "flag" not in cond or cond["flag"] not in e.flag_dict():
        return True
    keys = ("flag", "equals", "not_equals", "in")
    return _condition_holds({k: v for k, v in cond.items() if k in keys}, e)


def _index(entries: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    idx: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        for op in entry.get(key, ()):
            idx.setdefault(op, []).append(entry)
    return idx


def audit(
    events: OpTracer | Sequence[OpEvent],
    torch_version: str | None = None,
    *,
    device: str | None = "cuda",
    table: dict[str, Any] | None = None,
) -> list[RiskFinding]:
    """Risky ops of a trace on ``device`` ("cuda" default; "cpu"; ``None``: any), grouped by op.

    Each finding lists the user lines that run the op, with counts. For backward kernels the
    line is the forward call behind them (``via="backward"``; the ``backward()`` line is kept in
    ``backward_source``); forward ops that ran with grad but whose backward was not traced are
    reported with ``certainty="if-differentiated"``.
    """
    if isinstance(events, OpTracer):
        events = events.events
    if table is None:
        table = load_table()
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    entries = [e for e in table["entries"] if device is None or device in e["devices"]]
    by_op = _index(entries, "aten_ops")
    by_fwd = _index(entries, "forward_ops")
    version_notes: list[str] = []
    if not version_in_range(torch_version, table.get("valid_for", ">=0")):
        version_notes.append(
            f"this list was checked for torch {table.get('valid_for')} "
            f"({table.get('source', '')}); torch {torch_version} may differ: see "
            "help(torch.use_deterministic_algorithms)"
        )

    groups: dict[tuple[str, str], dict[str, Any]] = {}
    linked_forward: set[int] = set()

    def add(entry: dict[str, Any], op: str, e: OpEvent, site_key: tuple, certainty: str) -> None:
        g = groups.get((entry["id"], op))
        if g is None:
            g = groups[(entry["id"], op)] = {
                "entry": entry,
                "op": op,
                "count": 0,
                "sites": {},
                "first": e.index,
                "certainty": certainty,
            }
        g["count"] += 1
        g["sites"][site_key] = g["sites"].get(site_key, 0) + 1
        if certainty == "seen":
            g["certainty"] = "seen"

    for e in events:
        cands = by_op.get(e.qualname, []) + (by_op.get(e.op, []) if e.overload != "default" else [])
        for entry in cands:
            if not _condition_holds(entry.get("condition"), e):
                continue
            op = e.qualname
            if e.is_backward:
                if 0 <= e.forward_index < len(events):
                    fwd = events[e.forward_index]
                    linked_forward.add(fwd.index)
                    add(entry, op, e, (fwd.source, fwd.module_path, "backward", e.source), "seen")
                else:
                    fwd_ops = set(entry.get("forward_ops", ()))
                    fwds = [f for f in events if f.op in fwd_ops or f.qualname in fwd_ops]
                    if fwds:
                        linked_forward.update(f.index for f in fwds)
                        for f in {(f.source, f.module_path) for f in fwds}:
                            via = "backward, linked by op name"
                            add(entry, op, e, (f[0], f[1], via, e.source), "seen")
                    else:
                        add(entry, op, e, (e.source, e.module_path, "backward", e.source), "seen")
            else:
                add(entry, op, e, (e.source, e.module_path, "forward", None), "seen")
            break  # one entry per event: the first that applies

    # forward ops that will be differentiated, but whose backward was not in the trace
    for e in events:
        if e.is_backward or not e.requires_grad or e.index in linked_forward:
            continue
        for entry in by_fwd.get(e.qualname, []) + by_fwd.get(e.op, []):
            if "backward" not in entry["phase"]:
                continue
            if not _forward_condition_holds(entry.get("condition"), e):
                continue
            site = (e.source, e.module_path, "if differentiated", None)
            add(entry, e.qualname, e, site, "if-differentiated")
            break

    findings = []
    for g in sorted(groups.values(), key=lambda g: g["first"]):
        entry = g["entry"]
        sites = [
            CallSite(source=k[0], module_path=k[1], count=n, via=k[2], backward_source=k[3])
            for k, n in g["sites"].items()
        ]
        notes = list(version_notes)
        if entry.get("notes"):
            notes.append(entry["notes"])
        findings.append(
            RiskFinding(
                op=g["op"],
                entry_id=entry["id"],
                api=entry["api"],
                behaviour=entry["behaviour"],
                devices=tuple(entry["devices"]),
                alternative=entry["alternative"],
                count=g["count"],
                call_sites=sites,
                first_event=g["first"],
                certainty=g["certainty"],
                doc_items=tuple(entry.get("doc_items", ())),
                notes=notes,
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# asking PyTorch


@dataclass
class DeterminismAlert:
    """One ``alertNotDeterministic`` warning PyTorch emitted."""

    kernel: str  # e.g. "max_unpooling2d_forward_out"
    message: str
    source: str  # user line (innermost frame outside torch / repro_check / stdlib)


_ALERT_RE = re.compile(r"does not have a deterministic implementation")


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

    from repro_check.core.optrace import _display_path, _internal_code, _is_internal_file

    prev_mode = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    alerts: list[DeterminismAlert] = []

    def user_line() -> str:
        f = sys._getframe(2)
        while f is not None:
            code = f.f_code
            internal = _internal_code.get(code)
            if internal is None:
                internal = _internal_code[code] = _is_internal_file(code.co_filename)
            if not internal:
                return f"{_display_path(code.co_filename)}:{f.f_lineno} in {code.co_name}"
            f = f.f_back
        return "<unknown>"

    with warnings.catch_warnings():
        original = warnings.showwarning
        warnings.filterwarnings("always", message=r".*does not have a deterministic implementation")

        def hook(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            text = str(message)
            if _ALERT_RE.search(text):
                kernel = text.split(" does not have", 1)[0].strip()
                alerts.append(DeterminismAlert(kernel, text, user_line()))
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = hook
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            fn(*args, **kwargs)
        finally:
            torch.use_deterministic_algorithms(prev_mode, warn_only=prev_warn)
    return alerts
