"""Drift across environments: how a variant's record differs from the reference's, and whether
the difference is what floating point allows.

:func:`analyze_drift` walks two records (the float32 reference and a variant) step by step and
key by key -- every step, every key -- and measures the difference: greatest absolute and
relative difference, greatest distance in ULPs, the fraction of elements that differ, NaN/inf
counts on both sides. Values come from the spill files (every element) or, where none were
spilled, from the fingerprints' statistics (a fixed sample of elements, mean, RMS, min, max).

The verdict (:func:`decide`) follows PyTorch's inductor accuracy checker: with a float64 run of
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

from collections.abc import Callable, Iterable, Iterator, Sequence
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


def max_ulp_distance(reference: torch.Tensor, other: torch.Tensor) -> float | None:
    """Greatest distance between the two tensors in units in the last place of the reference's
    dtype (the other is rounded to it first). NaN positions are left out (they are counted
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
    magnitude = (1 << (torch.iinfo(as_int).bits - 1)) - 1

    def ordered(t: torch.Tensor) -> np.ndarray:
        i = t.view(as_int).numpy().astype(np.int64)
        return np.where(i < 0, -(i & magnitude), i).astype(np.float64)

    with np.errstate(invalid="ignore"):
        distance = np.abs(ordered(a) - ordered(b))
    nan = np.isnan(a.to(torch.float64).numpy()) | np.isnan(b.to(torch.float64).numpy())
    distance[nan] = 0.0
    return float(distance.max())


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


# -------------------------------------------------------------------------------- verdict


@dataclass
class Decision:
    status: str
    reason: str
    amplified_from: int | None = None  # the first later step beyond the rule (a note)


def decide(analysis: DriftAnalysis, *, is_judge: bool = False) -> Decision:
    """The verdict on one variant's drift (see the module docstring for the rule)."""
    if analysis.structural:
        return Decision(DISAGREES, f"the records cannot be compared: {analysis.structural}")
    if analysis.new_nonfinite:
        return Decision(
            DISAGREES, f"NaN/inf where the reference has none: {analysis.new_nonfinite}"
        )
    if analysis.exact_mismatch:
        return Decision(DISAGREES, analysis.exact_mismatch)
    first = analysis.first_step
    if first is None:
        return Decision(IDENTICAL, "bit for bit the reference's record at every step")
    where = f"first drift at step {first.step} ({first.first_key})"
    if is_judge:
        return Decision(JUDGE, f"the float64 run (the yardstick); {where}")
    if analysis.judged_by == "tolerances":
        bad = next((s for s in analysis.steps if s.tolerance), None)
        if bad is not None:
            return Decision(
                DISAGREES, f"beyond the stated tolerances at step {bad.step}: {bad.tolerance}"
            )
        return Decision(AGREES, f"{where}; within the stated tolerances at every step")
    if first.values_missing or (first.judgement is None and first.keys_differing):
        missing = first.values_missing or first.keys_differing
        return Decision(
            DISAGREES,
            f"{where}, but {missing} differing key(s) have no values to judge (neither spilled "
            f"tensors nor statistics, or no float64 values): raise --repro-spill-mb",
        )
    judged = [k for k in analysis.first_keys if k.judgement is not None]
    failing = [k for k in judged if not k.judgement.agrees]  # type: ignore[union-attr]
    if failing:
        # The largest failing key: its RMS rests on the most numbers (small keys are noisy).
        worst = max(failing, key=lambda k: (k.numel, _ratio(k.judgement)))  # type: ignore[arg-type]
        assert worst.judgement is not None
        pooled = (
            f"; over all {len(judged)} differing keys: {first.judgement.reason}"
            if (first.judgement is not None)
            else ""
        )
        return Decision(
            DISAGREES,
            f"{where}: beyond the float64 rule in {len(failing)} of {len(judged)} differing "
            f"key(s); the largest, {worst.key} ({worst.numel} values): {worst.judgement.reason}"
            f"{pooled}",
        )
    if first.judgement is not None and not first.judgement.agrees:
        return Decision(
            DISAGREES,
            f"{where}: beyond the float64 rule over the differing keys: {first.judgement.reason}",
        )
    later = next(
        (
            s
            for s in analysis.steps[analysis.first_drift + 1 :]  # type: ignore[operator]
            if s.judgement is not None and not s.judgement.agrees
        ),
        None,
    )
    if later is not None:
        return Decision(
            DRIFTS,
            f"{where}, within the float64 rule there; from step {later.step} the drift outgrew "
            f"it (amplified by training: {_ratio_text(later.judgement)})",
            amplified_from=later.step,
        )
    return Decision(AGREES, f"{where}; within the float64 rule at every step")


def _ratio(judgement: Fp64Judgement) -> float:
    return judgement.candidate_error / judgement.allowed if judgement.allowed else float("inf")


def _ratio_text(judgement: Fp64Judgement | None) -> str:
    if judgement is None:
        return "n/a"
    return f"error {_ratio(judgement):.3g}x the allowed {judgement.allowed:.3g}"


# ---------------------------------------------------------------------------- the stage


@dataclass
class VariantOutcome:
    """What one variant of one test came to."""

    name: str
    label: str
    status: str
    reason: str
    replicas: int = 0
    analysis: DriftAnalysis | None = None
    drift_op: Any = None  # orchestration.drift_op.DriftOp
    amplified_from: int | None = None
    judge_only: bool = False

    @property
    def failed(self) -> bool:
        return self.status in FAILING_STATUSES

    @property
    def first_drift(self) -> DriftStep | None:
        return self.analysis.first_step if self.analysis is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "status": self.status,
            "reason": self.reason,
            "replicas": self.replicas,
            "failed": self.failed,
            "judge_only": self.judge_only,
            "amplified_from": self.amplified_from,
            "drift_op": self.drift_op.to_json() if self.drift_op is not None else None,
            "drift": self.analysis.to_json() if self.analysis is not None else None,
        }


@dataclass
class VariantReport:
    """Every variant of one test, and what judged them."""

    outcomes: list[VariantOutcome] = field(default_factory=list)
    judged_by: str = ""
    note: str = ""
    #: The float64 run's record, kept until the run's record file is written (not serialised).
    fp64_record: RunRecord | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return any(o.failed for o in self.outcomes)

    def failing(self) -> list[VariantOutcome]:
        return [o for o in self.outcomes if o.failed]

    def to_json(self) -> dict[str, Any]:
        return {
            "judged_by": self.judged_by,
            "note": self.note,
            "failed": self.failed,
            "outcomes": [o.to_json() for o in self.outcomes],
        }


ResultsOf = Callable[[Any], Iterable[Any]]  # PlannedVariant -> its replicas' ReplicaResults


@dataclass
class VariantStage:
    """Judge every variant a test asked for against its reference replicas (see the module
    docstring), then trace the first drift step of each drifting variant to name the op."""

    plan: Sequence[Any]  # orchestration.variants.PlannedVariant
    #: Reruns specs with a trace window (the investigation's rerunner); None: never trace.
    rerunner: Any = None
    localize_mode: str = "auto"
    load: Loader = load_spilled

    def applies(self, nodeid: str) -> list[Any]:
        return [p for p in self.plan if nodeid in p.nodeids]

    def stage(self, case: Any, verdict: Any, results_of: ResultsOf) -> None:
        """Attach a :class:`VariantReport` to ``verdict``; a failing variant fails the test."""
        from repro_check.orchestration.variants import FLOAT64
        from repro_check.orchestration.verdict import VARIANT_MISMATCH

        planned = self.applies(case.nodeid)
        if not planned:
            return
        report = VariantReport()
        reference = verdict.reference
        if (
            reference is None
            or reference.record is None
            or verdict.status in ("diverged", "structural", "error", "not-recorded", "skipped")
        ):
            report.note = f"variants not judged: the reference replicas are {verdict.status}"
            for plan in planned:
                list(results_of(plan)) if plan.specs else None  # drain what the workers sent
                report.outcomes.append(
                    VariantOutcome(plan.name, plan.variant.describe(), SKIPPED, report.note)
                )
            verdict.variants = report
            return
        judge_plan = next((p for p in planned if p.name == FLOAT64), None)
        fp64_record: RunRecord | None = None
        ordered = ([judge_plan] if judge_plan else []) + [p for p in planned if p is not judge_plan]
        for plan in ordered:
            outcome, record = self._run(case, verdict, plan, results_of)
            if outcome is None:
                assert record is not None
                is_judge = plan is judge_plan
                analysis = analyze_drift(
                    reference.record,
                    record,
                    None if is_judge else fp64_record,
                    atol=case.atol,
                    rtol=case.rtol,
                    load=self.load,
                )
                decision = decide(analysis, is_judge=is_judge)
                outcome = VariantOutcome(
                    plan.name,
                    plan.variant.describe(),
                    decision.status,
                    decision.reason,
                    len(plan.specs),
                    analysis,
                    amplified_from=decision.amplified_from,
                    judge_only=plan.variant.judge_only,
                )
                if is_judge and decision.status != DISAGREES:
                    fp64_record = record
            report.outcomes.append(outcome)
        report.judged_by = (
            "the float64 run (the float64 rule)"
            if fp64_record is not None
            else f"the stated tolerances (atol={case.atol:g}, rtol={case.rtol:g}): no usable "
            f"float64 run"
        )
        self._locate_drift_ops(case, report, planned, verdict)
        report.fp64_record = fp64_record
        verdict.variants = report
        if report.failed and not verdict.failed:
            verdict.status = VARIANT_MISMATCH

    def _run(
        self, case: Any, verdict: Any, plan: Any, results_of: ResultsOf
    ) -> tuple[VariantOutcome | None, RunRecord | None]:
        """The variant's own replicas, judged bitwise; (None, record) when they agree."""
        from repro_check.orchestration.verdict import judge

        label = plan.variant.describe()
        if plan.skipped:
            return VariantOutcome(
                plan.name, label, SKIPPED, plan.skipped, judge_only=plan.variant.judge_only
            ), None
        own = judge(
            case.nodeid, verdict.seed, verdict.base_seed, list(plan.specs), results_of(plan)
        )
        made = len(plan.specs)
        if own.status == "skipped":
            return VariantOutcome(
                plan.name, label, SKIPPED, f"the test skipped itself: {own.error}", made
            ), None
        if own.status in ("error", "not-recorded"):
            what = own.error.strip().splitlines()[-1:] if own.error else ["recorded nothing"]
            return VariantOutcome(
                plan.name, label, FAILED, f"the variant failed to run: {what[0]}", made
            ), None
        # A test that declares known nondeterminism (allow=...) may part within a variant too,
        # as its reference replicas may: replica 0 stands for the variant, as it does there.
        if own.status == "structural" or (own.status == "diverged" and not case.allowed):
            return VariantOutcome(
                plan.name,
                label,
                FAILED,
                f"its own replicas differ bit for bit ({own.first_divergence()}): the test is not "
                f"reproducible in this environment",
                made,
            ), None
        assert own.reference is not None and own.reference.record is not None
        return None, own.reference.record

    def _locate_drift_ops(
        self, case: Any, report: VariantReport, planned: list[Any], verdict: Any
    ) -> None:
        from repro_check.orchestration.drift_op import locate
        from repro_check.orchestration.investigation import (
            TraceWindow,
            should_localize,
            window_start,
        )

        if self.rerunner is None or not should_localize(
            self.localize_mode, verdict.duration, len(verdict.specs)
        ):
            return
        by_name = {p.name: p for p in planned}
        steps = [s.step for s in verdict.reference.record.steps]
        # Variants that first drift at the same step share one traced rerun of the reference.
        groups: dict[int, list[tuple[VariantOutcome, Any]]] = {}
        for outcome in report.outcomes:
            first = outcome.first_drift
            plan = by_name.get(outcome.name)
            if first is None or plan is None or not plan.specs:
                continue
            if outcome.status not in (JUDGE, FAILED, SKIPPED):
                groups.setdefault(first.step, []).append((outcome, plan))
        for step, members in groups.items():
            start = window_start(steps, step, 0)
            originals = [verdict.specs[0], *(plan.specs[0] for _, plan in members)]
            reruns = self.rerunner(case.nodeid, originals, TraceWindow(start, step), 0)
            for position, (outcome, plan) in enumerate(members, start=1):
                pair = [reruns[0], reruns[position]] if len(reruns) > position else reruns[:1]
                outcome.drift_op = locate(pair, step, start, plan.variant)
