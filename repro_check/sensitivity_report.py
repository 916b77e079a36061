"""Seed-sensitivity reports: per-source spread, CIs, variance shares, expected max, P(A > B).

Front-end layer over :mod:`repro_check.core.stats` (every number comes from there; nothing is
re-implemented here). pandas and matplotlib are imported inside the functions that need them;
plots are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, never pyplot, so
the user's backend and global figure state are left alone.

Input contract
--------------

``runs`` is a :class:`pandas.DataFrame` with **one row per run** of the sweep and the columns

============== ======= ====================================================================
column         type    meaning
============== ======= ====================================================================
``test``       str     pytest nodeid of the training test
``source``     str     the randomness source whose seed varied (``init``, ``data``,
                       ``augment``, ``dropout``, ..., ``bitflip``); ``all`` = every source
                       varied at once (the reference of the variance shares)
``k``          int     run index within the source; the same ``k`` across sources (and
                       across tests) is a *paired seed*
``status``     str     ``"ok"`` | ``"failed"`` (the run raised) | ``"nan"`` (a metric came out
                       NaN/inf)
``root_seed``  int     the test's root seed for that run
``perturbation`` int   the perturbation index / seed applied to ``source``
``command``    str     the exact command that reproduces that run
``error``      str     the error of a failed run (may be empty)
``metric.<m>`` float   the value of metric ``<m>`` the test recorded at its last step (NaN when
                       the run did not record it)
============== ======= ====================================================================

``test``, ``source``, ``k`` and ``status`` are required; the other run columns are filled with
empty values when absent. Metric names are used *without* the ``metric.`` prefix everywhere in
the analysis (``"loss"``, ``"accuracy"``).

Optional extras:

* ``accuracy_examples: {test: {metric: n_examples}}`` (to :func:`analyze`) -- the size of the
  evaluation set of an accuracy-like metric, for the binomial noise floor sqrt(p(1-p)/n).
* ``sources_unused: {test: [source, ...]}`` (to :func:`analyze`) -- sources the sweep varied
  but the test never asked for (``repro.seed_for(name)`` never called): warned about.
* ``disagreement: {test: {source: {"mean_disagreement": float, "mean_correlation": float,
  "pairs": int}}}`` (to :func:`write_report`) -- prediction disagreement between runs of one
  source.
* ``session: dict`` (to :func:`write_report`) -- ``command``, ``base_seed``, ``K``, ``sources``,
  ``environment`` (a summary dict), ``environment_file``; other scalar keys are shown as given.

Rules
-----

* A metric's values are taken from runs whose status is not ``"failed"`` and whose value is
  finite. Failed runs are counted in ``n_failed``; runs that did not fail but have a non-finite
  value for the metric in ``n_nan``. Nothing is dropped silently: every exclusion is counted in
  the tables and raises a warning naming the runs' commands.
* Values enter the bootstrap in ``k`` order, so the report does not depend on the order in
  which runs finished.
* ``var_share`` = Var(source) / Var(all) (:func:`repro_check.core.stats.variance_shares`).
* ``recommended_runs``: runs needed so that the ``confidence`` CI of the mean has half-width
  ``target_half_width`` (Student t, :func:`repro_check.core.stats.recommended_runs`), from each
  source's std. The default target is **half the std of the** ``all`` **sweep** of that test and
  metric -- "pin the mean down to +-sigma/2 of the seed-to-seed spread" -- which is about 18 runs
  at 95 % for the ``all`` row itself; pass a number (every metric) or ``{metric: half_width}``
  for an absolute precision.
* Direction: metric names that look like losses or errors (``loss``, ``error``, ``err``,
  ``nll``, ``perplexity``/``ppl``, ``mse``, ``mae``, ``rmse``, ``wer``, ``cer``, ``bpd``) are
  lower-is-better (the expected-max curve is then the expected *minimum*); override with
  ``higher_is_better={metric: bool}``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.atomic import atomic_write_bytes, atomic_write_text, write_json

if TYPE_CHECKING:
    import pandas as pd

    from repro_check.core import stats

__all__ = [
    "REFERENCE_SOURCE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SUMMARY_COLUMNS",
    "SensitivityAnalysis",
    "SensitivityWarning",
    "analyze",
    "compare",
    "terminal_table",
    "write_report",
]

SCHEMA = "repro-check/sensitivity"
SCHEMA_VERSION = 1
REFERENCE_SOURCE = "all"
METRIC_PREFIX = "metric."
STATUSES = ("ok", "failed", "nan")
REQUIRED_COLUMNS = ("test", "source", "k", "status")
RUN_COLUMNS = ("test", "source", "k", "status", "root_seed", "perturbation", "command", "error")
RECOMMENDED_RUNS_METHOD = "t"
DEFAULT_TARGET_RULE = "default: half the std of the 'all' sweep, 0.5 * std(all)"

SUMMARY_COLUMNS = (
    "test",
    "metric",
    "source",
    "n_runs",
    "n",
    "n_failed",
    "n_nan",
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
    "noise_floor",
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

    @property
    def tests(self) -> list[str]:
        return list(dict.fromkeys(self.runs["test"].tolist()))

    def metrics(self, test: str) -> list[str]:
        rows = self.summary[self.summary["test"] == test]
        return list(dict.fromkeys(rows["metric"].tolist()))

    def sources(self, test: str) -> list[str]:
        return _ordered_sources(self.runs.loc[self.runs["test"] == test, "source"])

    def rows(self, test: str, metric: str) -> pd.DataFrame:
        """The summary rows of one test and metric, one per source (``all`` last)."""
        s = self.summary
        return s[(s["test"] == test) & (s["metric"] == _metric_name(metric))]

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
        return c[(c["test"] == test) & (c["metric"] == _metric_name(metric))]

    def values(self, test: str, metric: str, source: str) -> np.ndarray:
        """The values used for (test, metric, source): finite, from non-failed runs, k order."""
        return _usable_values(self.runs, test, source, _metric_column(metric))

    @property
    def messages(self) -> list[str]:
        return [w.message for w in self.warnings]

    def settings(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "bootstrap": "percentile",
            "reference_source": REFERENCE_SOURCE,
            "target_half_width_rule": self.target_rule,
            "recommended_runs_method": RECOMMENDED_RUNS_METHOD,
            "higher_is_better": dict(self.higher_is_better),
            "accuracy_examples": self.accuracy_examples,
        }


# --------------------------------------------------------------------------------------------
# input handling


def _metric_name(metric: str) -> str:
    return metric[len(METRIC_PREFIX) :] if metric.startswith(METRIC_PREFIX) else metric


def _metric_column(metric: str) -> str:
    return metric if metric.startswith(METRIC_PREFIX) else METRIC_PREFIX + metric


def _ordered_sources(values: Iterable[Any]) -> list[str]:
    """Sources in order of first appearance, with the ``all`` reference last."""
    order = [str(v) for v in dict.fromkeys(values)]
    if REFERENCE_SOURCE in order:
        order.remove(REFERENCE_SOURCE)
        order.append(REFERENCE_SOURCE)
    return order


def _normalize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Validate the input contract; return a copy sorted by (test, source, k), stable."""
    import pandas as pd

    if not isinstance(runs, pd.DataFrame):
        raise TypeError(f"runs must be a pandas DataFrame, got {type(runs).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in runs.columns]
    if missing:
        raise KeyError(
            f"runs is missing required column(s) {missing}; it has {list(runs.columns)} "
            f"(see repro_check.sensitivity_report for the input contract)"
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
        rank = {s: i for i, s in enumerate(_ordered_sources(group["source"]))}
        df.loc[group.index, "_s"] = group["source"].map(rank)
    df = df.sort_values(["_t", "_s", "k"], kind="stable").drop(columns=["_t", "_s"])
    return df.reset_index(drop=True)


def _usable_values(df: pd.DataFrame, test: str, source: str, column: str) -> np.ndarray:
    if column not in df.columns:
        return np.empty(0)
    sel = df[(df["test"] == test) & (df["source"] == source) & (df["status"] != "failed")]
    vals = sel.sort_values("k", kind="stable")[column].to_numpy(dtype=np.float64)
    return vals[np.isfinite(vals)]


def _lookup(table: Mapping[str, Mapping[str, Any]] | None, test: str, metric: str) -> Any:
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


def _is_higher_better(metric: str, overrides: Mapping[str, bool] | None) -> bool:
    if overrides:
        for key in (metric, METRIC_PREFIX + metric):
            if key in overrides:
                return bool(overrides[key])
    return not bool(_LOWER_IS_BETTER.search(metric))


def _commands(rows: pd.DataFrame, limit: int = 3) -> str:
    cmds = [c for c in rows["command"].tolist() if c]
    if not cmds:
        return ""
    shown = "; ".join(cmds[:limit])
    more = f" (+{len(cmds) - limit} more in runs.csv)" if len(cmds) > limit else ""
    return f" Rerun: {shown}{more}"


# --------------------------------------------------------------------------------------------
# analysis


#: Sweep sources that are not seed streams (repro_check.orchestration.sweep): what they vary.
NON_SEED_SOURCES = {
    "bitflip": "a one-ulp change of one initial weight",
    "backend": "the thread count / deterministic mode",
}


def analyze(
    runs: pd.DataFrame,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    accuracy_examples: Mapping[str, Mapping[str, int]] | None = None,
    target_half_width: float | Mapping[str, float] | None = None,
    sources_unused: Mapping[str, Sequence[str]] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
) -> SensitivityAnalysis:
    """Summarise a seed-sensitivity sweep: one row per (test, metric, source), curves, warnings.

    See the module docstring for the input contract and the rules. ``confidence`` and
    ``n_resamples`` drive every bootstrap (CIs of the mean, expected-max bands); ``seed`` seeds
    them. ``target_half_width`` is a number (all metrics), ``{metric: number}``, or None for the
    default: half the std of the ``all`` sweep of that test and metric.
    """
    import pandas as pd

    from repro_check.core import stats

    df = _normalize_runs(runs)
    metric_cols = [c for c in df.columns if c.startswith(METRIC_PREFIX)]
    directions = {
        _metric_name(c): _is_higher_better(_metric_name(c), higher_is_better) for c in metric_cols
    }
    warns: list[SensitivityWarning] = []
    rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    unused = {str(t): [str(s) for s in names] for t, names in (sources_unused or {}).items()}

    for test in dict.fromkeys(df["test"]):
        tdf = df[df["test"] == test]
        sources = _ordered_sources(tdf["source"])
        has_ref = REFERENCE_SOURCE in sources
        for src in unused.get(test, []):
            warns.append(
                SensitivityWarning(
                    "unused-source",
                    f"{test}: this sweep measures nothing for source {src!r}: the test never "
                    f"asked for source {src} (repro.seed_for({src!r}) was never called), so its "
                    f"runs only repeat the same seed. Drop it from the sweep or use the seed.",
                    test,
                    source=src,
                )
            )
        _run_warnings(test, tdf, sources, warns)
        if not has_ref:
            warns.append(
                SensitivityWarning(
                    "no-reference",
                    f"{test}: no {REFERENCE_SOURCE!r} sweep (every source varied), so variance "
                    f"shares are undefined; add source {REFERENCE_SOURCE!r} to the sweep.",
                    test,
                )
            )
        ok = tdf[tdf["status"] != "failed"]
        metrics = [c for c in metric_cols if np.isfinite(ok[c].to_numpy(dtype=np.float64)).any()]
        if not metrics:
            warns.append(
                SensitivityWarning(
                    "no-metrics",
                    f"{test}: no run recorded a finite metric (record scalars, e.g. "
                    f"repro.record(step, loss=loss), so the sweep has something to measure).",
                    test,
                )
            )
        constant: dict[str, list[str]] = {s: [] for s in sources}
        varying_metrics: list[str] = []
        for col in metrics:
            metric = _metric_name(col)
            hib = directions[metric]
            per_source = {s: _usable_values(df, test, s, col) for s in sources}
            if has_ref:
                shares = stats.variance_shares(per_source, reference=REFERENCE_SOURCE)
            else:
                shares = dict.fromkeys(sources, float("nan"))
            ref_vals = per_source.get(REFERENCE_SOURCE, np.empty(0))
            ref_std = float(np.std(ref_vals, ddof=1)) if ref_vals.size >= 2 else float("nan")
            ref_varies = math.isfinite(ref_std) and ref_std > 0.0
            if ref_varies:
                varying_metrics.append(metric)
            hw = _target(target_half_width, metric, ref_std)
            n_examples = _lookup(accuracy_examples, test, metric)
            for src in sources:
                vals = per_source[src]
                sel = tdf[tdf["source"] == src]
                n_failed = int((sel["status"] == "failed").sum())
                alive = sel[sel["status"] != "failed"][col].to_numpy(dtype=np.float64)
                n_nan = int((~np.isfinite(alive)).sum())
                s = stats.describe(vals)
                ci = stats.bootstrap_ci(
                    vals, np.mean, confidence=confidence, n_resamples=n_resamples, seed=seed
                )
                floor = float("nan")
                if n_examples is not None and s.n_finite and 0.0 <= s.mean <= 1.0:
                    floor = stats.binomial_noise_floor(s.mean, int(n_examples))
                rec: Any = pd.NA
                if math.isfinite(s.std) and math.isfinite(hw) and hw > 0.0:
                    rec = stats.recommended_runs(
                        s.std, hw, confidence=confidence, method=RECOMMENDED_RUNS_METHOD
                    )
                rows.append(
                    {
                        "test": test,
                        "metric": metric,
                        "source": src,
                        "n_runs": int(len(sel)),
                        "n": s.n_finite,
                        "n_failed": n_failed,
                        "n_nan": n_nan,
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
                        "var_share": shares[src],
                        "noise_floor": floor,
                        "target_half_width": hw,
                        "recommended_runs": rec,
                    }
                )
                if src != REFERENCE_SOURCE and ref_varies and s.n_finite >= 2 and s.std == 0.0:
                    constant[src].append(metric)
                if len(sel) >= 2 and 0 < s.n_finite < 2:
                    warns.append(
                        SensitivityWarning(
                            "no-spread",
                            f"{test}: {metric} of source {src!r} has {s.n_finite} usable run: "
                            f"no spread (std, CI and variance share are undefined).",
                            test,
                            source=src,
                            metric=metric,
                        )
                    )
            if has_ref and ref_vals.size >= 2 and not ref_varies:
                warns.append(
                    SensitivityWarning(
                        "constant-metric",
                        f"{test}: {metric} is identical in all {ref_vals.size} runs of the "
                        f"{REFERENCE_SOURCE!r} sweep: the metric does not depend on any seed the "
                        f"sweep varied (or the seeds never reach the code). CIs are zero-width "
                        f"and variance shares undefined.",
                        test,
                        source=REFERENCE_SOURCE,
                        metric=metric,
                    )
                )
            if n_examples is not None:
                _noise_floor_warning(test, metric, rows[-1], n_examples, ref_std, warns)
            if ref_vals.size >= 1:
                budgets = np.arange(1, ref_vals.size + 1)
                exp = stats.expected_max(ref_vals, budgets, higher_is_better=hib)
                low, high = stats.expected_max_band(
                    ref_vals,
                    budgets,
                    confidence=confidence,
                    n_resamples=n_resamples,
                    seed=seed,
                    higher_is_better=hib,
                )
                for b, e, lo, hi in zip(budgets, exp, low, high, strict=True):
                    curve_rows.append(
                        {
                            "test": test,
                            "metric": metric,
                            "source": REFERENCE_SOURCE,
                            "budget": int(b),
                            "expected": float(e),
                            "low": float(lo),
                            "high": float(hi),
                        }
                    )
        for src, const_metrics in constant.items():
            if not const_metrics or src in unused.get(test, []):
                continue
            n = len(tdf[tdf["source"] == src])
            if src in NON_SEED_SOURCES:  # not a stream the test draws from: a real finding
                message = (
                    f"{test}: {', '.join(const_metrics)} is bit-for-bit identical across the {n} "
                    f"{src!r} runs while {REFERENCE_SOURCE!r} varies: at this scale and training "
                    f"length, {NON_SEED_SOURCES[src]} does not move this metric."
                )
            elif set(const_metrics) >= set(varying_metrics):
                message = (
                    f"{test}: this sweep measures nothing: the test never asked for source "
                    f"{src!r} -- every metric ({', '.join(const_metrics)}) is identical across "
                    f"its {n} runs while {REFERENCE_SOURCE!r} varies. Use "
                    f"repro.seed_for({src!r}) where that randomness is drawn, or drop {src!r}."
                )
            else:
                message = (
                    f"{test}: {', '.join(const_metrics)} is identical across the {n} runs of "
                    f"source {src!r} while {REFERENCE_SOURCE!r} varies: that source does not "
                    f"move this metric (share 0)."
                )
            warns.append(SensitivityWarning("constant-source", message, test, source=src))

    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    summary["recommended_runs"] = summary["recommended_runs"].astype("Int64")
    curves = pd.DataFrame(curve_rows, columns=list(CURVE_COLUMNS))
    if target_half_width is None:
        rule = DEFAULT_TARGET_RULE
    elif isinstance(target_half_width, Mapping):
        rule = f"per metric: {dict(target_half_width)}; others: {DEFAULT_TARGET_RULE}"
    else:
        rule = f"fixed: {float(target_half_width)!r} for every metric"
    return SensitivityAnalysis(
        summary=summary,
        curves=curves,
        warnings=warns,
        runs=df,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        higher_is_better=directions,
        target_rule=rule,
        accuracy_examples={
            str(t): {_metric_name(str(m)): int(n) for m, n in per.items()}
            for t, per in (accuracy_examples or {}).items()
        },
    )


def _target(target: float | Mapping[str, float] | None, metric: str, ref_std: float) -> float:
    if isinstance(target, Mapping):
        for key in (metric, METRIC_PREFIX + metric):
            if key in target:
                return float(target[key])
        target = None
    if target is not None:
        return float(target)
    return 0.5 * ref_std if math.isfinite(ref_std) and ref_std > 0.0 else float("nan")


def _run_warnings(
    test: str, tdf: pd.DataFrame, sources: list[str], warns: list[SensitivityWarning]
) -> None:
    for src in sources:
        sel = tdf[tdf["source"] == src]
        k = len(sel)
        failed = sel[sel["status"] == "failed"]
        nan = sel[sel["status"] == "nan"]
        if k < 2:
            warns.append(
                SensitivityWarning(
                    "no-spread",
                    f"{test}: source {src!r} has K={k} run: no spread (std, CI and variance "
                    f"share are undefined); sweep with K >= 2 (5 or more for a usable CI).",
                    test,
                    source=src,
                )
            )
        if len(failed):
            first_error = next(
                (e.strip().splitlines()[-1] for e in failed["error"] if e.strip()), ""
            )
            why = f" Last error line: {first_error}." if first_error else ""
            warns.append(
                SensitivityWarning(
                    "failed-runs",
                    f"{test}: {len(failed)} of {k} runs of source {src!r} failed (k = "
                    f"{', '.join(map(str, failed['k']))}) and are excluded from the statistics "
                    f"-- they are counted in the tables.{why}{_commands(failed)}",
                    test,
                    source=src,
                )
            )
        if len(nan):
            warns.append(
                SensitivityWarning(
                    "nan-runs",
                    f"{test}: {len(nan)} of {k} runs of source {src!r} produced NaN/inf "
                    f"(k = {', '.join(map(str, nan['k']))}); their non-finite metrics are "
                    f"excluded and counted, so the statistics describe the surviving runs "
                    f"only.{_commands(nan)}",
                    test,
                    source=src,
                )
            )


def _noise_floor_warning(
    test: str,
    metric: str,
    ref_row: dict[str, Any],
    n_examples: int,
    ref_std: float,
    warns: list[SensitivityWarning],
) -> None:
    floor = ref_row["noise_floor"]
    if ref_row["source"] != REFERENCE_SOURCE:
        return
    if not math.isfinite(floor):
        if ref_row["n"]:
            warns.append(
                SensitivityWarning(
                    "noise-floor-unavailable",
                    f"{test}: accuracy_examples gives {n_examples} examples for {metric}, but "
                    f"its mean {ref_row['mean']:.4g} is not a fraction in [0, 1]; no binomial "
                    f"noise floor.",
                    test,
                    metric=metric,
                )
            )
        return
    if math.isfinite(ref_std) and ref_std < floor:
        warns.append(
            SensitivityWarning(
                "below-noise-floor",
                f"{test}: the seed-to-seed std of {metric} ({ref_std:.3g}) is below the binomial "
                f"noise floor of a {n_examples}-example test set ({floor:.3g}): differences "
                f"between seeds are indistinguishable from test-set sampling noise.",
                test,
                source=REFERENCE_SOURCE,
                metric=metric,
            )
        )


# --------------------------------------------------------------------------------------------
# paired comparison of two tests


def _decision_rule(gamma: float = 0.75) -> str:
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

    df = _normalize_runs(runs)
    col = _metric_column(metric)
    if col not in df.columns:
        metrics = [_metric_name(c) for c in df.columns if c.startswith(METRIC_PREFIX)]
        raise KeyError(f"no metric {_metric_name(metric)!r} in runs; metrics: {metrics}")

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


# --------------------------------------------------------------------------------------------
# number formatting


def _isnum(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _sig(x: Any, digits: int = 2) -> str:
    """``digits`` significant digits, fixed-point for moderate magnitudes."""
    if not _isnum(x):
        return "n/a"
    x = float(x)
    if x == 0.0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if -5 <= mag < 6:
        return f"{x:.{max(0, digits - 1 - mag)}f}"
    return f"{x:.{digits - 1}e}"


class _Fmt:
    """Decimals for one (test, metric) table: two significant digits of the reference spread."""

    def __init__(self, rows: pd.DataFrame) -> None:
        stds = rows["std"].to_numpy(dtype=np.float64)
        ref = rows.loc[rows["source"] == REFERENCE_SOURCE, "std"].to_numpy(dtype=np.float64)
        spread = float(ref[0]) if ref.size and _isnum(ref[0]) and ref[0] > 0 else float("nan")
        if not math.isfinite(spread):
            positive = stds[np.isfinite(stds) & (stds > 0)]
            spread = float(positive.min()) if positive.size else float("nan")
        self.decimals: int | None = None
        if math.isfinite(spread):
            d = 1 - math.floor(math.log10(spread))
            if d <= 8:
                self.decimals = max(0, d)

    def __call__(self, x: Any) -> str:
        if not _isnum(x):
            return "n/a"
        x = float(x)
        if self.decimals is None:
            return f"{x:.4g}"
        if x != 0.0 and abs(x) >= 1e7:
            return f"{x:.4g}"
        return f"{x:.{self.decimals}f}"


def _pct(x: Any) -> str:
    return f"{100.0 * float(x):.0f}%" if _isnum(x) else "n/a"


def _n_cell(row: Mapping[str, Any]) -> str:
    parts = []
    if row["n_failed"]:
        parts.append(f"{row['n_failed']} failed")
    if row["n_nan"]:
        parts.append(f"{row['n_nan']} NaN")
    if not parts and row["n"] == row["n_runs"]:
        return str(row["n"])
    return f"{row['n']} of {row['n_runs']} ({', '.join(parts) or 'excluded'})"


def _rec_cell(x: Any) -> str:
    try:
        return "n/a" if x is None or x != x or str(x) == "<NA>" else str(int(x))
    except (TypeError, ValueError):
        return "n/a"


def _direction(analysis: SensitivityAnalysis, metric: str) -> str:
    return "higher is better" if analysis.higher_is_better.get(metric, True) else "lower is better"


# --------------------------------------------------------------------------------------------
# terminal


def terminal_table(analysis: SensitivityAnalysis, *, show_warnings: bool = True) -> str:
    """A compact table for the pytest terminal summary (test, metric, source, n, mean, std, CI,
    share), followed by the warnings when ``show_warnings``."""
    from tabulate import tabulate

    pct = f"{analysis.confidence * 100:g}% CI"
    headers = ["test", "metric", "source", "n", "mean", "std", pct, "share"]
    table: list[list[str]] = []
    for test in analysis.tests:
        first_test = True
        for metric in analysis.metrics(test):
            rows = analysis.rows(test, metric)
            fmt = _Fmt(rows)
            first_metric = True
            for row in rows.to_dict("records"):
                n = str(row["n"]) if row["n"] == row["n_runs"] else f"{row['n']}/{row['n_runs']}"
                table.append(
                    [
                        test if first_test else "",
                        metric if first_metric else "",
                        row["source"],
                        n,
                        fmt(row["mean"]),
                        _sig(row["std"]),
                        f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"
                        if _isnum(row["ci_low"])
                        else "n/a",
                        _pct(row["var_share"]),
                    ]
                )
                first_test = first_metric = False
    text = tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True)
    if show_warnings and analysis.warnings:
        text += "\n" + "\n".join(f"warning: {w.message}" for w in analysis.warnings)
    return text


# --------------------------------------------------------------------------------------------
# file names


def _slug(text: str, limit: int = 80) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "x"
    if len(slug) > limit:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[: limit - 9]}-{digest}"
    return slug


def _test_slugs(tests: Sequence[str]) -> dict[str, str]:
    slugs: dict[str, str] = {}
    used: set[str] = set()
    for test in tests:
        slug = _slug(test)
        if slug in used:
            slug = f"{slug}-{hashlib.sha1(test.encode('utf-8')).hexdigest()[:8]}"
        used.add(slug)
        slugs[test] = slug
    return slugs


# --------------------------------------------------------------------------------------------
# report files


def write_report(
    analysis: SensitivityAnalysis,
    directory: str | Path,
    *,
    session: Mapping[str, Any] | None = None,
    disagreement: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write the report files into ``directory`` (created if needed), each atomically.

    ``sensitivity.md`` (for reviewers), ``sensitivity.tex`` (booktabs tables for a paper),
    ``runs.csv`` (one row per run, with its command and seeds), ``sensitivity.json`` (schema
    ``repro-check/sensitivity`` v1, NaN as null) and, when ``plots`` and matplotlib is
    installed, two PNGs per test and metric: ``<test>__<metric>__sources.png`` and
    ``<test>__<metric>__expected_max.png``. Returns the paths written.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    slugs = _test_slugs(analysis.tests)
    written: list[Path] = []
    plot_files: dict[tuple[str, str], dict[str, str]] = {}
    plot_note = ""
    if plots:
        try:
            plot_files, pngs = _write_plots(analysis, out, slugs)
            written += pngs
        except ImportError as exc:  # matplotlib is the optional `plots` extra
            plot_note = (
                f"plots skipped: matplotlib is not installed ({exc}); pip install matplotlib"
            )

    csv_path = out / "runs.csv"
    atomic_write_text(csv_path, analysis.runs.to_csv(index=False))
    written.append(csv_path)

    md_path = out / "sensitivity.md"
    atomic_write_text(
        md_path, markdown_report(analysis, session, disagreement, plot_files, plot_note)
    )
    written.append(md_path)

    tex_path = out / "sensitivity.tex"
    atomic_write_text(tex_path, latex_tables(analysis))
    written.append(tex_path)

    json_path = out / "sensitivity.json"
    files = [p.name for p in written] + [json_path.name]
    write_json(json_path, json_document(analysis, session, disagreement, plot_files, files))
    written.append(json_path)
    return written


# ---- JSON


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN -> null, +-inf -> "inf"/"-inf" (JSON has neither)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__name__ in ("NAType", "NaTType"):
        return None
    return str(obj)


def json_document(
    analysis: SensitivityAnalysis,
    session: Mapping[str, Any] | None = None,
    disagreement: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    plot_files: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    files: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``sensitivity.json`` document (schema ``repro-check/sensitivity``, version 1)."""
    slugs = _test_slugs(analysis.tests)
    tests = []
    for test in analysis.tests:
        metrics = []
        for metric in analysis.metrics(test):
            curve = analysis.curve(test, metric)
            metrics.append(
                {
                    "name": metric,
                    "column": METRIC_PREFIX + metric,
                    "higher_is_better": analysis.higher_is_better.get(metric, True),
                    "sources": analysis.rows(test, metric)
                    .drop(columns=["test", "metric"])
                    .to_dict("records"),
                    "expected_max": {
                        "source": REFERENCE_SOURCE,
                        "budgets": curve["budget"].tolist(),
                        "expected": curve["expected"].tolist(),
                        "low": curve["low"].tolist(),
                        "high": curve["high"].tolist(),
                    },
                    "plots": dict((plot_files or {}).get((test, metric), {})),
                }
            )
        tests.append(
            {
                "nodeid": test,
                "slug": slugs[test],
                "sources": analysis.sources(test),
                "runs_per_source": {
                    s: int((analysis.runs[analysis.runs["test"] == test]["source"] == s).sum())
                    for s in analysis.sources(test)
                },
                "metrics": metrics,
                "disagreement": (disagreement or {}).get(test),
            }
        )
    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {**analysis.settings(), "decision_rule": _decision_rule()},
        "session": dict(session) if session else None,
        "tests": tests,
        "warnings": [w.to_dict() for w in analysis.warnings],
        "runs_file": "runs.csv",
        "runs": analysis.runs.to_dict("records"),
        "files": list(files),
    }
    return _jsonable(document)


# ---- Markdown


def _md(text: Any) -> str:
    """Escape a cell for a GitHub table (pipes, newlines)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_code(text: Any) -> str:
    s = str(text).replace("\n", " ")
    fence = "``" if "`" in s else "`"
    return f"{fence}{_md(s)}{fence}" if s else ""


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += _flatten(value, name + ".")
        else:
            items.append((name, value))
    return items


def _budget_selection(n: int) -> list[int]:
    if n <= 12:
        return list(range(1, n + 1))
    picks = [1, 2, 3, 4, 5, 8, 10, 15, 20, 30, 50, 75, 100, 150, 200, 500, 1000]
    return sorted({b for b in picks if b < n} | {n})


def markdown_report(
    analysis: SensitivityAnalysis,
    session: Mapping[str, Any] | None = None,
    disagreement: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    plot_files: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    plot_note: str = "",
) -> str:
    """The ``sensitivity.md`` text."""
    from tabulate import tabulate

    conf = f"{analysis.confidence * 100:g}%"
    lines = ["# Seed sensitivity report", ""]
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lines.append(
        f"Generated {created} by repro-check. Each source of randomness was varied on its own "
        f"(K runs, the other seeds fixed); `{REFERENCE_SOURCE}` varies every source at once. "
        f"CIs are {conf} percentile-bootstrap intervals of the mean ({analysis.n_resamples} "
        f"resamples, seed {analysis.seed}); *share* is Var(source) / Var({REFERENCE_SOURCE}) "
        f"-- shares are not a partition and need not sum to 1 (Summers & Dinneen, ICML 2021)."
    )
    lines.append("")
    if session:
        lines += _session_lines(session)
    lines += ["## Warnings", ""]
    if analysis.warnings:
        lines += [f"- **{w.kind}**: {_md(w.message)}" for w in analysis.warnings]
    else:
        lines.append("None.")
    if plot_note:
        lines.append(f"- {plot_note}")
    lines.append("")

    for test in analysis.tests:
        lines += [f"## `{test}`", ""]
        metrics = analysis.metrics(test)
        if not metrics:
            lines += ["No finite metric was recorded by any run (see the warnings).", ""]
        for metric in metrics:
            rows = analysis.rows(test, metric)
            fmt = _Fmt(rows)
            hw = rows["target_half_width"].iloc[0]
            rec_header = f"runs for ±{_sig(hw)}" if _isnum(hw) else "runs for target"
            has_floor = bool(np.isfinite(rows["noise_floor"].to_numpy(dtype=np.float64)).any())
            headers = [
                "source",
                "n",
                "mean ± std",
                f"{conf} CI of mean",
                "min – max",
                "IQM",
                "share",
                *(["noise floor"] if has_floor else []),
                rec_header,
            ]
            body = []
            for row in rows.to_dict("records"):
                src = f"**{row['source']}**" if row["source"] == REFERENCE_SOURCE else row["source"]
                ci = (
                    f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"
                    if _isnum(row["ci_low"])
                    else "n/a"
                )
                rng = f"{fmt(row['min'])} – {fmt(row['max'])}" if _isnum(row["min"]) else "n/a"
                body.append(
                    [
                        src,
                        _n_cell(row),
                        f"{fmt(row['mean'])} ± {_sig(row['std'])}",
                        ci,
                        rng,
                        fmt(row["iqm"]),
                        _pct(row["var_share"]),
                        *([_sig(row["noise_floor"])] if has_floor else []),
                        _rec_cell(row["recommended_runs"]),
                    ]
                )
            lines += [f"### {metric} ({_direction(analysis, metric)})", ""]
            lines.append(tabulate(body, headers=headers, tablefmt="github", disable_numparse=True))
            lines.append("")
            lines.append(
                f"*n*: runs used (of runs launched). *runs for ±x*: runs needed for a {conf} CI "
                f"of the mean of half-width x at that source's std ({analysis.target_rule})."
            )
            lines.append("")
            curve = analysis.curve(test, metric)
            if len(curve) >= 2:
                best = "max" if analysis.higher_is_better.get(metric, True) else "min"
                lines.append(
                    f"Expected best ({best}) {metric} over a budget of n runs of "
                    f"`{REFERENCE_SOURCE}` (Dodge et al., EMNLP 2019), {conf} bootstrap band:"
                )
                lines.append("")
                keep = set(_budget_selection(len(curve)))
                cbody = [
                    [int(r["budget"]), fmt(r["expected"]), f"[{fmt(r['low'])}, {fmt(r['high'])}]"]
                    for r in curve.to_dict("records")
                    if int(r["budget"]) in keep
                ]
                lines.append(
                    tabulate(
                        cbody,
                        headers=["runs n", f"expected {best}", f"{conf} band"],
                        tablefmt="github",
                        disable_numparse=True,
                    )
                )
                lines.append("")
            for kind, name in (plot_files or {}).get((test, metric), {}).items():
                lines += [f"![{metric}: {kind.replace('_', ' ')}]({name})", ""]
        dis = (disagreement or {}).get(test)
        if dis:
            lines += ["### Prediction disagreement between runs of one source", ""]
            dbody = [
                [
                    s,
                    _sig(d.get("mean_disagreement"), 3),
                    _sig(d.get("mean_correlation"), 3),
                    d.get("pairs", ""),
                ]
                for s, d in dis.items()
            ]
            lines.append(
                tabulate(
                    dbody,
                    headers=["source", "mean disagreement", "mean correlation", "pairs"],
                    tablefmt="github",
                    disable_numparse=True,
                )
            )
            lines.append("")

    lines += _command_lines(analysis)
    lines += [
        "## Method",
        "",
        "- Per-source seeds: `repro.seed_for(source)` streams; run k of every source shares the "
        "same perturbation index (paired seeds).",
        "- mean, std (ddof=1), quartiles, IQM (Agarwal et al., NeurIPS 2021), percentile "
        "bootstrap CIs (Efron & Tibshirani 1993): `repro_check.core.stats`.",
        "- Variance shares and the binomial noise floor sqrt(p(1-p)/n): Bouthillier et al., "
        "MLSys 2021. A `bitflip` source (one weight nudged by one ulp at init) follows Summers "
        "& Dinneen, ICML 2021.",
        "- Expected best score over n runs: Dodge et al., EMNLP 2019.",
        f"- Comparing two methods: P(A > B) with the rule: {_decision_rule()}",
        "",
    ]
    return "\n".join(lines)


def _session_lines(session: Mapping[str, Any]) -> list[str]:
    lines = ["## Session", ""]
    labels = {
        "command": "command",
        "base_seed": "base seed",
        "K": "runs per source (K)",
        "k": "runs per source (K)",
        "runs_per_source": "runs per source (K)",
        "sources": "sources",
    }
    for key, label in labels.items():
        if key in session:
            value = session[key]
            if key == "command":
                value = _md_code(value)
            elif isinstance(value, (list, tuple)):
                value = ", ".join(map(str, value))
            lines.append(f"- {label}: {value}")
    for key, value in session.items():
        if key in labels or key in ("environment", "environment_file"):
            continue
        if isinstance(value, (str, int, float, bool)):
            lines.append(f"- {key}: {value}")
    lines.append("")
    env = session.get("environment")
    env_file = session.get("environment_file")
    if env or env_file:
        lines += ["### Environment", ""]
        if isinstance(env, Mapping) and env:
            items = _flatten(env)
            for name, value in items[:60]:
                lines.append(f"- {_md(name)}: {_md(value)}")
            if len(items) > 60:
                lines.append(f"- ... and {len(items) - 60} more")
        elif env:
            lines.append(_md(env))
        if env_file:
            lines.append(f"- full snapshot: `{env_file}` (compare with `repro-check env diff`)")
        lines.append("")
    return lines


def _command_lines(analysis: SensitivityAnalysis) -> list[str]:
    from tabulate import tabulate

    runs = analysis.runs
    lines = [
        "## Reproducing a run",
        "",
        "Every run's exact command, root seed and perturbation are in `runs.csv` (columns "
        "`command`, `root_seed`, `perturbation`).",
        "",
    ]
    bad = runs[runs["status"] != "ok"]
    if len(bad):
        lines += ["Runs that failed or produced NaN:", ""]
        for r in bad.to_dict("records"):
            err = r["error"].strip().splitlines()[-1] if r["error"].strip() else ""
            lines.append(
                f"- `{_md(r['test'])}` source `{r['source']}` k={r['k']} ({r['status']})"
                + (f": {_md(err)}" if err else "")
                + (f" -- {_md_code(r['command'])}" if r["command"] else "")
            )
        lines.append("")
    body = [
        [_md(r["test"]), r["source"], r["k"], r["status"], r["root_seed"], _md_code(r["command"])]
        for r in runs.to_dict("records")
    ]
    lines += [f"<details><summary>All {len(runs)} runs and their commands</summary>", ""]
    lines.append(
        tabulate(
            body,
            headers=["test", "source", "k", "status", "root seed", "command"],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    lines += ["", "</details>", ""]
    return lines


# ---- LaTeX

_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}


def tex_escape(text: Any) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex_num(text: str) -> str:
    return "--" if text == "n/a" else f"${text}$"


def latex_tables(analysis: SensitivityAnalysis) -> str:
    """``sensitivity.tex``: one booktabs ``table`` per test and metric (needs ``booktabs``)."""
    conf = f"{analysis.confidence * 100:g}"
    slugs = _test_slugs(analysis.tests)
    out = [
        "% Seed-sensitivity tables generated by repro-check.",
        "% Needs \\usepackage{booktabs} in the preamble; \\input{sensitivity.tex} where wanted.",
        "",
    ]
    for test in analysis.tests:
        for metric in analysis.metrics(test):
            rows = analysis.rows(test, metric)
            fmt = _Fmt(rows)
            excluded = bool((rows["n"] != rows["n_runs"]).any())
            label = re.sub(r"[^A-Za-z0-9:.-]+", "-", f"tab:sensitivity:{slugs[test]}:{metric}")
            caption = (
                f"Seed sensitivity of \\texttt{{{tex_escape(metric)}}} "
                f"({_direction(analysis, metric)}) for \\texttt{{{tex_escape(test)}}}: "
                f"mean $\\pm$ std over runs where only one source of randomness varied "
                f"(\\emph{{all}}: every source), {conf}\\% percentile-bootstrap CI of the mean, "
                f"interquartile mean, and share $= \\mathrm{{Var}}(\\text{{source}}) / "
                f"\\mathrm{{Var}}(\\text{{all}})$."
            )
            if excluded:
                caption += " $n$: runs used / runs launched (failed or non-finite runs excluded)."
            out += [
                "\\begin{table}[htbp]",
                "  \\centering",
                "  \\small",
                f"  \\caption{{{caption}}}",
                f"  \\label{{{label}}}",
                "  \\begin{tabular}{lrrrrrrr}",
                "    \\toprule",
                f"    Source & $n$ & Mean $\\pm$ std & {conf}\\% CI & Min & Max & IQM & Share \\\\",
                "    \\midrule",
            ]
            for row in rows.to_dict("records"):
                if row["source"] == REFERENCE_SOURCE and len(rows) > 1:
                    out.append("    \\midrule")
                n = str(row["n"]) if row["n"] == row["n_runs"] else f"{row['n']}/{row['n_runs']}"
                mean_std = (
                    f"${fmt(row['mean'])} \\pm {_sig(row['std'])}$"
                    if _isnum(row["std"])
                    else _tex_num(fmt(row["mean"]))
                )
                ci = (
                    f"$[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]$"
                    if _isnum(row["ci_low"])
                    else "--"
                )
                share = (
                    f"${100.0 * float(row['var_share']):.0f}\\%$"
                    if _isnum(row["var_share"])
                    else "--"
                )
                source = tex_escape(row["source"])
                if row["source"] == REFERENCE_SOURCE:
                    source = f"\\emph{{{source}}}"
                cells = [
                    source,
                    f"${n}$",
                    mean_std,
                    ci,
                    _tex_num(fmt(row["min"])),
                    _tex_num(fmt(row["max"])),
                    _tex_num(fmt(row["iqm"])),
                    share,
                ]
                out.append("    " + " & ".join(cells) + " \\\\")
            out += ["    \\bottomrule", "  \\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


# ---- plots

_SOURCE_COLOR = "#1f77b4"
_ALL_COLOR = "#d62728"


def _write_plots(
    analysis: SensitivityAnalysis, out: Path, slugs: Mapping[str, str]
) -> tuple[dict[tuple[str, str], dict[str, str]], list[Path]]:
    # Bare Figures on the Agg canvas: pyplot's backend and global state are never touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401  (ImportError early)

    files: dict[tuple[str, str], dict[str, str]] = {}
    paths: list[Path] = []
    for test in analysis.tests:
        for metric in analysis.metrics(test):
            base = f"{slugs[test]}__{_slug(metric, 40)}"
            entry: dict[str, str] = {}
            fig = _sources_figure(analysis, test, metric)
            if fig is not None:
                name = f"{base}__sources.png"
                paths.append(_save(fig, out / name))
                entry["sources"] = name
            fig = _expected_max_figure(analysis, test, metric)
            if fig is not None:
                name = f"{base}__expected_max.png"
                paths.append(_save(fig, out / name))
                entry["expected_max"] = name
            files[(test, metric)] = entry
    return files, paths


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _mpl(text: Any) -> str:
    """Plain text for matplotlib: a '$' would start mathtext (and may fail to parse)."""
    return str(text).replace("$", r"\$")


def _wrap(text: str, width: int = 70) -> str:
    lines = textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False)
    return _mpl("\n".join(lines))


def _sources_figure(analysis: SensitivityAnalysis, test: str, metric: str) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = analysis.rows(test, metric)
    if not int(rows["n"].sum()):
        return None
    sources = rows["source"].tolist()
    conf = f"{analysis.confidence * 100:g}%"
    fig = Figure(figsize=(max(5.5, 1.3 * len(sources) + 2.5), 4.6))
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)
    labels = []
    for i, row in enumerate(rows.to_dict("records")):
        src = row["source"]
        is_ref = src == REFERENCE_SOURCE
        color = _ALL_COLOR if is_ref else _SOURCE_COLOR
        vals = analysis.values(test, metric, src)
        if is_ref:
            ax.axvspan(i - 0.45, i + 0.45, color=_ALL_COLOR, alpha=0.07, lw=0)
            floor = row["noise_floor"]
            if _isnum(floor) and _isnum(row["mean"]):
                ax.fill_between(
                    [-0.5, len(sources) - 0.5],
                    row["mean"] - floor,
                    row["mean"] + floor,
                    color="0.5",
                    alpha=0.15,
                    lw=0,
                    zorder=0,
                )
        x = i - 0.08 + rng.uniform(-0.14, 0.14, size=vals.size)
        ax.scatter(x, vals, s=22, color=color, alpha=0.75, edgecolors="none", zorder=3)
        if _isnum(row["mean"]):
            lo = row["ci_low"] if _isnum(row["ci_low"]) else row["mean"]
            hi = row["ci_high"] if _isnum(row["ci_high"]) else row["mean"]
            ax.errorbar(
                i + 0.22,
                row["mean"],
                yerr=[[row["mean"] - lo], [hi - row["mean"]]],
                fmt="D",
                color="black",
                markersize=5,
                capsize=4,
                lw=1.4,
                zorder=4,
            )
        label = f"{_mpl(src)}\nn={row['n']}"
        extra = []
        if row["n_failed"]:
            extra.append(f"{row['n_failed']} failed")
        if row["n_nan"]:
            extra.append(f"{row['n_nan']} NaN")
        if extra:
            label += "\n" + ", ".join(extra)
        labels.append(label)
    ax.set_xticks(range(len(sources)))
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_xlim(-0.5, len(sources) - 0.5)
    ax.set_xlabel("source of randomness varied (others fixed)")
    ax.set_ylabel(_mpl(f"{metric} ({_direction(analysis, metric)})"))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(_mpl(f"{metric} at the last step, one point per run"), fontsize=10)
    fig.suptitle(_wrap(test), fontsize=9, family="monospace")
    handles = [
        Line2D([], [], ls="", marker="o", color=_SOURCE_COLOR, label="run: one source varied"),
        Line2D(
            [], [], ls="", marker="o", color=_ALL_COLOR, label=f"run: {REFERENCE_SOURCE} varied"
        ),
        Line2D([], [], ls="-", marker="D", color="black", label=f"mean, {conf} bootstrap CI"),
    ]
    if _isnum(rows["noise_floor"].iloc[-1]):
        handles.append(Patch(color="0.5", alpha=0.3, label="all mean ± binomial noise floor"))
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)
    fig.tight_layout()
    return fig


def _expected_max_figure(analysis: SensitivityAnalysis, test: str, metric: str) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curve = analysis.curve(test, metric)
    if len(curve) < 2:
        return None
    hib = analysis.higher_is_better.get(metric, True)
    best = "max" if hib else "min"
    conf = f"{analysis.confidence * 100:g}%"
    budgets = curve["budget"].to_numpy()
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.fill_between(
        budgets,
        curve["low"].to_numpy(),
        curve["high"].to_numpy(),
        color=_ALL_COLOR,
        alpha=0.2,
        lw=0,
        label=f"{conf} bootstrap band",
    )
    ax.plot(
        budgets,
        curve["expected"].to_numpy(),
        "o-",
        color=_ALL_COLOR,
        ms=4,
        label=f"E[{best} of n runs]",
    )
    vals = analysis.values(test, metric, REFERENCE_SOURCE)
    observed = float(vals.max() if hib else vals.min())
    ax.axhline(
        observed, color="0.3", ls="--", lw=1, label=f"best observed run ({_sig(observed, 4)})"
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"number of runs n (seeds, source '{REFERENCE_SOURCE}')")
    ax.set_ylabel(_mpl(f"expected {best} of {metric} over n runs"))
    ax.set_title(_mpl(f"Expected best {metric} vs budget (Dodge et al. 2019)"), fontsize=10)
    fig.suptitle(_wrap(test), fontsize=9, family="monospace")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
