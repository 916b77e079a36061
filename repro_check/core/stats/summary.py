"""Point summaries of one sample of runs: :func:`describe` and the interquartile mean."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.stats

from repro_check.core.stats._common import finite as finite_values


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
    finite, _, _ = finite_values(values)
    if finite.size == 0:
        return float("nan")
    return float(scipy.stats.trim_mean(finite, 0.25))


def describe(values: Any) -> Summary:
    """Count, mean, std (ddof=1), min/max, 5/25/50/75/95% quantiles and IQM of a sample of runs.

    Quantiles use numpy's default (linear interpolation, Hyndman & Fan type 7). Non-finite values
    are counted in ``n_nan`` / ``n_inf`` and excluded from every statistic.
    """
    finite, n_nan, n_inf = finite_values(values)
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
