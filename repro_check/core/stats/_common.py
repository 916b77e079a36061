"""Helpers shared by the statistics modules: input cleaning, bootstrap plumbing, labels."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.stats

#: Bootstrap resamples used when the caller does not say (scipy's default).
DEFAULT_N_RESAMPLES = 9999
#: ``Interval.method`` when fewer than two finite values were given (NaN bounds).
INSUFFICIENT = "insufficient-data"
#: ``Interval.method`` when every finite value is equal (the degenerate interval ``[c, c]``).
CONSTANT = "constant-data"


def as_1d(values: Any) -> np.ndarray:
    """Flatten ``values`` to a 1-d float64 array (no filtering)."""
    arr = np.asarray(values, dtype=np.float64)
    return arr.reshape(-1)


def finite(values: Any) -> tuple[np.ndarray, int, int]:
    """(finite values, number of NaN, number of +-inf)."""
    arr = as_1d(values)
    nan = np.isnan(arr)
    inf = np.isinf(arr)
    return arr[~(nan | inf)], int(nan.sum()), int(inf.sum())


def rng_kwargs(seed: int | np.random.Generator | None) -> dict[str, Any]:
    """scipy >= 1.15 takes ``rng=``; older releases ``random_state=``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if "rng" in inspect.signature(scipy.stats.bootstrap).parameters:
        return {"rng": rng}
    return {"random_state": rng}  # pragma: no cover - scipy < 1.15


def check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def t_quantile(confidence: float, df: float) -> float:
    """The two-sided Student t quantile t_{1 - alpha/2, df}."""
    return float(scipy.stats.t.ppf(0.5 + confidence / 2.0, df))


def scipy_bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., Any],
    *,
    confidence: float,
    n_resamples: int,
    seed: int | np.random.Generator | None,
    paired: bool = False,
    method: str = "percentile",
) -> tuple[float, float]:
    """``scipy.stats.bootstrap``; degenerate-data warnings are expected on seed sweeps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = scipy.stats.bootstrap(
            data,
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            paired=paired,
            **rng_kwargs(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
