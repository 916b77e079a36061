"""Confidence intervals that hold at the small run counts of seed sweeps.

A sweep has 2 to 30 runs per source. The percentile bootstrap is too narrow there (measured
coverage of a nominal 95 % interval for the mean of normal data: 76 % at n = 3, 80 % at n = 5,
87 % at n = 8; at n = 2 it is [min, max]), so the report uses intervals whose coverage is exact
for normal data at any n and close to nominal otherwise:

========================= ================================================= ==================
statistic                 interval                                          ``method``
========================= ================================================= ==================
mean                      Student t: mean +- t_{n-1} s / sqrt(n)            ``"t"``
std                       chi-square: s sqrt((n-1) / chi2_{n-1})            ``"chi2"``
IQM (25 % trimmed mean)   Tukey-McLaughlin / Yuen: winsorized SE, t_{h-1}  ``"trimmed-t"``
ratio of two variances    F: (s1^2/s2^2) / F_{n1-1, n2-1}                   ``"F"``
binomial proportion       Wilson score                                      ``"wilson"``
========================= ================================================= ==================

``bootstrap_ci`` (percentile or BCa) stays for statistics without a closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats

from repro_check.core.stats._common import (
    CONSTANT,
    DEFAULT_N_RESAMPLES,
    INSUFFICIENT,
    check_confidence,
    finite,
    scipy_bootstrap,
    t_quantile,
)


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` around ``point``.

    ``method`` names how it was computed (``"t"``, ``"chi2"``, ``"trimmed-t"``, ``"F"``,
    ``"wilson"``, ``"percentile"``, ``"BCa"``), or is ``"constant-data"`` (every finite value
    equal: ``[c, c]``) or ``"insufficient-data"`` (too few finite values: NaN bounds). ``n`` is
    the number of finite values used, ``n_excluded`` the non-finite values left out.
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

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _degenerate(
    values: Any, point_of: Callable[[np.ndarray], float], confidence: float, min_n: int = 2
) -> tuple[np.ndarray, int, Interval | None]:
    """The finite values, the count excluded, and the interval when it is degenerate."""
    check_confidence(confidence)
    x, n_nan, n_inf = finite(values)
    excluded = n_nan + n_inf
    nan = float("nan")
    if x.size == 0:
        return x, excluded, Interval(nan, nan, nan, confidence, INSUFFICIENT, 0, excluded)
    point = float(point_of(x))
    if x.size < min_n:
        return x, excluded, Interval(nan, nan, point, confidence, INSUFFICIENT, x.size, excluded)
    if np.all(x == x[0]):
        return x, excluded, Interval(point, point, point, confidence, CONSTANT, x.size, excluded)
    return x, excluded, None


def _sample_std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size >= 2 else float("nan")


def mean_ci(values: Any, confidence: float = 0.95) -> Interval:
    """Student t interval of the mean: mean +- t_{1-alpha/2, n-1} * s / sqrt(n).

    Exact for normal data at every n >= 2 (the percentile bootstrap is not: see the module
    docstring); by the central limit theorem close to nominal for other shapes.
    """
    x, excluded, degenerate = _degenerate(values, np.mean, confidence)
    if degenerate is not None:
        return degenerate
    mean = float(np.mean(x))
    half = t_quantile(confidence, x.size - 1) * float(np.std(x, ddof=1)) / math.sqrt(x.size)
    return Interval(mean - half, mean + half, mean, confidence, "t", x.size, excluded)


def std_ci(values: Any, confidence: float = 0.95) -> Interval:
    """Chi-square interval of the standard deviation (ddof=1), exact for normal data:
    [s sqrt((n-1)/chi2_{1-alpha/2}), s sqrt((n-1)/chi2_{alpha/2})], n - 1 degrees of freedom."""
    x, excluded, degenerate = _degenerate(values, _sample_std, confidence)
    if degenerate is not None:
        return degenerate
    s = float(np.std(x, ddof=1))
    df = x.size - 1
    alpha = 1.0 - confidence
    low = s * math.sqrt(df / scipy.stats.chi2.ppf(1.0 - alpha / 2.0, df))
    high = s * math.sqrt(df / scipy.stats.chi2.ppf(alpha / 2.0, df))
    return Interval(low, high, s, confidence, "chi2", x.size, excluded)


def iqm_ci(values: Any, confidence: float = 0.95) -> Interval:
    """Interval of the IQM (25 % trimmed mean, as rliable cuts it) by Tukey & McLaughlin (1963)
    / Yuen (1974): g = floor(n/4) runs cut from each end, h = n - 2g kept,
    SE = sqrt((n-1) s_w^2 / (h (h-1))) with s_w the std of the winsorized sample, and
    IQM +- t_{1-alpha/2, h-1} SE. With n < 4 nothing is cut and it is the t interval."""
    x, excluded, degenerate = _degenerate(
        values, lambda v: scipy.stats.trim_mean(v, 0.25), confidence
    )
    if degenerate is not None:
        return degenerate
    n = x.size
    g = int(0.25 * n)
    h = n - 2 * g
    ordered = np.sort(x)
    winsorized = np.clip(ordered, ordered[g], ordered[n - g - 1])
    s_w2 = float(np.var(winsorized, ddof=1))
    se = math.sqrt((n - 1) * s_w2 / (h * (h - 1)))
    point = float(scipy.stats.trim_mean(x, 0.25))
    half = t_quantile(confidence, h - 1) * se
    method = "trimmed-t" if g else "t"
    return Interval(point - half, point + half, point, confidence, method, n, excluded)


def variance_ratio_ci(numerator: Any, denominator: Any, confidence: float = 0.95) -> Interval:
    """F interval of Var(numerator) / Var(denominator) for two *independent* normal samples:
    r / F_{1-alpha/2}(n1-1, n2-1) .. r / F_{alpha/2}(n1-1, n2-1), with r the ratio of the sample
    variances. A zero denominator variance, or fewer than two values on a side, gives NaN."""
    check_confidence(confidence)
    a, na_nan, na_inf = finite(numerator)
    b, nb_nan, nb_inf = finite(denominator)
    excluded = na_nan + na_inf + nb_nan + nb_inf
    nan = float("nan")
    if a.size < 2 or b.size < 2:
        return Interval(nan, nan, nan, confidence, INSUFFICIENT, min(a.size, b.size), excluded)
    va, vb = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    if vb <= 0.0:
        return Interval(nan, nan, nan, confidence, CONSTANT, min(a.size, b.size), excluded)
    ratio = va / vb
    if va == 0.0:
        return Interval(0.0, 0.0, 0.0, confidence, CONSTANT, min(a.size, b.size), excluded)
    alpha = 1.0 - confidence
    d1, d2 = a.size - 1, b.size - 1
    low = ratio / scipy.stats.f.ppf(1.0 - alpha / 2.0, d1, d2)
    high = ratio / scipy.stats.f.ppf(alpha / 2.0, d1, d2)
    return Interval(low, high, ratio, confidence, "F", min(a.size, b.size), excluded)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a binomial proportion ``successes / n`` (Wilson 1927).

    ``successes`` may be fractional (ties counted as one half). Unlike the Wald interval it
    never leaves [0, 1] and does not collapse to a point at 0 or n successes.
    """
    check_confidence(confidence)
    if n < 1:
        nan = float("nan")
        return Interval(nan, nan, nan, confidence, INSUFFICIENT, 0, 0)
    if not 0.0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes!r}")
    p = successes / n
    z = float(scipy.stats.norm.ppf(0.5 + confidence / 2.0))
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return Interval(low, high, p, confidence, "wilson", int(n), 0)


def bootstrap_ci(
    values: Any,
    statistic: Callable[..., Any] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int | np.random.Generator | None = 0,
    method: Literal["percentile", "BCa"] = "percentile",
) -> Interval:
    """Bootstrap CI of ``statistic`` over runs (Efron & Tibshirani 1993; rliable).

    Calls ``scipy.stats.bootstrap((x,), statistic, method=method, rng=default_rng(seed))`` on
    the finite values ``x``; ``statistic`` may be vectorised (takes ``axis``) or not. Too
    narrow below about ten runs: prefer :func:`mean_ci`, :func:`std_ci`, :func:`iqm_ci`.
    Constant data gives ``[c, c]``; fewer than two finite values NaN bounds. Never raises on
    data.
    """
    x, excluded, degenerate = _degenerate(values, statistic, confidence)
    if degenerate is not None:
        return degenerate
    low, high = scipy_bootstrap(
        (x,),
        statistic,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        method=method,
    )
    point = float(statistic(x))
    return Interval(low, high, point, confidence, method, int(x.size), excluded)


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
    check_confidence(confidence)
    std = float(std)
    hw = float(target_half_width)
    if not math.isfinite(std) or std < 0.0:
        raise ValueError(
            f"std must be finite and >= 0 (got {std!r}); a pilot sweep needs at least 2 runs"
        )
    if not (math.isfinite(hw) and hw > 0.0):
        raise ValueError(f"target_half_width must be finite and > 0, got {target_half_width!r}")
    z = float(scipy.stats.norm.ppf(0.5 + confidence / 2.0))
    n = max(2, math.ceil((z * std / hw) ** 2))
    if method == "normal":
        return n
    if method != "t":
        raise ValueError(f"method must be 'normal' or 't', got {method!r}")
    while t_quantile(confidence, n - 1) * std / math.sqrt(n) > hw:
        n += 1
    return n
