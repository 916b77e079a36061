"""P(A > B) between two tests of one sweep, paired by run index ``k``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from repro_check.reporting.sensitivity.model import (
    METRIC_PREFIX,
    REFERENCE_SOURCE,
    metric_column,
    metric_name,
    normalize_runs,
)

if TYPE_CHECKING:
    import pandas as pd

    from repro_check.core import stats


def decision_rule(gamma: float = 0.75) -> str:
    from repro_check.core import stats

    return stats.DECISION_RULE.format(gamma=gamma, gamma_b=round(1.0 - gamma, 12))


def compare(
    runs: pd.DataFrame,
    test_a: str,
    test_b: str,
    metric: str,
    source: str = REFERENCE_SOURCE,
    higher_is_better: bool = True,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    gamma: float = 0.75,
) -> stats.ImprovementTest:
    """P(A > B) between the runs of ``test_a`` and ``test_b`` for one source, paired by ``k``.

    Run ``k`` of A is paired with run ``k`` of B (the same perturbation index). A k present on
    one side only, a failed run, or a non-finite value drops that pair, counted in
    ``n_excluded``. ``higher_is_better=False`` (losses) negates both sides, so "A better" always
    means A is better. Decision rule: :data:`repro_check.core.stats.DECISION_RULE`.
    """
    from repro_check.core import stats

    df = normalize_runs(runs)
    col = metric_column(metric)
    if col not in df.columns:
        metrics = [metric_name(c) for c in df.columns if c.startswith(METRIC_PREFIX)]
        raise KeyError(f"no metric {metric_name(metric)!r} in runs; metrics: {metrics}")

    def side(test: str) -> pd.Series:
        sel = df[(df["test"] == test) & (df["source"] == source)]
        if sel.empty:
            have = sorted(set(df.loc[df["test"] == test, "source"]))
            raise KeyError(
                f"no runs of test {test!r} with source {source!r}"
                + (f" (its sources: {have})" if have else f"; tests: {sorted(set(df['test']))}")
            )
        values = sel[col].where(sel["status"] != "failed")
        return values.set_axis(sel["k"].to_numpy())

    a, b = side(test_a), side(test_b)
    ks = sorted(set(a.index) | set(b.index))
    sign = 1.0 if higher_is_better else -1.0
    a_vals = sign * a.reindex(ks).to_numpy(dtype=np.float64)
    b_vals = sign * b.reindex(ks).to_numpy(dtype=np.float64)
    return stats.probability_of_improvement(
        a_vals,
        b_vals,
        paired=True,
        seed=seed,
        n_resamples=n_resamples,
        confidence=confidence,
        gamma=gamma,
    )
