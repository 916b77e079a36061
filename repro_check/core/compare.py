"""Compare what two replicas recorded: structure first, then bits, then the numbers.

``compare_runs`` walks two :class:`RunRecord` step by step. A different number or order of steps
or keys, or a dtype/shape change, is a *structural* mismatch and is reported first (the runs did
different things). Otherwise the first step and key whose fingerprints differ is the *first
divergence*; when both replicas spilled the tensor, :func:`tensor_diff` gives the element-level
detail and the growth table shows how the difference evolves over the later steps.

:class:`Mismatch` (built by :func:`find_mismatch`) is the one mismatch formatter, in
``torch.testing.assert_close``'s words, for replica diffs, allowance checks
(:func:`within_tolerance`) and baseline deltas. The float64 rule
(:func:`~repro_check.core.fp64_rule.judge_against_fp64`) is imported here with its multipliers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.fp64_rule import (  # the float64 rule lives beside; imported from here
    FP64_FLOOR_EPS,
    FP64_MULTIPLIER,
    FP64_MULTIPLIER_FEW,
    FP64_MULTIPLIER_HALF,
    FP64_MULTIPLIER_SCALAR,
    Fp64Judgement,
    fp64_multiplier,
    judge_against_fp64,
)
from repro_check.core.record import Entry, RunRecord
from repro_check.core.spill import read_spilled

if TYPE_CHECKING:
    import torch

__all__ = [
    "FP64_FLOOR_EPS",
    "FP64_MULTIPLIER",
    "FP64_MULTIPLIER_FEW",
    "FP64_MULTIPLIER_HALF",
    "FP64_MULTIPLIER_SCALAR",
    "GROWTH_ROWS",
    "Comparison",
    "Divergence",
    "Fp64Judgement",
    "GrowthRow",
    "Mismatch",
    "StructuralMismatch",
    "TensorDiff",
    "ToleranceCheck",
    "compare_runs",
    "find_mismatch",
    "fp64_multiplier",
    "judge_against_fp64",
    "tensor_diff",
    "within_tolerance",
]

#: Rows of the growth table (first rows, then evenly spaced up to the last step).
GROWTH_ROWS = 8


@dataclass
class Mismatch:
    """How ``other`` differs from ``reference``: how many elements, and where the greatest
    absolute and relative differences are.

    The one mismatch formatter of repro-check: :meth:`lines` speaks ``torch.testing.assert_close``'s
    words (``Mismatched elements: 3 / 100 (3.0%)``, ``Greatest absolute difference: ... at index
    (..)``, ``Greatest relative difference: ...``) for replica diffs, allowance checks and baseline
    deltas alike. An index is a tensor index, or a label (``"norm"``) for named quantities.
    """

    numel: int
    mismatched: int
    max_abs: float
    max_abs_index: tuple[int, ...] | str
    max_rel: float
    max_rel_index: tuple[int, ...] | str
    reference_value: float
    other_value: float
    nan_mismatched: int = 0
    atol: float = 0.0
    rtol: float = 0.0
    noun: str = "elements"

    @property
    def mismatched_percent(self) -> float:
        return 100.0 * self.mismatched / self.numel if self.numel else 0.0

    def lines(self, indent: str = "") -> list[str]:
        """The mismatch in assert_close's words; "(up to X allowed)" only under tolerances."""
        equality = self.atol == 0 and self.rtol == 0
        abs_allowed = "" if equality else f" (up to {self.atol:g} allowed)"
        rel_allowed = "" if equality else f" (up to {self.rtol:g} allowed)"
        lines = [
            f"{indent}Mismatched {self.noun}: {self.mismatched} / {self.numel} "
            f"({self.mismatched_percent:.1f}%)",
            f"{indent}Greatest absolute difference: {self.max_abs:.3g} "
            f"{_location(self.max_abs_index)} ({self.reference_value!r} vs "
            f"{self.other_value!r}){abs_allowed}",
            f"{indent}Greatest relative difference: {self.max_rel:.3g} "
            f"{_location(self.max_rel_index)}{rel_allowed}",
        ]
        if self.nan_mismatched:
            lines.append(f"{indent}NaN on one side only: {self.nan_mismatched} {self.noun}")
        return lines

    def describe(self, indent: str = "    ") -> str:
        return "\n".join(self.lines(indent))

    def to_json(self) -> dict[str, Any]:
        return {
            "numel": self.numel,
            "mismatched": self.mismatched,
            "mismatched_percent": round(self.mismatched_percent, 4),
            "max_abs": _json_float(self.max_abs),
            "max_abs_index": _json_index(self.max_abs_index),
            "max_rel": _json_float(self.max_rel),
            "max_rel_index": _json_index(self.max_rel_index),
            "reference_value": _json_float(self.reference_value),
            "other_value": _json_float(self.other_value),
            "nan_mismatched": self.nan_mismatched,
        }


#: The element-level difference of two tensors (a :class:`Mismatch` over every element).
TensorDiff = Mismatch


def _json_float(x: float) -> float | str:
    return x if np.isfinite(x) else repr(x)


def _json_index(index: tuple[int, ...] | str) -> list[int] | str:
    return index if isinstance(index, str) else list(index)


def _format_index(index: tuple[int, ...]) -> str:
    return "()" if not index else "(" + ", ".join(map(str, index)) + ")"


def _location(index: tuple[int, ...] | str) -> str:
    return index if isinstance(index, str) else f"at index {_format_index(index)}"


def find_mismatch(
    reference: Any,
    other: Any,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    shape: tuple[int, ...] | None = None,
    labels: Sequence[str] | None = None,
    scale: Any = None,
    differs: np.ndarray | None = None,
    noun: str = "elements",
) -> Mismatch:
    """Compare two equally long sequences of numbers (real or complex) element by element.

    An element mismatches when not ``|other - reference| <= atol + rtol * |reference|``
    (assert_close's rule, NaN equal to NaN), or, when ``differs`` is given (the bitwise mask of a
    replica diff), where it says. ``scale`` replaces ``|reference|`` as the magnitude ``rtol``
    applies to (statistics such as a mean near zero are held to the data's RMS). Indices are
    unravelled into ``shape``, or given by ``labels`` (location phrases: ``"in norm"``).
    """
    a = np.asarray(reference).reshape(-1)
    b = np.asarray(other).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"find_mismatch needs equal lengths, got {a.size} and {b.size}")
    numel = int(a.size)
    if numel == 0:
        return Mismatch(0, 0, 0.0, (), 0.0, (), 0.0, 0.0, atol=atol, rtol=rtol, noun=noun)
    if not (np.iscomplexobj(a) or np.iscomplexobj(b)):
        a, b = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a - b)).astype(np.float64)
        diff[nan_a & nan_b] = 0.0
        diff[nan_a ^ nan_b] = np.inf
        if differs is not None:
            bad = np.asarray(differs, dtype=bool).reshape(-1)
            diff[~bad] = 0.0
        else:
            size = np.abs(a) if scale is None else np.asarray(scale, dtype=np.float64)
            bad = ~((diff == 0) | (diff <= atol + rtol * size))  # 0 * inf is NaN
        rel = np.where(diff == 0, 0.0, diff / np.abs(a))
    i_abs = int(np.argmax(diff))
    i_rel = int(np.argmax(np.nan_to_num(rel, nan=np.inf)))

    def where(i: int) -> tuple[int, ...] | str:
        if labels is not None:
            return labels[i]
        return _unravel(i, shape if shape is not None else (numel,))

    return Mismatch(
        numel=numel,
        mismatched=int(bad.sum()),
        max_abs=float(diff[i_abs]),
        max_abs_index=where(i_abs),
        max_rel=float(rel[i_rel]),
        max_rel_index=where(i_rel),
        reference_value=_real(a[i_abs]),
        other_value=_real(b[i_abs]),
        nan_mismatched=int((nan_a ^ nan_b).sum()),
        atol=atol,
        rtol=rtol,
        noun=noun,
    )


def _real(x: Any) -> float:
    """A value as shown: complex values by their magnitude."""
    return float(abs(x)) if np.iscomplexobj(x) else float(x)


def tensor_diff(reference: torch.Tensor, other: torch.Tensor) -> TensorDiff:
    """Bitwise mismatch count plus greatest absolute/relative difference and where it is."""
    import torch

    if reference.dtype != other.dtype or reference.shape != other.shape:
        raise ValueError(
            f"tensor_diff needs equal dtype and shape, got {reference.dtype}{tuple(reference.shape)}"
            f" and {other.dtype}{tuple(other.shape)}"
        )
    shape = tuple(reference.shape)
    if reference.numel() == 0:
        return find_mismatch(np.zeros(0), np.zeros(0), shape=shape)
    # A private, truly contiguous copy (tiny tensors may carry any stride).
    a = reference.detach().cpu().reshape(-1).clone(memory_format=torch.contiguous_format)
    b = other.detach().cpu().reshape(-1).clone(memory_format=torch.contiguous_format)
    if a.dtype == torch.bool:
        bits_a, bits_b = a, b
    else:
        width = a.element_size()
        bits_a, bits_b = (
            a.view(torch.uint8).reshape(-1, width),
            b.view(torch.uint8).reshape(-1, width),
        )
    differs = (bits_a != bits_b).reshape(a.numel(), -1).any(dim=1)
    wide = torch.complex128 if a.is_complex() else torch.float64
    return find_mismatch(
        _numpy(a.to(wide)), _numpy(b.to(wide)), shape=shape, differs=differs.numpy()
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.resolve_conj().resolve_neg().numpy()


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat_index, shape)) if shape else ()


@dataclass
class StructuralMismatch:
    """The replicas recorded different things: not comparable value by value."""

    kind: str  # "steps" | "keys" | "dtype" | "shape"
    message: str
    step: int | None = None
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "step": self.step, "key": self.key}


@dataclass
class GrowthRow:
    step: int
    keys_differing: int
    keys_total: int
    max_abs: float | None  # of the first divergent key, when both tensors were spilled
    metrics: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "keys_differing": self.keys_differing,
            "keys_total": self.keys_total,
            "max_abs": None if self.max_abs is None else _json_float(self.max_abs),
            "metrics": {k: [_opt(a), _opt(b)] for k, (a, b) in self.metrics.items()},
        }


def _opt(x: float | None) -> float | str | None:
    return None if x is None else _json_float(x)


@dataclass
class Divergence:
    """The first step and key at which two structurally equal runs differ."""

    step: int
    key: str
    dtype: str
    shape: tuple[int, ...]
    keys_differing: list[str]
    keys_total: int
    detail: TensorDiff | None
    detail_unavailable: str | None
    growth: list[GrowthRow]
    nonfinite: tuple[int, int, int, int]  # reference nan, inf; other nan, inf at that key

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "key": self.key,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "keys_differing": self.keys_differing,
            "keys_total": self.keys_total,
            "detail": self.detail.to_json() if self.detail else None,
            "detail_unavailable": self.detail_unavailable,
            "growth": [row.to_json() for row in self.growth],
        }


@dataclass
class Comparison:
    structural: StructuralMismatch | None = None
    divergence: Divergence | None = None

    @property
    def identical(self) -> bool:
        return self.structural is None and self.divergence is None


def compare_runs(reference: RunRecord, other: RunRecord) -> Comparison:
    """Compare two replicas' records; see the module docstring for the order of checks."""
    structural = _structural_mismatch(reference, other)
    if structural is not None:
        return Comparison(structural=structural)
    for index, (ref_step, other_step) in enumerate(zip(reference.steps, other.steps, strict=True)):
        differing = [
            key
            for key, entry in ref_step.entries.items()
            if not entry.fingerprint.same_bits(other_step.entries[key].fingerprint)
        ]
        if differing:
            return Comparison(divergence=_divergence(reference, other, index, differing))
    return Comparison()


def _structural_mismatch(reference: RunRecord, other: RunRecord) -> StructuralMismatch | None:
    ref_steps = [s.step for s in reference.steps]
    other_steps = [s.step for s in other.steps]
    if ref_steps != other_steps:
        position = next(
            (i for i, (a, b) in enumerate(zip(ref_steps, other_steps, strict=False)) if a != b),
            min(len(ref_steps), len(other_steps)),
        )
        return StructuralMismatch(
            "steps",
            f"the replicas recorded different steps: {len(ref_steps)} vs {len(other_steps)} "
            f"records; first difference at record #{position}: "
            f"{_at(ref_steps, position)} vs {_at(other_steps, position)}",
            step=ref_steps[position] if position < len(ref_steps) else None,
        )
    for ref_step, other_step in zip(reference.steps, other.steps, strict=True):
        ref_keys, other_keys = list(ref_step.entries), list(other_step.entries)
        if ref_keys != other_keys:
            missing = [k for k in ref_keys if k not in other_step.entries]
            extra = [k for k in other_keys if k not in ref_step.entries]
            if missing or extra:
                what = "; ".join(
                    part
                    for part in (
                        f"only in the reference: {_names(missing)}" if missing else "",
                        f"only in the other replica: {_names(extra)}" if extra else "",
                    )
                    if part
                )
            else:
                what = "same keys recorded in a different order"
            key = (missing or extra or [ref_keys[0]])[0]
            return StructuralMismatch(
                "keys",
                f"step {ref_step.step}: the replicas recorded different keys ({what})",
                step=ref_step.step,
                key=key,
            )
        for key, entry in ref_step.entries.items():
            a, b = entry.fingerprint, other_step.entries[key].fingerprint
            if a.dtype != b.dtype:
                return StructuralMismatch(
                    "dtype",
                    f"step {ref_step.step}, {key}: dtype {a.dtype} vs {b.dtype}",
                    ref_step.step,
                    key,
                )
            if a.shape != b.shape:
                return StructuralMismatch(
                    "shape",
                    f"step {ref_step.step}, {key}: shape {a.shape} vs {b.shape}",
                    ref_step.step,
                    key,
                )
    return None


def _at(values: list[int], position: int) -> str:
    return f"step {values[position]}" if position < len(values) else "(none)"


def _names(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _load_pair(a: Entry, b: Entry) -> tuple[torch.Tensor, torch.Tensor] | None:
    if a.spill is None or b.spill is None:
        return None
    fp = a.fingerprint
    return read_spilled(a.spill, fp.dtype, fp.shape), read_spilled(b.spill, fp.dtype, fp.shape)


def _divergence(
    reference: RunRecord, other: RunRecord, index: int, differing: list[str]
) -> Divergence:
    ref_step, other_step = reference.steps[index], other.steps[index]
    key = differing[0]
    a, b = ref_step.entries[key], other_step.entries[key]
    pair = _load_pair(a, b)
    detail = tensor_diff(*pair) if pair else None
    unavailable = None
    if pair is None:
        unavailable = (
            "element-level detail unavailable: the spill budget was exhausted "
            "(raise --repro-spill-mb)"
            if reference.spill_exhausted or other.spill_exhausted
            else "element-level detail unavailable: tensors were not spilled"
        )
    fa, fb = a.fingerprint, b.fingerprint
    return Divergence(
        step=ref_step.step,
        key=key,
        dtype=fa.dtype,
        shape=fa.shape,
        keys_differing=differing,
        keys_total=len(ref_step.entries),
        detail=detail,
        detail_unavailable=unavailable,
        growth=_growth(reference, other, index, key),
        nonfinite=(fa.nan, fa.inf, fb.nan, fb.inf),
    )


def _growth_indices(first: int, count: int) -> list[int]:
    remaining = list(range(first, count))
    if len(remaining) <= GROWTH_ROWS:
        return remaining
    head = remaining[:3]
    tail = np.linspace(remaining[3], remaining[-1], GROWTH_ROWS - 3).round().astype(int)
    return sorted(set(head) | {int(i) for i in tail})


def _growth(reference: RunRecord, other: RunRecord, first: int, key: str) -> list[GrowthRow]:
    rows = []
    metric_keys = [k for k in reference.steps[first].entries if k.startswith("metric.")][:3]
    for index in _growth_indices(first, len(reference.steps)):
        ref_step, other_step = reference.steps[index], other.steps[index]
        differing = sum(
            not e.fingerprint.same_bits(other_step.entries[k].fingerprint)
            for k, e in ref_step.entries.items()
        )
        pair = _load_pair(ref_step.entries[key], other_step.entries[key])
        max_abs = tensor_diff(*pair).max_abs if pair else None
        metrics = {
            k: (ref_step.entries[k].value, other_step.entries[k].value)
            for k in metric_keys
            if k in ref_step.entries
        }
        rows.append(GrowthRow(ref_step.step, differing, len(ref_step.entries), max_abs, metrics))
    return rows


@dataclass
class ToleranceCheck:
    within: bool
    worst_step: int | None = None
    worst_key: str | None = None
    worst_abs: float = 0.0
    message: str = ""
    mismatch: Mismatch | None = None  # at the first key beyond the tolerance


def within_tolerance(
    reference: RunRecord, other: RunRecord, atol: float, rtol: float
) -> ToleranceCheck:
    """Do two structurally equal runs agree within ``|a - b| <= atol + rtol * |a|`` at every
    step, key and element? Needs both runs' spilled tensors wherever their bits differ."""
    import torch

    worst = ToleranceCheck(True)
    for ref_step, other_step in zip(reference.steps, other.steps, strict=True):
        for key, entry in ref_step.entries.items():
            other_entry = other_step.entries[key]
            if entry.fingerprint.same_bits(other_entry.fingerprint):
                continue
            pair = _load_pair(entry, other_entry)
            where = f"step {ref_step.step}, {key}"
            if pair is None:
                return ToleranceCheck(
                    False,
                    ref_step.step,
                    key,
                    float("nan"),
                    f"{where}: tensors were not spilled, cannot compare with "
                    f"tolerances (raise --repro-spill-mb)",
                )
            a, b = (
                _numpy(t.to(torch.complex128 if t.is_complex() else torch.float64)) for t in pair
            )
            found = find_mismatch(a, b, atol=atol, rtol=rtol, shape=tuple(pair[0].shape))
            if found.mismatched:
                return ToleranceCheck(
                    False,
                    ref_step.step,
                    key,
                    found.max_abs,
                    f"{where} is not close (atol={atol:g}, rtol={rtol:g}): "
                    + "; ".join(found.lines()),
                    found,
                )
            if found.max_abs > worst.worst_abs:
                worst = ToleranceCheck(True, ref_step.step, key, found.max_abs)
    worst.message = (
        f"all differences within atol={atol:g}, rtol={rtol:g}; greatest absolute difference "
        f"{worst.worst_abs:.3g}"
        + (f" at step {worst.worst_step}, {worst.worst_key}" if worst.worst_key else "")
    )
    return worst
