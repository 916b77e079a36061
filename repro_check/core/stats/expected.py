"""Expected best score over a budget of runs (Dodge et al., EMNLP 2019)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from repro_check.core.stats._common import check_confidence
from repro_check.core.stats._common import finite as finite_values


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
    finite, _, _ = finite_values(values)
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
    check_confidence(confidence)
    b = _budgets(budgets)
    finite, _, _ = finite_values(values)
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
