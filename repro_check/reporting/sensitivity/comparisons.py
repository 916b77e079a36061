"""A vs B between the variants of one test, and rliable's view across tests.

*Variants* are tests that share their seeds: the parametrizations of one test (the sweep derives
their root seed from the test id without ``[...]``) or tests marked with one
``@pytest.mark.repro(pair="name")``. In the runs table they share a root seed. Run k of every
variant then used the same seeds, so A and B are compared run by run (paired) as well as as two
samples (unpaired). Pairing is checked, not assumed: when the recorded seeds of run k differ
between A and B, only the unpaired comparison is made, and a warning says which seed differed.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.seeding import pairing_id
from repro_check.reporting.sensitivity.model import (
    METRIC_PREFIX,
    REFERENCE_SOURCE,
    SensitivityWarning,
    metric_name,
)

if TYPE_CHECKING:
    import pandas as pd

    from repro_check.core.stats import Comparison, Interval, PerformanceProfile


@dataclass(frozen=True)
class VariantComparison:
    """A against B on one metric, over the runs of one source (``all`` by default)."""

    test_a: str
    test_b: str
    metric: str
    source: str
    higher_is_better: bool
    paired_seeds: bool
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    comparison: Comparison
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def variant_groups(df: pd.DataFrame) -> list[list[str]]:
    """Tests that share seeds, in order of first appearance: same root seed, or -- when the
    table has no root seeds -- the same id without its parametrization."""
    groups: dict[Any, list[str]] = {}
    for test, tdf in df.groupby("test", sort=False):
        roots = tdf["root_seed"].dropna().unique() if "root_seed" in tdf else []
        key = ("root", int(roots[0])) if len(roots) == 1 else ("id", pairing_id(str(test)))
        groups.setdefault(key, []).append(str(test))
    return [tests for tests in groups.values() if len(tests) >= 2]


def _by_k(df: pd.DataFrame, test: str, source: str, column: str) -> pd.Series:
    sel = df[(df["test"] == test) & (df["source"] == source)]
    if column not in sel.columns:
        return _nan_series(sel["k"].to_numpy())
    return sel[column].where(sel["status"] != "failed").set_axis(sel["k"].to_numpy())


def _nan_series(index: Any) -> pd.Series:
    import pandas as pd

    return pd.Series(np.nan, index=index, dtype=np.float64)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def seed_mismatch(a: Side, b: Side, source: str) -> str:
    """'' when run k of A and of B used the same seeds for every k both have; else why not."""
    columns = [c for c in a.frame.columns if c.startswith("seed.") and c in b.frame.columns]
    for column in ["root_seed", *columns]:
        if column not in a.frame.columns or column not in b.frame.columns:
            continue
        left, right = a.by_k(source, column), b.by_k(source, column)
        for k in sorted(set(left.index) & set(right.index)):
            x, y = left.get(k), right.get(k)
            if not (_missing(x) or _missing(y)) and x != y:
                return f"{column} differs at k={k} ({x} vs {y})"
    return ""


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a test's runs in a runs table (one sweep or one revision)."""

    frame: pd.DataFrame
    test: str

    def by_k(self, source: str, column: str) -> pd.Series:
        return _by_k(self.frame, self.test, source, column)


def compare_sides(
    a: Side,
    b: Side,
    column: str,
    source: str,
    higher_is_better: bool,
    confidence: float,
    mismatch: str,
) -> VariantComparison | None:
    """A against B on one metric column, paired by run index k unless the seeds differ."""
    from repro_check.core import stats

    left, right = a.by_k(source, column), b.by_k(source, column)
    if not (np.isfinite(left).any() and np.isfinite(right).any()):
        return None
    ks = sorted(set(left.index) | set(right.index))
    x = left.reindex(ks).to_numpy(dtype=np.float64)
    y = right.reindex(ks).to_numpy(dtype=np.float64)
    comparison = stats.compare_samples(
        x, y, paired=not mismatch, confidence=confidence, higher_is_better=higher_is_better
    )
    return VariantComparison(
        a.test,
        b.test,
        metric_name(column),
        source,
        higher_is_better,
        not mismatch,
        int(np.isfinite(x).sum()),
        int(np.isfinite(y).sum()),
        float(np.nanmean(x)),
        float(np.nanmean(y)),
        comparison,
        mismatch,
    )


def variant_comparisons(
    df: pd.DataFrame,
    directions: Mapping[str, bool],
    confidence: float,
    warns: list[SensitivityWarning],
    source: str = REFERENCE_SOURCE,
) -> list[VariantComparison]:
    """Every pair of variants, on every metric both recorded, over the runs of ``source``."""
    out: list[VariantComparison] = []
    metric_cols = [c for c in df.columns if c.startswith(METRIC_PREFIX)]
    for tests in variant_groups(df):
        for test_a, test_b in itertools.combinations(tests, 2):
            a, b = Side(df, test_a), Side(df, test_b)
            mismatch = seed_mismatch(a, b, source)
            if mismatch:
                warns.append(
                    SensitivityWarning(
                        "unpaired-variants",
                        f"{test_a} vs {test_b}: their runs did not use the same seeds "
                        f"({mismatch}); compared as independent samples only.",
                        test_a,
                        source=source,
                    )
                )
            for col in metric_cols:
                hib = directions.get(metric_name(col), True)
                result = compare_sides(a, b, col, source, hib, confidence, mismatch)
                if result is not None:
                    out.append(result)
    return out


# --------------------------------------------------------------------------------------------
# across tests (rliable)


@dataclass(frozen=True)
class Aggregate:
    """rliable's view of one metric across tasks (tests, or groups of variants): per method,
    the IQM of every run of every task with a stratified-bootstrap CI and a performance
    profile; per pair of methods, P(X > Y) averaged over the tasks both ran."""

    metric: str
    higher_is_better: bool
    tasks: list[str]
    methods: list[str]
    iqm: dict[str, Interval] = field(default_factory=dict)
    method_tasks: dict[str, int] = field(default_factory=dict)
    profiles: dict[str, PerformanceProfile] = field(default_factory=dict)
    improvements: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "tasks": self.tasks,
            "methods": self.methods,
            "iqm": {m: i.to_dict() for m, i in self.iqm.items()},
            "method_tasks": dict(self.method_tasks),
            "profiles": {
                m: {k: np.asarray(v).tolist() for k, v in asdict(p).items()}
                for m, p in self.profiles.items()
            },
            "improvements": [
                {**imp, "interval": imp["interval"].to_dict()} for imp in self.improvements
            ],
        }


_PARAMS = re.compile(r"\[(.*)\]$")


def _method_of(test: str) -> str:
    """A variant's method name: its parametrization id, else the test's own name."""
    match = _PARAMS.search(test)
    return match.group(1) if match else test.rpartition("::")[2]


def across_tests(
    df: pd.DataFrame,
    directions: Mapping[str, bool],
    confidence: float,
    n_resamples: int,
    seed: int,
    source: str = REFERENCE_SOURCE,
) -> list[Aggregate]:
    """One :class:`Aggregate` per metric that some method recorded on at least two tasks."""
    from repro_check.core import stats

    tasks: dict[str, dict[str, str]] = {}  # task -> {method: test}
    for test in dict.fromkeys(df["test"]):
        tasks.setdefault(pairing_id(str(test)), {})[_method_of(str(test))] = str(test)
    for group in variant_groups(df):  # pair="name" groups: one task with several methods
        task = " / ".join(group)
        for test in group:
            tasks.get(pairing_id(test), {}).pop(_method_of(test), None)
            tasks.setdefault(task, {})[_method_of(test)] = test
    tasks = {name: methods for name, methods in tasks.items() if methods}
    out: list[Aggregate] = []
    for col in [c for c in df.columns if c.startswith(METRIC_PREFIX)]:
        name = metric_name(col)
        hib = directions.get(name, True)
        scores: dict[str, dict[str, np.ndarray]] = {}  # method -> task -> values
        for task, methods in tasks.items():
            for method, test in methods.items():
                values = _by_k(df, test, source, col).to_numpy(dtype=np.float64)
                values = values[np.isfinite(values)]
                if values.size:
                    scores.setdefault(method, {})[task] = values
        # a method seen on one task only has nothing to aggregate
        scores = {method: per for method, per in scores.items() if len(per) >= 2}
        used = sorted({t for per in scores.values() for t in per}, key=list(tasks).index)
        if not scores:
            continue
        agg = Aggregate(name, hib, used, list(scores))
        for method, per in scores.items():
            runs = list(per.values())
            agg.method_tasks[method] = len(runs)
            agg.iqm[method] = stats.stratified_iqm_ci(runs, confidence, n_resamples, seed)
            agg.profiles[method] = stats.performance_profile(
                runs, None, hib, confidence, n_resamples, seed
            )
        sign = 1.0 if hib else -1.0
        for x, y in itertools.combinations(scores, 2):
            shared = [t for t in used if t in scores[x] and t in scores[y]]
            if not shared:
                continue
            interval = stats.aggregate_probability_of_improvement(
                [sign * scores[x][t] for t in shared],
                [sign * scores[y][t] for t in shared],
                confidence,
                n_resamples,
                seed,
            )
            agg.improvements.append({"x": x, "y": y, "tasks": len(shared), "interval": interval})
        out.append(agg)
    return out
