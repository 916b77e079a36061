"""The one table of op knowledge: which aten ops are nondeterministic where, and what to do.

The data lives in ``repro_check/data/op_knowledge.json``; this module loads it into typed
records and answers the two questions asked of it:

* the CUDA audit (:mod:`repro_check.trace.audit`): which events of a trace run a risky kernel
  on a device (:meth:`OpTable.entries_for`, :meth:`OpEntry.applies_to`);
* the localisation (:mod:`repro_check.trace.diff`): what to advise for an op that gave different
  outputs for equal inputs (:meth:`OpTable.advice_for`).

It also holds the wording PyTorch uses when an op has no deterministic kernel
(:func:`nondeterminism_alert`), shared by the audit and by explaining deterministic-mode errors.
No torch at import.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from repro_check.core.atomic import StoredFileError

if TYPE_CHECKING:
    from repro_check.trace.events import OpEvent

__all__ = [
    "ALERT_WARNING_PATTERNS",
    "BEHAVIOURS",
    "CONDITION_KEYS",
    "NO_DETERMINISTIC_IMPLEMENTATION",
    "TABLE_SCHEMA",
    "OpEntry",
    "OpTable",
    "advice_for",
    "load_table",
    "nondeterminism_alert",
]

TABLE_SCHEMA = "repro-check/op-knowledge"
TABLE_SCHEMA_VERSION = 1
BEHAVIOURS = ("deterministic-alternative-used", "raises-in-deterministic-mode", "nondeterministic")
PHASES = ("forward", "backward", "forward+backward")
DEVICES = ("cpu", "cuda")
CONDITION_KEYS = frozenset(
    {
        "flag",
        "equals",
        "not_equals",
        "in",
        "overloads",
        "input_layout",
        "min_tensor_inputs",
        "output_dtype_kind",
        "input_dtype_prefix",
        "autograd_node",
    }
)
_FLAG_KEYS = ("flag", "equals", "not_equals", "in")

_NO_DETERMINISTIC = "does not have a deterministic implementation"
_DEFAULTS_NONDETERMINISTIC = "defaults to a non-deterministic algorithm"
_BECAUSE_IT_USES = "is not deterministic because it uses"
#: What PyTorch says when an op has no deterministic kernel (error, or warning with
#: ``warn_only=True``): ``"<kernel> does not have a deterministic implementation, but ..."``.
NO_DETERMINISTIC_IMPLEMENTATION = re.compile(rf"(\w+) {_NO_DETERMINISTIC}")
_ALERTS = (
    NO_DETERMINISTIC_IMPLEMENTATION,
    # the attention kernels under warn_only=True (they have a deterministic mode)
    re.compile(rf"^(.+?) {_DEFAULTS_NONDETERMINISTIC}"),
    # cuBLAS without CUBLAS_WORKSPACE_CONFIG ("... this operation is not deterministic
    # because it uses CuBLAS and you have not set ...")
    re.compile(rf"{_BECAUSE_IT_USES} (\w+)"),
)
#: ``warnings.filterwarnings(message=...)`` patterns matching every kind of alert.
ALERT_WARNING_PATTERNS = tuple(
    f".*{phrase}" for phrase in (_NO_DETERMINISTIC, _DEFAULTS_NONDETERMINISTIC, _BECAUSE_IT_USES)
)


def nondeterminism_alert(text: str) -> str | None:
    """The kernel a PyTorch nondeterminism alert (error or warning text) names, else ``None``:
    ``"max_unpooling2d_forward_out"``, ``"Memory Efficient attention"``, ``"CuBLAS"``."""
    for pattern in _ALERTS:
        m = pattern.search(text)
        if m:
            return m.group(1).strip()
    return None


@dataclass(frozen=True)
class OpEntry:
    """One row of the table: a family of aten ops, where and how it is nondeterministic."""

    id: str
    behaviour: str  # one of BEHAVIOURS
    api: str  # the user-facing API, e.g. "torch.nn.functional.interpolate"
    aten_ops: tuple[str, ...]  # what a trace shows ("aten::op" or "aten::op.overload")
    forward_ops: tuple[str, ...]  # forward ops whose backward is in aten_ops
    phase: str  # one of PHASES
    devices: tuple[str, ...]
    alternative: str  # the deterministic alternative, in words
    valid_for: str  # torch versions the row was checked for, e.g. ">=2.13,<2.14"
    condition: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    doc_items: tuple[str, ...] = ()  # items of torch.use_deterministic_algorithms' docstring
    alerts: tuple[str, ...] = ()  # message fragments PyTorch emits for these kernels
    traced_on: tuple[str, ...] = DEVICES  # devices whose traces show these ops for the risk

    def applies_to(self, event: OpEvent) -> bool:
        """Does this row's condition hold for ``event`` (its flags, overload, inputs)?"""
        return _holds(self.condition, event)

    def applies_to_forward(self, event: OpEvent) -> bool:
        """For a forward op standing in for its backward: only flag conditions can be read."""
        cond = self.condition
        if "flag" not in cond or cond["flag"] not in event.flag_dict():
            return True
        return _holds({k: v for k, v in cond.items() if k in _FLAG_KEYS}, event)


@dataclass(frozen=True, eq=False)
class OpTable:
    """The whole table (see ``repro_check/data/op_knowledge.json``)."""

    entries: tuple[OpEntry, ...]
    valid_for: str
    source: str
    behaviours: Mapping[str, str]
    generic_advice: str
    _by_op: dict[str, list[OpEntry]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, list[OpEntry]] = {}
        for entry in self.entries:
            for op in entry.aten_ops:
                index.setdefault(op, []).append(entry)
        object.__setattr__(self, "_by_op", index)

    def entries_for(self, device: str | None, traced_on: str | None = None) -> list[OpEntry]:
        """Rows that apply on ``device`` ("cuda", "cpu"; ``None``: all) to a trace taken on
        ``traced_on`` (``None``: unknown, every row)."""
        return [
            e
            for e in self.entries
            if (device is None or device in e.devices)
            and (traced_on is None or traced_on in e.traced_on)
        ]

    def matching(self, event: OpEvent) -> list[OpEntry]:
        """Rows naming ``event``'s op (by qualified name or bare name) whose condition holds."""
        named = self._by_op.get(event.qualname, [])
        if event.overload != "default":
            named = named + self._by_op.get(event.op, [])
        return [e for e in named if e.applies_to(event)]

    def advice_for(self, event: OpEvent) -> str:
        """What to do about ``event``'s op, which gave different outputs for equal inputs."""
        found = list({e.id: e for e in self.matching(event)}.values())
        if not found:
            return self.generic_advice
        if len(found) == 1:
            return found[0].alternative
        return "; ".join(
            f"on {'/'.join(d.upper() for d in e.devices)}: {e.alternative}" for e in found
        )


def _dtype_kind(dtype: str) -> str:
    if dtype.startswith("complex"):
        return "complex"
    if dtype.startswith(("float", "bfloat", "half", "double")):
        return "floating"
    return "other"


def _holds(cond: Mapping[str, Any], e: OpEvent) -> bool:
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
    if "output_dtype_kind" in cond and (
        not e.outputs or _dtype_kind(e.outputs[0].dtype) not in cond["output_dtype_kind"]
    ):
        return False
    if "input_dtype_prefix" in cond and not any(
        s.dtype.startswith(cond["input_dtype_prefix"]) for s in e.inputs
    ):
        return False
    if "autograd_node" in cond and not (
        e.autograd_node and e.autograd_node.startswith(tuple(cond["autograd_node"]))
    ):
        return False
    return True


# --------------------------------------------------------------------------------------------
# loading


def _strings(value: Any, where: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StoredFileError(f"{where}: expected a list of strings, found {value!r}")
    if not value and not allow_empty:
        raise StoredFileError(f"{where}: must not be empty")
    return tuple(value)


def _entry(raw: Any, name: str, position: int) -> OpEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise StoredFileError(f"{name}: entry {position} is not an object with an 'id'")
    where = f"{name}: entry {raw['id']!r}"
    for key in ("behaviour", "api", "phase", "alternative", "valid_for"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise StoredFileError(f"{where}: missing or empty {key!r}")
    if raw["behaviour"] not in BEHAVIOURS:
        raise StoredFileError(f"{where}: behaviour {raw['behaviour']!r} not in {BEHAVIOURS}")
    if raw["phase"] not in PHASES:
        raise StoredFileError(f"{where}: phase {raw['phase']!r} not in {PHASES}")
    devices = _strings(raw.get("devices"), f"{where} devices", allow_empty=False)
    if not set(devices) <= set(DEVICES):
        raise StoredFileError(f"{where}: devices {devices} not within {DEVICES}")
    condition = raw.get("condition") or {}
    if not isinstance(condition, dict) or not set(condition) <= CONDITION_KEYS:
        raise StoredFileError(
            f"{where}: condition keys {sorted(condition)} not within {sorted(CONDITION_KEYS)}"
        )
    doc_items = _strings(raw.get("doc_items", []), f"{where} doc_items")
    alerts = _strings(raw.get("alerts", []), f"{where} alerts")
    traced_on = _strings(raw.get("traced_on", list(DEVICES)), f"{where} traced_on")
    if not set(traced_on) <= set(DEVICES):
        raise StoredFileError(f"{where}: traced_on {traced_on} not within {DEVICES}")
    if not doc_items and not alerts:
        raise StoredFileError(
            f"{where}: says neither which docstring items (doc_items) nor which PyTorch "
            "alerts (alerts) it comes from"
        )
    return OpEntry(
        id=raw["id"],
        behaviour=raw["behaviour"],
        api=raw["api"],
        aten_ops=_strings(raw.get("aten_ops"), f"{where} aten_ops", allow_empty=False),
        forward_ops=_strings(raw.get("forward_ops", []), f"{where} forward_ops"),
        phase=raw["phase"],
        devices=devices,
        alternative=raw["alternative"],
        valid_for=raw["valid_for"],
        condition=condition,
        notes=str(raw.get("notes", "")),
        doc_items=doc_items,
        alerts=alerts,
        traced_on=traced_on,
    )


@functools.lru_cache(maxsize=4)
def load_table(path: str | None = None) -> OpTable:
    """The op knowledge table: the packaged one unless ``path`` is given. Every row is
    checked; a malformed file raises :class:`~repro_check.core.atomic.StoredFileError`."""
    name = path or "op_knowledge.json"
    if path is None:
        text = resources.files("repro_check").joinpath("data/op_knowledge.json").read_text()
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise StoredFileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoredFileError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("schema") != TABLE_SCHEMA:
        raise StoredFileError(f"{name}: not a {TABLE_SCHEMA!r} table")
    version = raw.get("schema_version")
    if not isinstance(version, int) or version > TABLE_SCHEMA_VERSION:
        raise StoredFileError(
            f"{name}: schema_version {version!r} is not one this repro-check understands "
            f"(<= {TABLE_SCHEMA_VERSION}): upgrade repro-check"
        )
    entries = tuple(_entry(e, name, i) for i, e in enumerate(raw.get("entries") or []))
    ids = [e.id for e in entries]
    if len(ids) != len(set(ids)):
        raise StoredFileError(
            f"{name}: duplicate entry ids {sorted({i for i in ids if ids.count(i) > 1})}"
        )
    return OpTable(
        entries=entries,
        valid_for=str(raw.get("valid_for", ">=0")),
        source=str(raw.get("source", "")),
        behaviours=dict(raw.get("behaviours") or {}),
        generic_advice=str(raw["generic_advice"]),
    )


def advice_for(event: OpEvent, table: OpTable | None = None) -> str:
    """:meth:`OpTable.advice_for` on the packaged table."""
    return (table or load_table()).advice_for(event)


def alert_entries(kernel: str, table: OpTable | None = None) -> Sequence[OpEntry]:
    """Rows whose ``alerts`` mention ``kernel`` (a name from :func:`nondeterminism_alert`)."""
    return [e for e in (table or load_table()).entries if any(kernel in a for a in e.alerts)]
