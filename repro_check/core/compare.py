"""Compare what two replicas recorded: structure first, then bits, then the numbers.

``compare_runs`` walks two :class:`RunRecord` step by step. A different number or order of steps
or keys, or a dtype/shape change, is a *structural* mismatch and is reported first (the runs did
different things). Otherwise the first step and key whose fingerprints differ is the *first
divergence*; when both replicas spilled the tensor, :func:`tensor_diff` gives the element-level
detail in the style of ``torch.testing.assert_close`` and the growth table shows how the
difference evolves over the later steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.record import Entry, RunRecord
from repro_check.core.spill import read_spilled

if TYPE_CHECKING:
    import torch

#: Rows of the growth table (first rows, then evenly spaced up to the last step).
GROWTH_ROWS = 8


@dataclass
class TensorDiff:
    """Element-level difference between two tensors of equal dtype and shape."""

    numel: int
    mismatched: int
    max_abs: float
    max_abs_index: tuple[int, ...]
    max_rel: float
    max_rel_index: tuple[int, ...]
    reference_value: float
    other_value: float
    nan_mismatched: int = 0

    @property
    def mismatched_percent(self) -> float:
        return 100.0 * self.mismatched / self.numel if self.numel else 0.0

    def describe(self, indent: str = "    ") -> str:
        idx = _format_index(self.max_abs_index)
        lines = [
            f"{indent}elements differing: {self.mismatched} / {self.numel} "
            f"({self.mismatched_percent:.1f}%)",
            f"{indent}greatest absolute difference: {self.max_abs:.3g} at index {idx} "
            f"({self.reference_value!r} vs {self.other_value!r})",
            f"{indent}greatest relative difference: {self.max_rel:.3g} at index "
            f"{_format_index(self.max_rel_index)}",
        ]
        if self.nan_mismatched:
            lines.append(f"{indent}NaN in one replica only: {self.nan_mismatched} elements")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "numel": self.numel,
            "mismatched": self.mismatched,
            "mismatched_percent": round(self.mismatched_percent, 4),
            "max_abs": _json_float(self.max_abs),
            "max_abs_index": list(self.max_abs_index),
            "max_rel": _json_float(self.max_rel),
            "max_rel_index": list(self.max_rel_index),
            "reference_value": _json_float(self.reference_value),
            "other_value": _json_float(self.other_value),
            "nan_mismatched": self.nan_mismatched,
        }


def _json_float(x: float) -> float | str:
    return x if np.isfinite(x) else repr(x)


def _format_index(index: tuple[int, ...]) -> str:
    return "()" if not index else "(" + ", ".join(map(str, index)) + ")"


def tensor_diff(reference: torch.Tensor, other: torch.Tensor) -> TensorDiff:
    """Bitwise mismatch count plus greatest absolute/relative difference and where it is."""
    import torch

    if reference.dtype != other.dtype or reference.shape != other.shape:
        raise ValueError(
            f"tensor_diff needs equal dtype and shape, got {reference.dtype}{tuple(reference.shape)}"
            f" and {other.dtype}{tuple(other.shape)}"
        )
    shape = tuple(reference.shape)
    numel = reference.numel()
    if numel == 0:
        return TensorDiff(0, 0, 0.0, (), 0.0, (), 0.0, 0.0)
    # A private, truly contiguous copy (tiny tensors may carry any stride).
    a = reference.detach().cpu().reshape(-1).clone(memory_format=torch.contiguous_format)
    b = other.detach().cpu().reshape(-1).clone(memory_format=torch.contiguous_format)
    if a.dtype == torch.bool:
        bits_a, bits_b = a, b
    else:
        bits_a, bits_b = a.view(torch.uint8), b.view(torch.uint8)
        width = a.element_size()
        bits_a, bits_b = bits_a.reshape(-1, width), bits_b.reshape(-1, width)
    differs = (bits_a != bits_b).reshape(numel, -1).any(dim=1)
    mismatched = int(differs.sum())
    if a.is_complex():  # distance in the complex plane; "values" shown are magnitudes
        c_a, c_b = a.to(torch.complex128), b.to(torch.complex128)
        abs_diff = (c_a - c_b).abs()
        a64, b64 = c_a.abs(), c_b.abs()
        nan_a, nan_b = (
            torch.isnan(c_a.real) | torch.isnan(c_a.imag),
            torch.isnan(c_b.real) | torch.isnan(c_b.imag),
        )
    else:
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
        abs_diff = (a64 - b64).abs()
        nan_a, nan_b = torch.isnan(a64), torch.isnan(b64)
    nan_mismatched = int((nan_a ^ nan_b).sum())
    abs_diff = torch.where(nan_a & nan_b, torch.zeros_like(abs_diff), abs_diff)
    abs_diff = torch.where(nan_a ^ nan_b, torch.full_like(abs_diff, float("inf")), abs_diff)
    abs_diff = torch.where(differs, abs_diff, torch.zeros_like(abs_diff))
    rel_diff = abs_diff / a64.abs()
    rel_diff = torch.where(abs_diff == 0, torch.zeros_like(rel_diff), rel_diff)
    i_abs = int(torch.argmax(abs_diff))
    i_rel = int(torch.argmax(torch.nan_to_num(rel_diff, nan=float("inf"))))
    return TensorDiff(
        numel=numel,
        mismatched=mismatched,
        max_abs=float(abs_diff[i_abs]),
        max_abs_index=_unravel(i_abs, shape),
        max_rel=float(rel_diff[i_rel]),
        max_rel_index=_unravel(i_rel, shape),
        reference_value=float(a64[i_abs]),
        other_value=float(b64[i_abs]),
        nan_mismatched=nan_mismatched,
    )


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
            a, b = (t.to(torch.complex128 if t.is_complex() else torch.float64) for t in pair)
            both_nan = torch.isnan(a.abs()) & torch.isnan(b.abs())
            diff = torch.where(both_nan, torch.zeros_like(a.real.abs()), (a - b).abs())
            allowed = atol + rtol * a.abs()
            bad = ~(diff <= allowed)
            largest = float(diff.max()) if diff.numel() else 0.0
            if bool(bad.any()):
                return ToleranceCheck(
                    False,
                    ref_step.step,
                    key,
                    largest,
                    f"{where}: {int(bad.sum())} elements exceed atol={atol:g}, "
                    f"rtol={rtol:g} (largest |diff| {largest:.3g})",
                )
            if largest > worst.worst_abs:
                worst = ToleranceCheck(True, ref_step.step, key, largest)
    worst.message = (
        f"all differences within atol={atol:g}, rtol={rtol:g}; largest |diff| "
        f"{worst.worst_abs:.3g}"
        + (f" at step {worst.worst_step}, {worst.worst_key}" if worst.worst_key else "")
    )
    return worst
