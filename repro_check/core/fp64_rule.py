"""The float64 rule: does a run agree with a reference as well as floating point allows?

Backend variants, cross-machine compares and the baseline gate judge float32 runs against a
float64 record with :func:`judge_against_fp64` (re-exported by :mod:`repro_check.core.compare`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Multipliers of the float64 rule (see :func:`judge_against_fp64`), as in PyTorch's inductor
#: accuracy checker ``torch._dynamo.utils.same(..., fp64_ref=...)``.
FP64_MULTIPLIER = 2.0  # 1000 or more float32 numbers
FP64_MULTIPLIER_HALF = 3.0  # 1000 or more float16/bfloat16 numbers
FP64_MULTIPLIER_FEW = 3.0  # 11 to 999 numbers
FP64_MULTIPLIER_SCALAR = 10.0  # 10 numbers or fewer
#: The floor, in units of the compared dtype's machine epsilon at the float64 record's RMS.
FP64_FLOOR_EPS = 4.0
_EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
}


@dataclass(frozen=True)
class Fp64Judgement:
    """The verdict of the float64 rule and the numbers it rests on."""

    agrees: bool
    ref_error: float  # RMSE of the float32 reference against the float64 record
    candidate_error: float  # RMSE of the candidate against the float64 record
    allowed: float  # multiplier * ref_error + floor
    multiplier: float
    floor: float  # absolute (already scaled by the float64 record's RMS)
    compared: int  # numbers compared (finite in all three)
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "agrees": self.agrees,
            "ref_error": _json_float(self.ref_error),
            "candidate_error": _json_float(self.candidate_error),
            "allowed": _json_float(self.allowed),
            "multiplier": self.multiplier,
            "floor": _json_float(self.floor),
            "compared": self.compared,
            "reason": self.reason,
        }


def fp64_multiplier(count: int, dtype: str = "float32") -> float:
    """The default multiplier for ``count`` compared numbers of ``dtype`` (see the constants)."""
    if count <= 10:
        return FP64_MULTIPLIER_SCALAR
    if count < 1000:
        return FP64_MULTIPLIER_FEW
    return FP64_MULTIPLIER_HALF if dtype in ("float16", "bfloat16") else FP64_MULTIPLIER


def judge_against_fp64(
    ref32: Any,
    candidate: Any,
    fp64: Any,
    *,
    multiplier: float | None = None,
    floor: float | None = None,
    dtype: str = "float32",
) -> Fp64Judgement:
    """Does ``candidate`` agree with the reference run as well as floating point allows?

    The rule of PyTorch's inductor accuracy checker (``torch._dynamo.utils.same`` with
    ``fp64_ref``): a fixed ``atol``/``rtol`` is too loose for 1e-6 weights and too tight for 1e6
    activations, so the yardstick is the reference's *own* rounding error instead. With the same
    computation run once in float64 (``fp64``, the closest thing to the exact result) and once in
    the reference's precision (``ref32``)::

        agrees  <=>  rmse(candidate, fp64) <= multiplier * rmse(ref32, fp64) + floor

    Another order of reduction (threads, ISA, BLAS, GPU) gives an error of the same size as the
    reference's, so it passes; a real numerical bug (a wrong epsilon, a x1.01 scale, a dropped
    term) gives an error far above float32 rounding, so it fails -- at any scale, since both
    sides of the inequality scale with the data.

    Multipliers (by the number of numbers compared, as ``same`` picks them by tensor size):
    2 for 1000 or more float32 numbers, because two float32 runs that differ only in rounding
    have RMS errors within a factor of about 1.5 of each other over that many elements; 3 for
    float16/bfloat16 (``same``'s choice for AMP, whose coarser rounding false-alarmed at 2) and
    for fewer than 1000 numbers, where noise dominates the RMS; 10 for 10 numbers or fewer
    (``same``'s ``use_larger_multiplier_for_smaller_tensor``), where the RMS is the ratio of a
    few random rounding errors. ``same``'s floor is ``tol / 10`` in absolute terms, which is not
    scale-free; here it is :data:`FP64_FLOOR_EPS` machine epsilons of ``dtype`` times the float64
    record's RMS, so that a reference that happens to round exactly (error 0) does not fail a
    candidate one rounding away.

    What it does not forgive: a candidate whose kernel is a less accurate *algorithm*, not just
    another order -- e.g. a BLAS gemv summing 16,384 float32 products in a few long runs, against
    a reference that sums them in short blocks -- can err 4x more than the reference, and is
    flagged, as ``same`` flags it; pass a larger ``multiplier`` for such a pair on purpose.

    Inputs are equally long sequences of numbers (samples, statistics). NaN/inf: positions where
    the float64 record or the reference is not finite are skipped (the reference cannot be held
    to them); a candidate that is not finite where both are finite fails.
    """
    r = np.asarray(ref32, dtype=np.float64).reshape(-1)
    c = np.asarray(candidate, dtype=np.float64).reshape(-1)
    x = np.asarray(fp64, dtype=np.float64).reshape(-1)
    if not r.size == c.size == x.size:
        raise ValueError(
            f"judge_against_fp64 needs equally long inputs, got {r.size}, {c.size}, {x.size}"
        )
    usable = np.isfinite(r) & np.isfinite(x)
    new_nonfinite = int((usable & ~np.isfinite(c)).sum())
    keep = usable & np.isfinite(c)
    count = int(keep.sum())
    chosen = multiplier if multiplier is not None else fp64_multiplier(count, dtype)
    if count == 0:
        rms = ref_error = candidate_error = 0.0
    else:
        rms = _rms(x[keep])
        ref_error = _rms(r[keep] - x[keep])
        candidate_error = _rms(c[keep] - x[keep])
    eps = _EPS.get(dtype, _EPS["float32"])
    floor_abs = (floor if floor is not None else FP64_FLOOR_EPS * eps) * rms
    allowed = chosen * ref_error + floor_abs
    agrees = new_nonfinite == 0 and candidate_error <= allowed
    if new_nonfinite:
        reason = (
            f"{new_nonfinite} value(s) are NaN/inf where the float32 reference and the float64 "
            f"record are finite"
        )
    else:
        ratio = f"{candidate_error / ref_error:.3g}x" if ref_error else "n/a"
        reason = (
            f"RMS error against the float64 record {candidate_error:.3g} "
            f"{'<=' if agrees else '>'} allowed {allowed:.3g} (= {chosen:g} x the reference's own "
            f"error {ref_error:.3g} + floor {floor_abs:.3g}; the candidate's is {ratio} the "
            f"reference's) over {count} values"
        )
    return Fp64Judgement(
        agrees, ref_error, candidate_error, allowed, chosen, floor_abs, count, reason
    )


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if values.size else 0.0


def _json_float(x: float) -> float | str:
    return x if np.isfinite(x) else repr(x)
