"""The data model of a seed-sensitivity analysis: the runs table, its validation, the result.

See :mod:`repro_check.reporting.sensitivity` for the input contract.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.stats.tables import SUMMARY_COLUMNS as STATS_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "repro-check/sensitivity"
SCHEMA_VERSION = 2
REFERENCE_SOURCE = "all"
#: Source name of a crossed design's runs: ``init+data`` (repro_check.orchestration.sweep).
CROSS = "+"
METRIC_PREFIX = "metric."
STATUSES = ("ok", "failed", "nan")
REQUIRED_COLUMNS = ("test", "source", "k", "status")
RUN_COLUMNS = ("test", "source", "k", "status", "root_seed", "perturbation", "command", "error")
RECOMMENDED_RUNS_METHOD = "t"
DEFAULT_TARGET_RULE = "default: half the std of the 'all' sweep, 0.5 * std(all)"
#: How each interval of the report is computed (repro_check.core.stats.intervals).
INTERVAL_METHODS = {
    "mean": "Student t",
    "std": "chi-square",
    "iqm": "Tukey-McLaughlin trimmed-mean t",
    "share": "F (ratio of two independent variances)",
    "test set": "Wilson score (binomial, n_examples)",
    "P(A>B)": "Wilson (paired) / Newcombe score (unpaired)",
    "mean difference": "paired t / Welch t",
    "expected max": "percentile bootstrap",
    "across tests": "stratified percentile bootstrap (rliable)",
    "crossed shares": "two-way bootstrap (rows and columns resampled)",
}

#: One row per (test, metric, source): run counts, then ``stats.summarize_sources``'s columns,
#: then the noise floor and the runs needed.
SUMMARY_COLUMNS = (
    "test",
    "metric",
    "source",
    "n_runs",
    "n",
    "n_failed",
    "n_nan",
    *(c for c in STATS_COLUMNS if c not in ("source", "metric", "n", "n_excluded")),
    "noise_floor",
    "wilson_low",
    "wilson_high",
    "target_half_width",
    "recommended_runs",
)
CURVE_COLUMNS = ("test", "metric", "source", "budget", "expected", "low", "high")

_LOWER_IS_BETTER = re.compile(
    r"(^|[^a-z])(loss|error|err|nll|perplexity|ppl|mse|mae|rmse|wer|cer|bpd)([^a-z]|$)|loss$",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------------
# data model


@dataclass(frozen=True)
class SensitivityWarning:
    """Something a reader of the report must know (``kind`` is a stable machine-readable tag).

    Kinds: ``no-spread`` (fewer than 2 usable runs), ``failed-runs``, ``nan-runs``,
    ``unused-source`` (given in ``sources_unused``), ``constant-source`` (zero variance while
    ``all`` varies: the test probably never asks for that source), ``constant-metric`` (``all``
    itself does not vary), ``no-reference`` (no ``all`` sweep), ``no-metrics``,
    ``below-noise-floor``, ``noise-floor-unavailable``.
    """

    kind: str
    message: str
    test: str
    source: str | None = None
    metric: str | None = None

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SensitivityAnalysis:
    """Everything :func:`analyze` computed; render it with :func:`write_report` /
    :func:`terminal_table`.

    ``summary`` has one row per (test, metric, source) with :data:`SUMMARY_COLUMNS`;
    ``curves`` one row per (test, metric, budget) of the expected-best curve on the ``all``
    sweep (:data:`CURVE_COLUMNS`); ``runs`` is the validated input (sorted by test, source, k).
    """

    summary: pd.DataFrame
    curves: pd.DataFrame
    warnings: list[SensitivityWarning]
    runs: pd.DataFrame
    confidence: float
    n_resamples: int
    seed: int
    higher_is_better: dict[str, bool]
    target_rule: str
    accuracy_examples: dict[str, dict[str, int]] = field(default_factory=dict)
    #: A vs B for each pair of variants (tests sharing seeds), per metric: VariantComparison.
    comparisons: list[Any] = field(default_factory=list)
    #: The two-way split of each crossed design, per test and metric: CrossedResult.
    crossed: list[Any] = field(default_factory=list)
    #: rliable's view across tests, per metric: Aggregate.
    aggregates: list[Any] = field(default_factory=list)
    #: Tests whose outcomes were declared with repro.record_outcome (None: not known).
    declared: dict[str, list[str]] | None = None

    @property
    def tests(self) -> list[str]:
        """Tests with one-at-a-time runs (a crossed design's runs are in ``crossed``)."""
        one_at_a_time = ~self.runs["source"].str.contains(CROSS, regex=False)
        return list(dict.fromkeys(self.runs.loc[one_at_a_time, "test"].tolist()))

    def metrics(self, test: str) -> list[str]:
        rows = self.summary[self.summary["test"] == test]
        return list(dict.fromkeys(rows["metric"].tolist()))

    def sources(self, test: str) -> list[str]:
        return ordered_sources(self.runs.loc[self.runs["test"] == test, "source"])

    def rows(self, test: str, metric: str) -> pd.DataFrame:
        """The summary rows of one test and metric, one per source (``all`` last)."""
        s = self.summary
        return s[(s["test"] == test) & (s["metric"] == metric_name(metric))]

    def row(self, test: str, metric: str, source: str) -> dict[str, Any]:
        rows = self.rows(test, metric)
        match = rows[rows["source"] == source]
        if match.empty:
            raise KeyError(
                f"no summary row for test {test!r}, metric {metric!r}, source {source!r}"
            )
        return match.iloc[0].to_dict()

    def curve(self, test: str, metric: str) -> pd.DataFrame:
        c = self.curves
        return c[(c["test"] == test) & (c["metric"] == metric_name(metric))]

    def values(
        self, test: str, metric: str, source: str, *, keep_missing: bool = False
    ) -> np.ndarray:
        """The values used for (test, metric, source): finite, from non-failed runs, k order
        (``keep_missing``: one value per run, NaN where excluded)."""
        return usable_values(self.runs, test, source, metric_column(metric), keep_missing)

    def settings(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "intervals": dict(INTERVAL_METHODS),
            "reference_source": REFERENCE_SOURCE,
            "target_half_width_rule": self.target_rule,
            "recommended_runs_method": RECOMMENDED_RUNS_METHOD,
            "higher_is_better": dict(self.higher_is_better),
            "accuracy_examples": self.accuracy_examples,
        }


# --------------------------------------------------------------------------------------------
# input handling


def metric_name(metric: str) -> str:
    return metric[len(METRIC_PREFIX) :] if metric.startswith(METRIC_PREFIX) else metric


def metric_column(metric: str) -> str:
    return metric if metric.startswith(METRIC_PREFIX) else METRIC_PREFIX + metric


def ordered_sources(values: Iterable[Any]) -> list[str]:
    """Sources in order of first appearance, with the ``all`` reference last."""
    order = [str(v) for v in dict.fromkeys(values)]
    if REFERENCE_SOURCE in order:
        order.remove(REFERENCE_SOURCE)
        order.append(REFERENCE_SOURCE)
    return order


def normalize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Validate the input contract; return a copy sorted by (test, source, k), stable."""
    import pandas as pd

    if not isinstance(runs, pd.DataFrame):
        raise TypeError(f"runs must be a pandas DataFrame, got {type(runs).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in runs.columns]
    if missing:
        raise KeyError(
            f"runs is missing required column(s) {missing}; it has {list(runs.columns)} "
            f"(see repro_check.reporting.sensitivity for the input contract)"
        )
    df = runs.copy()
    for col, default in (
        ("root_seed", None),
        ("perturbation", None),
        ("command", ""),
        ("error", ""),
    ):
        if col not in df.columns:
            df[col] = default
    df["test"] = df["test"].astype(str)
    df["source"] = df["source"].astype(str)
    if df["status"].isna().any():
        raise ValueError(f"runs.status has missing values; use one of {list(STATUSES)}")
    df["status"] = df["status"].astype(str).str.strip().str.lower()
    bad = sorted(set(df["status"]) - set(STATUSES))
    if bad:
        raise ValueError(f"runs.status must be one of {list(STATUSES)}; found {bad}")
    if df["k"].isna().any():
        raise ValueError("runs.k has missing values; every run needs its index k")
    df["k"] = df["k"].astype("int64")
    df["command"] = df["command"].fillna("").astype(str)
    df["error"] = df["error"].fillna("").astype(str)
    dupes = df.duplicated(["test", "source", "k"], keep=False)
    if dupes.any():
        first = df.loc[dupes, ["test", "source", "k"]].iloc[0].tolist()
        raise ValueError(f"runs has duplicate (test, source, k) rows, e.g. {first}")
    metric_cols = [c for c in df.columns if str(c).startswith(METRIC_PREFIX)]
    for col in metric_cols:
        df[col] = df[col].astype("float64")
    ordered = [*RUN_COLUMNS, *metric_cols]
    extra = [c for c in df.columns if c not in ordered]
    df = df[ordered + extra]
    test_rank = {t: i for i, t in enumerate(dict.fromkeys(df["test"]))}
    df["_t"] = df["test"].map(test_rank)
    df["_s"] = 0
    for _test, group in df.groupby("test", sort=False):
        rank = {s: i for i, s in enumerate(ordered_sources(group["source"]))}
        df.loc[group.index, "_s"] = group["source"].map(rank)
    df = df.sort_values(["_t", "_s", "k"], kind="stable").drop(columns=["_t", "_s"])
    return df.reset_index(drop=True)


def usable_values(
    df: pd.DataFrame, test: str, source: str, column: str, keep_missing: bool = False
) -> np.ndarray:
    if column not in df.columns:
        return np.empty(0)
    sel = df[(df["test"] == test) & (df["source"] == source)].sort_values("k", kind="stable")
    vals = sel[column].where(sel["status"] != "failed").to_numpy(dtype=np.float64)
    return vals if keep_missing else vals[np.isfinite(vals)]


def lookup(table: Mapping[str, Mapping[str, Any]] | None, test: str, metric: str) -> Any:
    if not table:
        return None
    per_test = table.get(test)
    if per_test is None:
        per_test = table.get("*")
    if not per_test:
        return None
    for key in (metric, METRIC_PREFIX + metric):
        if key in per_test:
            return per_test[key]
    return None


def is_higher_better(metric: str, overrides: Mapping[str, bool] | None) -> bool:
    if overrides:
        for key in (metric, METRIC_PREFIX + metric):
            if key in overrides:
                return bool(overrides[key])
    return not bool(_LOWER_IS_BETTER.search(metric))
