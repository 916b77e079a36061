"""A against B from runs tables: two tests of one sweep, or two revisions of the same sweep.

Pairs are made by run index ``k`` (and, between revisions, by test and source too) and checked
against the seeds each run recorded: runs that did not share their seeds are compared as
independent samples only, and the result says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from repro_check.reporting.sensitivity.comparisons import (
    Side,
    VariantComparison,
    compare_sides,
    seed_mismatch,
)
from repro_check.reporting.sensitivity.model import (
    METRIC_PREFIX,
    REFERENCE_SOURCE,
    is_higher_better,
    metric_column,
    metric_name,
    normalize_runs,
    ordered_sources,
)

if TYPE_CHECKING:
    import pandas as pd


def decision_rule(gamma: float = 0.75) -> str:
    from repro_check.core import stats

    return stats.decision_rule(gamma)


def _require(df: pd.DataFrame, test: str, source: str, column: str) -> None:
    if column not in df.columns:
        metrics = [metric_name(c) for c in df.columns if c.startswith(METRIC_PREFIX)]
        raise KeyError(f"no metric {metric_name(column)!r} in runs; metrics: {metrics}")
    if df[(df["test"] == test) & (df["source"] == source)].empty:
        have = sorted(set(df.loc[df["test"] == test, "source"]))
        raise KeyError(
            f"no runs of test {test!r} with source {source!r}"
            + (f" (its sources: {have})" if have else f"; tests: {sorted(set(df['test']))}")
        )


def compare(
    runs: pd.DataFrame,
    test_a: str,
    test_b: str,
    metric: str,
    source: str = REFERENCE_SOURCE,
    higher_is_better: bool = True,
    *,
    confidence: float = 0.95,
) -> VariantComparison:
    """A against B on one metric and source of one sweep: P(A > B), mean difference and effect
    size, paired by ``k`` (when the runs recorded the same seeds) and unpaired.

    A k present on one side only, a failed run, or a non-finite value drops that pair (counted
    in ``n_excluded``). ``higher_is_better=False`` (losses): lower values win P(A > B). The
    decision follows :func:`repro_check.core.stats.decision_rule` -- none below Noether's
    sample size.
    """
    df = normalize_runs(runs)
    column = metric_column(metric)
    for test in (test_a, test_b):
        _require(df, test, source, column)
    a, b = Side(df, test_a), Side(df, test_b)
    mismatch = seed_mismatch(a, b, source)
    result = compare_sides(a, b, column, source, higher_is_better, confidence, mismatch)
    if result is None:
        raise KeyError(f"no finite {metric_name(metric)!r} on one side of {test_a} vs {test_b}")
    return result


def compare_revisions(
    runs_a: pd.DataFrame,
    runs_b: pd.DataFrame,
    *,
    tests: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
    confidence: float = 0.95,
) -> list[VariantComparison]:
    """Two sweeps of the same tests (before and after a change): every test, metric and source
    both have, run k of A against run k of B (a pair when they used the same seeds).

    Raises ``ValueError`` when the two share no test (nothing to compare)."""
    a_df, b_df = normalize_runs(runs_a), normalize_runs(runs_b)
    common = [t for t in dict.fromkeys(a_df["test"]) if t in set(b_df["test"])]
    if tests:
        common = [t for t in common if t in set(tests)]
    if not common:
        raise ValueError(
            f"the two runs tables share no test{' among ' + ', '.join(tests) if tests else ''}: "
            f"A has {sorted(set(a_df['test']))[:5]}, B has {sorted(set(b_df['test']))[:5]}"
        )
    wanted = {metric_column(m) for m in metrics} if metrics else None
    out: list[VariantComparison] = []
    for test in common:
        a, b = Side(a_df, test), Side(b_df, test)
        both = set(b_df.loc[b_df["test"] == test, "source"])
        for source in ordered_sources(a_df.loc[a_df["test"] == test, "source"]):
            if source not in both or (sources and source not in sources):
                continue
            mismatch = seed_mismatch(a, b, source)
            for column in [c for c in a_df.columns if c.startswith(METRIC_PREFIX)]:
                if column not in b_df.columns or (wanted and column not in wanted):
                    continue
                hib = is_higher_better(metric_name(column), higher_is_better)
                result = compare_sides(a, b, column, source, hib, confidence, mismatch)
                if result is not None:
                    out.append(result)
    return out
