"""Statistics for seed-sensitivity reports, written to read like the papers they implement.

Core layer: numpy, scipy and (for :func:`summarize_sources` only) pandas; never pytest or torch.
The style follows rliable (Agarwal et al., NeurIPS 2021): robust aggregates (IQM), percentile
bootstrap confidence intervals and probability of improvement rather than a single number.

Conventions shared by every function here:

* Input is any array-like of numbers; it is flattened.
* Non-finite values (NaN, +-inf) are *counted* and excluded -- never silently dropped: the
  returned objects say how many were excluded (:class:`Summary`, :class:`Interval`,
  :class:`ImprovementTest`).
* Fewer than two finite values give no spread: std / confidence bounds are NaN and the result
  carries a flag (``Summary.note``, ``Interval.method == "insufficient-data"``); nothing raises.
* Constant data gives degenerate (zero-width) intervals, without warnings or NaN.

References (see docs/statistics.md for the formulas):

* Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice"
  (NeurIPS) -- IQM, percentile bootstrap CIs, probability of improvement (rliable).
* Bouthillier et al. 2021, "Accounting for Variance in Machine Learning Benchmarks" (MLSys) --
  per-source variance, binomial noise floor, P(A>B) decision rule.
* Summers & Dinneen 2021, "Nondeterminism and Instability in Neural Network Optimization" (ICML).
* Dodge et al. 2019, "Show Your Work: Improved Reporting of Experimental Results" (EMNLP) --
  expected validation performance (expected max over a budget of runs).
* Efron & Tibshirani 1993, "An Introduction to the Bootstrap" -- percentile bootstrap.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.stats

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_N_RESAMPLES",
    "DECISION_RULE",
    "ImprovementTest",
    "Interval",
    "Summary",
    "binomial_noise_floor",
    "bootstrap_ci",
    "describe",
    "expected_max",
    "expected_max_band",
    "iqm",
    "probability_of_improvement",
    "recommended_runs",
    "summarize_sources",
    "variance_shares",
]

#: Bootstrap resamples used when the caller does not say (scipy's default).
DEFAULT_N_RESAMPLES = 9999

#: Text of the decision rule applied by :func:`probability_of_improvement` (gamma = 0.75).
DECISION_RULE = (
    "Bouthillier et al. (MLSys 2021): 'A better' if the CI of P(A>B) has lower bound > 0.5 "
    "(significant) and upper bound > {gamma} (meaningful); 'B better' if upper bound < 0.5 and "
    "lower bound < {gamma_b}; otherwise 'inconclusive'."
)

INSUFFICIENT = "insufficient-data"
CONSTANT = "constant-data"


# --------------------------------------------------------------------------------------------
# helpers


def _as_1d(values: Any) -> np.ndarray:
    """Flatten ``values`` to a 1-d float64 array (no filtering)."""
    arr = np.asarray(values, dtype=np.float64)
    return arr.reshape(-1)


def _finite(values: Any) -> tuple[np.ndarray, int, int]:
    """(finite values, number of NaN, number of +-inf)."""
    arr = _as_1d(values)
    nan = np.isnan(arr)
    inf = np.isinf(arr)
    return arr[~(nan | inf)], int(nan.sum()), int(inf.sum())


def _rng_kwargs(seed: int | np.random.Generator | None) -> dict[str, Any]:
    """scipy >= 1.15 takes ``rng=``; older releases ``random_state=``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if "rng" in inspect.signature(scipy.stats.bootstrap).parameters:
        return {"rng": rng}
    return {"random_state": rng}  # pragma: no cover - scipy < 1.15


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _percentile_bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., Any],
    *,
    confidence: float,
    n_resamples: int,
    seed: int | np.random.Generator | None,
    paired: bool = False,
) -> tuple[float, float]:
    """scipy.stats.bootstrap(method='percentile'); degenerate-data warnings are expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = scipy.stats.bootstrap(
            data,
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            paired=paired,
            **_rng_kwargs(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


# --------------------------------------------------------------------------------------------
# point summaries


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of one sample of runs (see :func:`describe`).

    ``n`` counts every value given; ``n_finite`` those used; ``n_nan`` / ``n_inf`` those excluded.
    ``note`` is None when every statistic is defined, else says why some are NaN.
    """

    n: int
    n_finite: int
    n_nan: int
    n_inf: int
    mean: float
    std: float
    min: float
    max: float
    q05: float
    q25: float
    median: float
    q75: float
    q95: float
    iqm: float
    note: str | None = None

    @property
    def has_spread(self) -> bool:
        """True when at least two finite values were given, so ``std`` is defined."""
        return self.n_finite >= 2

    @property
    def n_excluded(self) -> int:
        """Values excluded as non-finite (NaN or +-inf)."""
        return self.n_nan + self.n_inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def iqm(values: Any, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean of the middle 50% of runs (Agarwal et al., NeurIPS 2021).

    Computed exactly as rliable does, ``scipy.stats.trim_mean(x, 0.25)``: ``int(0.25 * n)``
    values are cut from each end. With ``axis=None`` (the default) the input is flattened and
    non-finite values are excluded (NaN when none remain); with an explicit ``axis`` the call is
    vectorised for the bootstrap and NaN propagates as in numpy.
    """
    if axis is not None:
        return scipy.stats.trim_mean(np.asarray(values, dtype=np.float64), 0.25, axis=axis)
    finite, _, _ = _finite(values)
    if finite.size == 0:
        return float("nan")
    return float(scipy.stats.trim_mean(finite, 0.25))


def describe(values: Any) -> Summary:
    """Count, mean, std (ddof=1), min/max, 5/25/50/75/95% quantiles and IQM of a sample of runs.

    Quantiles use numpy's default (linear interpolation, Hyndman & Fan type 7). Non-finite values
    are counted in ``n_nan`` / ``n_inf`` and excluded from every statistic.
    """
    finite, n_nan, n_inf = _finite(values)
    n_total = finite.size + n_nan + n_inf
    nan = float("nan")
    note: str | None = None
    if finite.size == 0:
        note = "no finite values: every statistic is NaN"
        stats = dict.fromkeys(
            ("mean", "std", "min", "max", "q05", "q25", "median", "q75", "q95", "iqm"), nan
        )
    else:
        q = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95])
        std = float(np.std(finite, ddof=1)) if finite.size >= 2 else nan
        if finite.size < 2:
            note = "fewer than 2 finite values: no spread (std is NaN)"
        stats = {
            "mean": float(np.mean(finite)),
            "std": std,
            "min": float(np.min(finite)),
            "max": float(np.max(finite)),
            "q05": float(q[0]),
            "q25": float(q[1]),
            "median": float(q[2]),
            "q75": float(q[3]),
            "q95": float(q[4]),
            "iqm": float(scipy.stats.trim_mean(finite, 0.25)),
        }
    if note is None and n_nan + n_inf:
        note = f"{n_nan + n_inf} non-finite value(s) excluded"
    return Summary(
        n=n_total, n_finite=int(finite.size), n_nan=n_nan, n_inf=n_inf, note=note, **stats
    )


# --------------------------------------------------------------------------------------------
# confidence intervals


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` around ``point`` (see :func:`bootstrap_ci`).

    ``method`` is ``"percentile"`` (percentile bootstrap), ``"constant-data"`` (every finite value
    equal: the degenerate interval ``[c, c]``) or ``"insufficient-data"`` (fewer than two finite
    values: NaN bounds). ``n`` is the number of finite values used, ``n_excluded`` the
    non-finite values left out.
    """

    low: float
    high: float
    point: float
    confidence: float
    method: str
    n: int = 0
    n_excluded: int = 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_ci(
    values: Any,
    statistic: Callable[..., Any] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int | np.random.Generator | None = 0,
) -> Interval:
    """Percentile bootstrap CI of ``statistic`` over runs (Efron & Tibshirani 1993; rliable).

    Calls ``scipy.stats.bootstrap((x,), statistic, method="percentile", rng=default_rng(seed))``
    on the finite values ``x``; ``statistic`` may be vectorised (takes ``axis``) or not.
    Constant data gives ``[c, c]`` (method ``"constant-data"``); fewer than two finite values
    give NaN bounds (method ``"insufficient-data"``). Never raises on data.
    """
    _check_confidence(confidence)
    finite, n_nan, n_inf = _finite(values)
    excluded = n_nan + n_inf
    if finite.size == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, confidence, INSUFFICIENT, 0, excluded)
    point = float(statistic(finite))
    if finite.size < 2:
        nan = float("nan")
        return Interval(nan, nan, point, confidence, INSUFFICIENT, 1, excluded)
    if np.all(finite == finite[0]):
        return Interval(point, point, point, confidence, CONSTANT, int(finite.size), excluded)
    low, high = _percentile_bootstrap(
        (finite,), statistic, confidence=confidence, n_resamples=n_resamples, seed=seed
    )
    return Interval(low, high, point, confidence, "percentile", int(finite.size), excluded)


# --------------------------------------------------------------------------------------------
# variance decomposition and noise floors


def variance_shares(
    per_source: Mapping[str, Sequence[float]], reference: str = "all"
) -> dict[str, float]:
    """Each source's variance (ddof=1) as a share of the ``reference`` source's variance.

    ``per_source`` maps a source of randomness (``"init"``, ``"data"``, ...) to the metric of
    runs where only that source's seed varied; ``reference`` (default ``"all"``) is the sweep
    where every source varied. Following Bouthillier et al. (MLSys 2021), share = Var(source) /
    Var(all). Shares are *not* a partition: they need not sum to 1, and a single source often
    reaches a share near 1 on its own (Summers & Dinneen, ICML 2021). Sources with fewer than two
    finite runs, and every source when Var(all) is zero or undefined, get NaN -- except that a
    zero-variance source over a positive Var(all) gets 0.0.
    """
    if reference not in per_source:
        raise KeyError(
            f"variance_shares needs a {reference!r} sweep (every source varied) as the "
            f"denominator; got sources {sorted(per_source)}"
        )

    def _var(values: Sequence[float]) -> float:
        finite, _, _ = _finite(values)
        return float(np.var(finite, ddof=1)) if finite.size >= 2 else float("nan")

    variances = {name: _var(vals) for name, vals in per_source.items()}
    denominator = variances[reference]
    shares: dict[str, float] = {}
    for name, var in variances.items():
        if math.isnan(var) or math.isnan(denominator) or denominator <= 0.0:
            shares[name] = float("nan")
        else:
            shares[name] = var / denominator
    return shares


def binomial_noise_floor(accuracy: float, n_examples: int) -> float:
    """Std of an accuracy measured on ``n_examples`` i.i.d. test examples: sqrt(p(1-p)/n).

    The binomial sampling noise of the test set alone (Bouthillier et al., MLSys 2021);
    seed-to-seed differences below this floor are indistinguishable from test-set noise.
    """
    p = float(accuracy)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples!r}")
    return math.sqrt(p * (1.0 - p) / n_examples)


def recommended_runs(
    std: float,
    target_half_width: float,
    confidence: float = 0.95,
    method: Literal["normal", "t"] = "normal",
) -> int:
    """Runs needed so the CI of the mean has half-width ``target_half_width``; at least 2.

    ``"normal"``: n = ceil((z * std / hw)^2) with z = Phi^-1(1 - (1 - confidence) / 2).
    ``"t"``: the smallest n >= 2 with t_{n-1} * std / sqrt(n) <= hw (Student t; larger for small
    n). ``std`` comes from a pilot sweep; it must be finite (a pilot of fewer than two runs has
    none: run at least two first).
    """
    _check_confidence(confidence)
    std = float(std)
    hw = float(target_half_width)
    if not math.isfinite(std) or std < 0.0:
        raise ValueError(
            f"std must be finite and >= 0 (got {std!r}); a pilot sweep needs at least 2 runs"
        )
    if not (math.isfinite(hw) and hw > 0.0):
        raise ValueError(f"target_half_width must be finite and > 0, got {target_half_width!r}")
    alpha_half = (1.0 - confidence) / 2.0
    z = float(scipy.stats.norm.ppf(1.0 - alpha_half))
    n = max(2, math.ceil((z * std / hw) ** 2))
    if method == "normal":
        return n
    if method != "t":
        raise ValueError(f"method must be 'normal' or 't', got {method!r}")
    while scipy.stats.t.ppf(1.0 - alpha_half, n - 1) * std / math.sqrt(n) > hw:
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# expected max over a budget of runs (Dodge et al. 2019)


def _budgets(budgets: Sequence[int] | int) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(budgets))
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 1)):
        raise ValueError(f"budgets must be integers >= 1, got {budgets!r}")
    return arr.astype(np.int64)


def _max_weights(n_values: int, budgets: np.ndarray) -> np.ndarray:
    """w[b, i] = (i/N)^n_b - ((i-1)/N)^n_b: P(max of n_b draws is the i-th order statistic)."""
    cdf = np.arange(n_values + 1, dtype=np.float64) / n_values
    powered = cdf[None, :] ** budgets[:, None].astype(np.float64)
    return np.diff(powered, axis=1)


def expected_max(
    values: Any, budgets: Sequence[int] | int, higher_is_better: bool = True
) -> np.ndarray:
    """Expected best score of n runs drawn i.i.d. from the empirical distribution of ``values``.

    Dodge et al. (EMNLP 2019), "expected validation performance": with v_(1) <= ... <= v_(N)
    sorted and the empirical CDF F(v_(i)) = i/N,
    E[max of n] = sum_i v_(i) * ((i/N)^n - ((i-1)/N)^n). n = 1 gives the mean; the curve is
    non-decreasing in n and tends to max(values). ``higher_is_better=False`` gives the expected
    *minimum* (losses). Non-finite values are excluded; no finite values give NaN.
    """
    b = _budgets(budgets)
    finite, _, _ = _finite(values)
    if finite.size == 0:
        return np.full(b.shape, np.nan)
    sign = 1.0 if higher_is_better else -1.0
    ordered = np.sort(sign * finite)
    return sign * (_max_weights(ordered.size, b) @ ordered)


def expected_max_band(
    values: Any,
    budgets: Sequence[int] | int,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int | np.random.Generator | None = 0,
    higher_is_better: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap band ``(low, high)`` around :func:`expected_max`, per budget.

    Resamples the runs with replacement ``n_resamples`` times and recomputes the expected-max
    curve on each resample. Fewer than two finite values give NaN bands.
    """
    _check_confidence(confidence)
    b = _budgets(budgets)
    finite, _, _ = _finite(values)
    if finite.size < 2:
        nan = np.full(b.shape, np.nan)
        return nan, nan.copy()
    sign = 1.0 if higher_is_better else -1.0
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    idx = rng.integers(0, finite.size, size=(n_resamples, finite.size))
    resamples = np.sort(sign * finite[idx], axis=1)
    curves = sign * (resamples @ _max_weights(finite.size, b).T)  # (n_resamples, n_budgets)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(curves, [alpha, 1.0 - alpha], axis=0)
    return np.minimum(low, high), np.maximum(low, high)


# --------------------------------------------------------------------------------------------
# probability of improvement (Bouthillier et al. 2021; Agarwal et al. 2021)


@dataclass(frozen=True)
class ImprovementTest:
    """P(A > B) with a percentile bootstrap CI and the decision of Bouthillier et al. (2021).

    ``decision`` is ``"A better"``, ``"B better"`` or ``"inconclusive"``; ``rule`` states the rule
    applied. ``n_a`` / ``n_b`` are the finite runs used (pairs, when paired), ``n_excluded`` the
    runs (or pairs) left out as non-finite.
    """

    p: float
    ci_low: float
    ci_high: float
    decision: str
    rule: str
    confidence: float = 0.95
    gamma: float = 0.75
    paired: bool = True
    n_a: int = 0
    n_b: int = 0
    n_excluded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _p_unpaired(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann-Whitney U_A / (n*m) along ``axis``, by ranks of the pooled sample (ties 1/2)."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    b = np.moveaxis(np.asarray(b, dtype=np.float64), axis, -1)
    n, m = a.shape[-1], b.shape[-1]
    pooled = np.concatenate([a, b], axis=-1)
    ranks = scipy.stats.rankdata(pooled, axis=-1)  # average ranks for ties
    u_a = ranks[..., :n].sum(axis=-1) - n * (n + 1) / 2.0
    return u_a / (n * m)


def _p_paired(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Fraction of pairs with a > b, ties counting 1/2."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.mean((a > b) + 0.5 * (a == b), axis=axis)


def _decide(ci_low: float, ci_high: float, gamma: float) -> str:
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    if ci_low > 0.5 and ci_high > gamma:
        return "A better"
    if ci_high < 0.5 and ci_low < 1.0 - gamma:
        return "B better"
    return "inconclusive"


def probability_of_improvement(
    a: Any,
    b: Any,
    paired: bool = True,
    seed: int | np.random.Generator | None = 0,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = 0.95,
    gamma: float = 0.75,
) -> ImprovementTest:
    """P(A > B): the probability that a run of A scores higher than a run of B (higher = better).

    Unpaired: P = (1/(n m)) sum_i sum_j [a_i > b_j] + 1/2 [a_i = b_j], the Mann-Whitney U of A
    over n*m (Agarwal et al. 2021). Paired (same seeds for A and B, ``a[i]`` with ``b[i]``): the
    fraction of pairs with a_i > b_i, ties 1/2. The CI is a percentile bootstrap (pairs are
    resampled together when paired, each sample independently otherwise). Decision rule of
    Bouthillier et al. (MLSys 2021): "A better" when ci_low > 0.5 and ci_high > gamma (0.75);
    "B better" when ci_high < 0.5 and ci_low < 1 - gamma; else "inconclusive". For a metric
    where lower is better, pass the negated values. Non-finite runs (pairs) are excluded;
    fewer than two runs on either side give NaN bounds and "inconclusive".
    """
    _check_confidence(confidence)
    if not 0.5 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0.5, 1], got {gamma!r}")
    rule = DECISION_RULE.format(gamma=gamma, gamma_b=round(1.0 - gamma, 12))
    nan = float("nan")
    a_arr, b_arr = _as_1d(a), _as_1d(b)
    if paired:
        if a_arr.size != b_arr.size:
            raise ValueError(
                f"paired comparison needs as many runs of A as of B (same seeds); got "
                f"{a_arr.size} and {b_arr.size} -- pass paired=False for independent runs"
            )
        keep = np.isfinite(a_arr) & np.isfinite(b_arr)
        a_f, b_f = a_arr[keep], b_arr[keep]
        excluded = int((~keep).sum())
        stat = _p_paired
    else:
        a_f, b_f = a_arr[np.isfinite(a_arr)], b_arr[np.isfinite(b_arr)]
        excluded = int(a_arr.size - a_f.size + b_arr.size - b_f.size)
        stat = _p_unpaired
    common = dict(confidence=confidence, gamma=gamma, paired=paired, n_excluded=excluded)
    if a_f.size == 0 or b_f.size == 0:
        return ImprovementTest(nan, nan, nan, "inconclusive", rule, n_a=0, n_b=0, **common)
    p = float(stat(a_f, b_f))
    if a_f.size < 2 or b_f.size < 2:
        return ImprovementTest(
            p, nan, nan, "inconclusive", rule, n_a=int(a_f.size), n_b=int(b_f.size), **common
        )
    low, high = _percentile_bootstrap(
        (a_f, b_f),
        stat,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        paired=paired,
    )
    return ImprovementTest(
        p,
        low,
        high,
        _decide(low, high, gamma),
        rule,
        n_a=int(a_f.size),
        n_b=int(b_f.size),
        **common,
    )


# --------------------------------------------------------------------------------------------
# report tables


SUMMARY_COLUMNS = (
    "source",
    "metric",
    "n",
    "n_excluded",
    "mean",
    "std",
    "min",
    "max",
    "q25",
    "median",
    "q75",
    "iqm",
    "ci_low",
    "ci_high",
    "ci_method",
    "var_share",
)


def summarize_sources(
    table: pd.DataFrame,
    metric_cols: str | Sequence[str],
    source_col: str = "source",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    reference: str = "all",
) -> pd.DataFrame:
    """One row per (source, metric): n, mean, std, min, max, quartiles, IQM, CI of the mean, share.

    ``table`` holds one row per run, with the source whose seed varied in ``source_col``.
    ``n`` counts finite runs, ``n_excluded`` the non-finite ones (mask a value as NaN to leave
    its run out). ``ci_low``/``ci_high``/``ci_method`` come from :func:`bootstrap_ci` (mean,
    percentile). ``var_share`` is :func:`variance_shares` against the ``reference`` source (NaN
    for every row when the table has no such source). Sources keep their order of first
    appearance, and values their order in ``table``.
    """
    import pandas as pd

    metrics = [metric_cols] if isinstance(metric_cols, str) else list(metric_cols)
    missing = [c for c in [source_col, *metrics] if c not in table.columns]
    if missing:
        raise KeyError(f"summarize_sources: columns {missing} not in table {list(table.columns)}")
    groups = {
        str(name): group for name, group in table.groupby(source_col, sort=False, dropna=False)
    }
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        per_source = {
            name: group[metric].to_numpy(dtype=np.float64) for name, group in groups.items()
        }
        if reference in per_source:
            shares = variance_shares(per_source, reference=reference)
        else:
            shares = dict.fromkeys(per_source, float("nan"))
        for name, values in per_source.items():
            s = describe(values)
            ci = bootstrap_ci(
                values, np.mean, confidence=confidence, n_resamples=n_resamples, seed=seed
            )
            rows.append(
                {
                    "source": name,
                    "metric": metric,
                    "n": s.n_finite,
                    "n_excluded": s.n_excluded,
                    "mean": s.mean,
                    "std": s.std,
                    "min": s.min,
                    "max": s.max,
                    "q25": s.q25,
                    "median": s.median,
                    "q75": s.q75,
                    "iqm": s.iqm,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "ci_method": ci.method,
                    "var_share": shares[name],
                }
            )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
