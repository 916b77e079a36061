"""The per-source report table: one row per (source, metric)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.stats.intervals import iqm_ci, mean_ci, std_ci
from repro_check.core.stats.summary import describe
from repro_check.core.stats.variance import variance_share_cis, variance_shares

if TYPE_CHECKING:
    import pandas as pd

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
    "std_low",
    "std_high",
    "iqm_low",
    "iqm_high",
    "var_share",
    "share_low",
    "share_high",
)


def summarize_sources(
    table: pd.DataFrame,
    metric_cols: str | Sequence[str],
    source_col: str = "source",
    confidence: float = 0.95,
    reference: str = "all",
) -> pd.DataFrame:
    """One row per (source, metric): n, mean, std, min, max, quartiles, IQM, their CIs, share.

    ``table`` holds one row per run, with the source whose seed varied in ``source_col``.
    ``n`` counts finite runs, ``n_excluded`` the non-finite ones (mask a value as NaN to leave
    its run out). Intervals: the mean's :func:`mean_ci` (t; ``ci_method``), the std's
    :func:`std_ci` (chi-square), the IQM's :func:`iqm_ci` (trimmed t). ``var_share`` is
    :func:`variance_shares` against the ``reference`` source with its F interval
    (``share_low``/``share_high``); NaN for every row when the table has no such source.
    Sources keep their order of first appearance, and values their order in ``table``.
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
    nan = float("nan")
    for metric in metrics:
        per_source = {
            name: group[metric].to_numpy(dtype=np.float64) for name, group in groups.items()
        }
        if reference in per_source:
            shares = variance_shares(per_source, reference=reference)
            share_cis = variance_share_cis(per_source, reference, confidence)
        else:
            shares, share_cis = dict.fromkeys(per_source, nan), {}
        for name, values in per_source.items():
            s = describe(values)
            ci = mean_ci(values, confidence)
            sd = std_ci(values, confidence)
            trimmed = iqm_ci(values, confidence)
            share_ci = share_cis.get(name)
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
                    "std_low": sd.low,
                    "std_high": sd.high,
                    "iqm_low": trimmed.low,
                    "iqm_high": trimmed.high,
                    "var_share": shares[name],
                    "share_low": share_ci.low if share_ci else nan,
                    "share_high": share_ci.high if share_ci else nan,
                }
            )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
