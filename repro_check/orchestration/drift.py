"""Drift across environments: how a variant's record differs from the reference's, and whether
the difference is what floating point allows.

:func:`analyze_drift` walks two records (the float32 reference and a variant) step by step and
key by key -- every step, every key -- and measures the difference: greatest absolute and
relative difference, greatest distance in ULPs, the fraction of elements that differ, NaN/inf
counts on both sides. Values come from the spill files (every element) or, where none were
spilled, from the fingerprints' statistics (a fixed sample of elements, mean, RMS, min, max).

The verdict (:func:`repro_check.orchestration.variant_stage.decide`) follows PyTorch's inductor accuracy checker: with a float64 run of
the same test (:mod:`repro_check.core.backend` makes it draw the reference's random numbers), a
variant agrees when its error against the float64 run is within a multiple of the reference's own
error against it, plus a floor (:func:`repro_check.core.compare.judge_against_fp64`).

The rule is enforced at the **first drift step**: up to it the variant and the reference were bit
for bit equal, so that step is one step of computation from equal inputs -- the setting the rule
is sound for. Reduction-order noise passes there; a wrong epsilon, a dropped term or a scaled
update fails, whatever the model's scale. After that step the two runs start each step from
different states and training amplifies rounding differences (a max-pool or ReLU decision flips,
Adam divides by a near-zero second moment): the rule is still evaluated at every later step, and
the step where the drift outgrew it is reported as *amplified drift*, without failing the test.
Without a float64 run the stated tolerances (``atol``/``rtol``) are enforced at every step.

NaN or inf where the reference has none, integer keys that differ (RNG states, step counters),
or records of another structure fail at any step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.compare import Fp64Judgement, Mismatch, find_mismatch, judge_against_fp64
from repro_check.core.record import Entry, RunRecord
from repro_check.core.spill import read_spilled

if TYPE_CHECKING:
    import torch

FLOATING = frozenset({"float16", "bfloat16", "float32", "float64"})

# Outcome statuses of one variant.
IDENTICAL = "identical"  # bit for bit the reference's record
AGREES = "agrees"  # differs, within the rule at the first drift step and no later NaN
DRIFTS = "drifts"  # agrees at the first drift step; later steps outgrew the rule (amplified)
DISAGREES = "disagrees"  # beyond the rule, NaN where the reference has none, other structure
FAILED = "failed"  # could not run, or its own replicas are not reproducible
SKIPPED = "skipped"  # this machine cannot run it
JUDGE = "judge"  # the float64 run itself: the yardstick, not judged
FAILING_STATUSES = frozenset({DISAGREES, FAILED})


@dataclass
class KeyDrift:
    """One key at one step: the variant against the reference."""

    key: str
    dtype: str
    numel: int
    mismatch: Mismatch | None = None  # every element (spilled) or the statistics' sample
    max_ulp: float | None = None  # greatest distance in units in the last place (reference dtype)
    from_stats: bool = False  # values are the statistics' sample, not every element
    judgement: Fp64Judgement | None = None  # the float64 rule for this key
    exact_mismatch: bool = False  # an integer/bool key whose values differ

    @property
    def differing(self) -> int:
        return self.mismatch.mismatched if self.mismatch is not None else self.numel

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "dtype": self.dtype,
            "numel": self.numel,
            "mismatch": self.mismatch.to_json() if self.mismatch else None,
            "max_ulp": self.max_ulp,
            "from_stats": self.from_stats,
            "judgement": self.judgement.to_json() if self.judgement else None,
            "exact_mismatch": self.exact_mismatch,
        }


@dataclass
class DriftStep:
    """One recorded step: how far the variant is from the reference, over every key."""

    step: int
    keys_total: int
    keys_differing: int = 0
    elements_total: int = 0
    elements_differing: int = 0
    max_abs: float = 0.0
    max_abs_key: str = ""
    max_rel: float = 0.0
    max_ulp: float | None = None
    #: RMS of (variant - reference) over every floating element, relative to the reference's RMS
    #: (the drift curve); and the reference's own error against float64 the same way.
    relative_rms: float = 0.0
    reference_error: float | None = None
    judgement: Fp64Judgement | None = None  # pooled over the keys that differ at this step
    tolerance: str = ""  # tolerance mode: the first key beyond atol/rtol, described
    nan: tuple[int, int, int, int] = (0, 0, 0, 0)  # reference NaN, inf; variant NaN, inf
    values_missing: int = 0  # differing keys with neither spilled values nor statistics
    first_key: str = ""  # the first differing key, in recording order
    #: Some differing keys were compared through their statistics' sample (not spilled): the
    #: element counts are then unknown.
    from_stats: bool = False

    @property
    def identical(self) -> bool:
        return self.keys_differing == 0

    @property
    def fraction_differing(self) -> float:
        return self.elements_differing / self.elements_total if self.elements_total else 0.0

    @property
    def within_rule(self) -> bool | None:
        if self.judgement is not None:
            return self.judgement.agrees
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "keys_total": self.keys_total,
            "keys_differing": self.keys_differing,
            "elements_total": self.elements_total,
            "elements_differing": self.elements_differing,
            "max_abs": _json(self.max_abs),
            "max_abs_key": self.max_abs_key,
            "max_rel": _json(self.max_rel),
            "max_ulp": self.max_ulp,
            "relative_rms": _json(self.relative_rms),
            "reference_error": None
            if self.reference_error is None
            else _json(self.reference_error),
            "judgement": self.judgement.to_json() if self.judgement else None,
            "tolerance": self.tolerance,
            "nan": list(self.nan),
            "values_missing": self.values_missing,
            "first_key": self.first_key,
            "from_stats": self.from_stats,
        }


def _json(x: float) -> float | str:
    return float(x) if np.isfinite(x) else repr(float(x))


@dataclass
class DriftAnalysis:
    """Everything measured between a variant's record and the reference's."""

    steps: list[DriftStep] = field(default_factory=list)
    structural: str = ""  # why the records cannot be compared value by value
    first_drift: int | None = None  # index into ``steps``
    first_keys: list[KeyDrift] = field(default_factory=list)  # differing keys at the first drift
    new_nonfinite: str = ""  # first NaN/inf the variant has and the reference has not
    exact_mismatch: str = ""  # first integer key that differs
    judged_by: str = ""  # "float64" | "tolerances" | ""

    @property
    def first_step(self) -> DriftStep | None:
        return self.steps[self.first_drift] if self.first_drift is not None else None

    def to_json(self) -> dict[str, Any]:
        first = self.first_step
        return {
            "structural": self.structural,
            "first_drift_step": first.step if first else None,
            "first_drift_key": first.first_key if first else None,
            "first_drift_keys": [k.to_json() for k in self.first_keys],
            "new_nonfinite": self.new_nonfinite,
            "exact_mismatch": self.exact_mismatch,
            "judged_by": self.judged_by,
            "steps": [s.to_json() for s in self.steps],
        }


# ------------------------------------------------------------------------------- values


@dataclass
class Values:
    """A key's values as far as they are known: every element, or the statistics' summary."""

    tensor: torch.Tensor | None
    summary: np.ndarray | None  # sample elements, mean, RMS, min, max (float64)

    @property
    def known(self) -> bool:
        return self.tensor is not None or self.summary is not None

    def flat(self, exact: bool) -> np.ndarray | None:
        """float64 values: every element when ``exact`` (both sides spilled), else the summary."""
        if exact and self.tensor is not None:
            return _as_float64(self.tensor)
        return self.summary


def _as_float64(tensor: torch.Tensor) -> np.ndarray:
    import torch

    flat = tensor.reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    return flat.to(torch.float64).numpy()


def stats_summary(entry: Entry) -> np.ndarray | None:
    """The numbers a fingerprint's statistics give of a floating tensor: the fixed sample of
    elements, then mean, RMS, min and max (the same positions in any run of the same shape)."""
    stats = entry.fingerprint.stats
    if stats is None:
        return None
    numel = max(1, entry.fingerprint.numel)
    rms = stats.norm / np.sqrt(numel)
    return np.array([*stats.sample, stats.mean, rms, stats.min, stats.max], dtype=np.float64)


Loader = Callable[[Entry], "torch.Tensor | None"]


def load_spilled(entry: Entry) -> torch.Tensor | None:
    """A recorded tensor from its spill file; None when it was not spilled (or is gone)."""
    if entry.spill is None:
        return None
    fp = entry.fingerprint
    try:
        return read_spilled(entry.spill, fp.dtype, fp.shape)
    except (OSError, ValueError, RuntimeError):
        return None


def values_of(entry: Entry, load: Loader) -> Values:
    tensor = load(entry)
    summary = stats_summary(entry) if entry.fingerprint.dtype in FLOATING else None
    return Values(tensor, summary)


# ------------------------------------------------------------------------------ measures


#: ULP distances are taken where both values are at least this fraction of the tensor's RMS:
#: around zero a ULP is arbitrarily small (1e-45 apart is a billion ULPs across the sign).
ULP_SCALE = 1e-3


def max_ulp_distance(reference: torch.Tensor, other: torch.Tensor) -> float | None:
    """Greatest distance between the two tensors in units in the last place of the reference's
    dtype (the other is rounded to it first), over the elements that are not tiny: both of one
    sign and at least :data:`ULP_SCALE` of the reference's RMS. NaN/inf are left out (counted
    apart); None for non-floating dtypes."""
    import torch

    widths = {
        torch.float64: torch.int64,
        torch.float32: torch.int32,
        torch.float16: torch.int16,
        torch.bfloat16: torch.int16,
    }
    as_int = widths.get(reference.dtype)
    if as_int is None or reference.numel() == 0:
        return None
    a = reference.reshape(-1).contiguous()
    b = other.reshape(-1).to(reference.dtype).contiguous()
    wide_a, wide_b = a.to(torch.float64).numpy(), b.to(torch.float64).numpy()
    finite = np.isfinite(wide_a) & np.isfinite(wide_b)
    if not finite.any():
        return 0.0
    floor = ULP_SCALE * float(np.sqrt(np.mean(np.square(wide_a[finite]))))
    keep = finite & (np.abs(wide_a) >= floor) & (np.abs(wide_b) >= floor)
    keep &= np.signbit(wide_a) == np.signbit(wide_b)
    if not keep.any():
        return 0.0
    bits_a = a.view(as_int).numpy().astype(np.int64)[keep]
    bits_b = b.view(as_int).numpy().astype(np.int64)[keep]
    return float(np.abs(bits_a - bits_b).max())  # same sign: the bit patterns are ordered


#: The multiplier of the float64 rule across backends. Inductor's 2 and 3 (``same``) compare
#: two runs of the *same* algorithms; a backend variant changes them -- oneDNN's blocked
#: convolution against im2col + GEMM, Sleef against libm, pairwise against sequential sums --
#: and their accuracies legitimately differ: at the first drift step, benign variants of the
#: reference suites measured up to 7.5x the reference's own error against float64 (mkldnn=off on
#: a CNN, isa=default on an LSTM; this module's tests and benchmarks/bench_variants.py), while
#: real bugs measured 700x (a wrong epsilon) and 1e5x (TF32 matmuls). 10 -- inductor's own
#: multiplier for small tensors -- keeps both margins.
VARIANT_MULTIPLIER = 10.0


def _judge(
    reference: np.ndarray, candidate: np.ndarray, fp64: np.ndarray, dtype: str
) -> Fp64Judgement:
    return judge_against_fp64(
        reference, candidate, fp64, dtype=dtype, multiplier=VARIANT_MULTIPLIER
    )


def _rule_dtype(dtypes: set[str]) -> str:
    """The multiplier's dtype for pooled keys: half precision only when every key is."""
    return "float16" if dtypes and dtypes <= {"float16", "bfloat16"} else "float32"


# ------------------------------------------------------------------------------- walking


def structure_problem(reference: RunRecord, candidate: RunRecord) -> str:
    """Why two records cannot be compared value by value ('' when they can). Floating keys may
    differ in width (a float64 variant records float64 where the reference has float32)."""
    ref_steps = [s.step for s in reference.steps]
    other_steps = [s.step for s in candidate.steps]
    if ref_steps != other_steps:
        return (
            f"the variant recorded other steps: {len(other_steps)} records "
            f"({_steps(other_steps)}) vs the reference's {len(ref_steps)} ({_steps(ref_steps)})"
        )
    for ref_step, other_step in zip(reference.steps, candidate.steps, strict=True):
        missing = [k for k in ref_step.entries if k not in other_step.entries]
        extra = [k for k in other_step.entries if k not in ref_step.entries]
        if missing or extra:
            what = (
                f"only in the reference: {', '.join(missing[:3])}"
                if missing
                else f"only in the variant: {', '.join(extra[:3])}"
            )
            return f"step {ref_step.step}: the variant recorded other keys ({what})"
        for key, entry in ref_step.entries.items():
            a, b = entry.fingerprint, other_step.entries[key].fingerprint
            if a.shape != b.shape:
                return f"step {ref_step.step}, {key}: shape {a.shape} vs {b.shape}"
            if a.dtype != b.dtype and not (a.dtype in FLOATING and b.dtype in FLOATING):
                return f"step {ref_step.step}, {key}: dtype {a.dtype} vs {b.dtype}"
    return ""


def _steps(steps: list[int]) -> str:
    return ", ".join(map(str, steps[:6])) + (" ..." if len(steps) > 6 else "")


def analyze_drift(
    reference: RunRecord,
    candidate: RunRecord,
    fp64: RunRecord | None = None,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    load: Loader = load_spilled,
) -> DriftAnalysis:
    """Measure ``candidate`` against ``reference`` at every step and key; with ``fp64`` (a float64
    run of the same test) apply the float64 rule at every step, else ``atol``/``rtol``."""
    analysis = DriftAnalysis(judged_by="float64" if fp64 is not None else "tolerances")
    problem = structure_problem(reference, candidate)
    if not problem and fp64 is not None:
        problem = structure_problem(reference, fp64)
        if problem:
            problem = f"the float64 run cannot be used: {problem}"
            fp64 = None
            analysis.judged_by = "tolerances"
            problem = ""  # judge with the tolerances instead
    if problem:
        analysis.structural = problem
        return analysis
    x_steps = fp64.steps if fp64 is not None else [None] * len(reference.steps)
    for ref_step, other_step, x_step in zip(reference.steps, candidate.steps, x_steps, strict=True):
        step, keys = _measure_step(
            ref_step.step,
            list(_triples(ref_step.entries, other_step.entries, x_step)),
            atol=atol,
            rtol=rtol,
            load=load,
            keep_keys=analysis.first_drift is None,
        )
        analysis.steps.append(step)
        if not step.identical and analysis.first_drift is None:
            analysis.first_drift = len(analysis.steps) - 1
            analysis.first_keys = keys
        _note_problems(analysis, step, keys)
    return analysis


def _triples(
    ref: dict[str, Entry], other: dict[str, Entry], x_step: Any
) -> Iterator[tuple[str, Entry, Entry, Entry | None]]:
    for key, entry in ref.items():
        yield key, entry, other[key], (x_step.entries.get(key) if x_step is not None else None)


def _note_problems(analysis: DriftAnalysis, step: DriftStep, keys: list[KeyDrift]) -> None:
    ref_nan, ref_inf, nan, inf = step.nan
    if not analysis.new_nonfinite and (nan > ref_nan or inf > ref_inf):
        analysis.new_nonfinite = (
            f"step {step.step}: {nan} NaN / {inf} inf in the variant where the reference has "
            f"{ref_nan} NaN / {ref_inf} inf"
        )
    if not analysis.exact_mismatch:
        exact = next((k for k in keys if k.exact_mismatch), None)
        if exact is not None:
            analysis.exact_mismatch = (
                f"step {step.step}, {exact.key} ({exact.dtype}): integer values differ "
                f"({exact.differing} of {exact.numel}); exact equality is expected"
            )


class _Sums:
    """Sums of squares over a step's floating elements (the drift curve and the yardstick)."""

    def __init__(self) -> None:
        self.diff = self.ref = self.ref_err = self.fp64 = 0.0

    def reference(self, entry: Entry, values: np.ndarray | None) -> None:
        stats = entry.fingerprint.stats
        if stats is not None and np.isfinite(stats.norm):
            self.ref += float(stats.norm) ** 2
        elif values is not None:
            self.ref += float(np.sum(np.square(values)))

    def yardstick(self, ref: np.ndarray | None, fp64: np.ndarray | None) -> None:
        if ref is not None and fp64 is not None and ref.size == fp64.size:
            self.ref_err += float(np.sum(np.square(ref - fp64)))
            self.fp64 += float(np.sum(np.square(fp64)))


def _measure_step(
    number: int,
    triples: list[tuple[str, Entry, Entry, Entry | None]],
    *,
    atol: float,
    rtol: float,
    load: Loader,
    keep_keys: bool,
) -> tuple[DriftStep, list[KeyDrift]]:
    step = DriftStep(number, keys_total=len(triples))
    nan = [0, 0, 0, 0]
    sums = _Sums()
    pooled: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pooled_dtypes: set[str] = set()
    keys: list[KeyDrift] = []
    for key, a, b, x in triples:
        fa, fb = a.fingerprint, b.fingerprint
        nan = [nan[0] + fa.nan, nan[1] + fa.inf, nan[2] + fb.nan, nan[3] + fb.inf]
        floating = fa.dtype in FLOATING
        if floating:
            step.elements_total += fa.numel
        if fa.same_bits(fb):
            if floating:
                va = values_of(a, load) if x is not None else None
                vx = values_of(x, load) if x is not None else None
                both = va is not None and vx is not None and va.tensor is not None
                ra = va.flat(both and vx.tensor is not None) if va is not None else None
                sums.reference(a, ra)
                sums.yardstick(ra, vx.flat(both and vx.tensor is not None) if vx else None)
            continue
        step.keys_differing += 1
        step.first_key = step.first_key or key
        drift = KeyDrift(key, fa.dtype, fa.numel)
        va, vb = values_of(a, load), values_of(b, load)
        exact = va.tensor is not None and vb.tensor is not None
        if not floating:
            _integer_drift(drift, va, vb, fa.comparable(fb))
            step.elements_differing += drift.differing if drift.exact_mismatch else 0
            keys.append(drift)
            continue
        ra, rb = va.flat(exact), vb.flat(exact)
        sums.reference(a, ra)
        if ra is None or rb is None or ra.size != rb.size:
            step.values_missing += 1
            keys.append(drift)
            continue
        drift.from_stats = not exact
        drift.mismatch = find_mismatch(ra, rb, shape=fa.shape if exact else None)
        if exact:
            drift.max_ulp = max_ulp_distance(va.tensor, vb.tensor)  # type: ignore[arg-type]
            step.max_ulp = max(step.max_ulp or 0.0, drift.max_ulp or 0.0)
            step.elements_differing += drift.mismatch.mismatched
        else:
            step.from_stats = True  # how many elements differ is unknown
        if drift.mismatch.max_abs >= step.max_abs:
            step.max_abs, step.max_abs_key = drift.mismatch.max_abs, key
        step.max_rel = max(step.max_rel, drift.mismatch.max_rel)
        sums.diff += float(np.sum(np.square(rb - ra)))
        vx = values_of(x, load) if x is not None else None
        rx = vx.flat(exact and vx.tensor is not None) if vx is not None else None
        if rx is not None and rx.size == ra.size:
            sums.yardstick(ra, rx)
            drift.judgement = _judge(ra, rb, rx, fa.dtype)
            pooled.append((ra, rb, rx))
            pooled_dtypes.add(fa.dtype)
        elif x is None and not step.tolerance:
            beyond = find_mismatch(ra, rb, atol=atol, rtol=rtol, shape=fa.shape if exact else None)
            if beyond.mismatched:
                step.tolerance = f"{key}: " + "; ".join(beyond.lines())
        if keep_keys:
            keys.append(drift)
    step.nan = (nan[0], nan[1], nan[2], nan[3])
    step.relative_rms = float(np.sqrt(sums.diff / sums.ref)) if sums.ref else float(sums.diff > 0)
    if sums.fp64:
        step.reference_error = float(np.sqrt(sums.ref_err / sums.fp64))
    if pooled:
        r, c, x = (np.concatenate(part) for part in zip(*pooled, strict=True))
        step.judgement = _judge(r, c, x, _rule_dtype(pooled_dtypes))
    return step, keys


def _integer_drift(drift: KeyDrift, a: Values, b: Values, comparable: bool) -> None:
    """Integer and bool keys (RNG states, counters) must be equal; their digests differ only
    when their bits do, unless the digests were made by different algorithms (CPU vs GPU)."""
    if a.tensor is not None and b.tensor is not None:
        drift.mismatch = find_mismatch(_as_float64(a.tensor), _as_float64(b.tensor))
        drift.exact_mismatch = comparable or drift.mismatch.mismatched > 0
    else:
        drift.exact_mismatch = comparable
