"""``analyze``: one summary row per (test, metric, source), expected-best curves, warnings.

Every number comes from :mod:`repro_check.core.stats` (``summarize_sources`` builds the
per-source rows); this module counts what was excluded, adds the noise floor and the runs
needed, and says what a reader must know.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.reporting.sensitivity.comparisons import across_tests, variant_comparisons
from repro_check.reporting.sensitivity.crossed import crossed_designs
from repro_check.reporting.sensitivity.model import (
    CROSS,
    CURVE_COLUMNS,
    DEFAULT_TARGET_RULE,
    METRIC_PREFIX,
    RECOMMENDED_RUNS_METHOD,
    REFERENCE_SOURCE,
    SUMMARY_COLUMNS,
    SensitivityAnalysis,
    SensitivityWarning,
    is_higher_better,
    lookup,
    metric_name,
    normalize_runs,
    ordered_sources,
)

if TYPE_CHECKING:
    import pandas as pd

#: Sweep sources that are not seed streams (repro_check.orchestration.sweep): what they vary.
NON_SEED_SOURCES = {
    "bitflip": "a one-ulp change of one initial weight",
    "backend": "the thread count / deterministic mode",
}


@dataclass(frozen=True)
class _Options:
    confidence: float
    n_resamples: int
    seed: int
    accuracy_examples: Mapping[str, Mapping[str, int]] | None
    target_half_width: float | Mapping[str, float] | None


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
    outcomes: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    notes: Sequence[str] = (),
) -> SensitivityAnalysis:
    """Summarise a seed-sensitivity sweep: one row per (test, metric, source), curves, warnings.

    See :mod:`repro_check.reporting.sensitivity` for the input contract and the rules.
    ``confidence`` and ``n_resamples`` drive every bootstrap (CIs of the mean, expected-max
    bands); ``seed`` seeds them. ``target_half_width`` is a number (all metrics),
    ``{metric: number}``, or None for the default: half the std of the ``all`` sweep of that
    test and metric. ``outcomes`` (``{test: {name: {"higher_is_better", "n_examples"}}}``,
    from ``repro.record_outcome``) gives directions and evaluation-set sizes, and marks the
    tests that declared none; ``notes`` become warnings of kind ``resume``. Runs of a crossed
    design (source ``a+b``) are split two-way (``analysis.crossed``), not tabled per source.
    """
    import pandas as pd

    df = normalize_runs(runs)
    metric_cols = [c for c in df.columns if c.startswith(METRIC_PREFIX)]
    warns = [SensitivityWarning("resume", note, "") for note in notes]
    directions, examples = _declared(metric_cols, outcomes, higher_is_better, warns)
    examples = _merge_examples(accuracy_examples, examples)
    options = _Options(confidence, n_resamples, seed, examples, target_half_width)
    unused = {str(t): [str(s) for s in names] for t, names in (sources_unused or {}).items()}
    rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    crossed_runs = df["source"].str.contains(CROSS, regex=False)
    for test in dict.fromkeys(df["test"]):
        tdf = df[(df["test"] == test) & ~crossed_runs]
        if tdf.empty:
            continue
        if outcomes is not None and not outcomes.get(test):
            warns.append(
                SensitivityWarning(
                    "undeclared-outcomes",
                    f"{test}: no outcome declared, so every scalar recorded at the last step "
                    f"is treated as one -- the loss of the last training minibatch included. "
                    f"Declare results with repro.record_outcome('accuracy', acc, "
                    f"n_examples=len(eval_set)); recorded scalars then stay diagnostics.",
                    test,
                )
            )
        warns += _input_warnings(test, tdf, unused.get(test, []))
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
            continue
        test_rows, test_curves, test_warns = _analyze_test(
            test, tdf, metrics, directions, options, unused.get(test, [])
        )
        rows += test_rows
        curve_rows += test_curves
        warns += test_warns

    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    summary["recommended_runs"] = summary["recommended_runs"].astype("Int64")
    curves = pd.DataFrame(curve_rows, columns=list(CURVE_COLUMNS))
    comparisons = variant_comparisons(df[~crossed_runs], directions, confidence, warns)
    aggregates = across_tests(df[~crossed_runs], directions, confidence, n_resamples, seed)
    crossed = crossed_designs(df[crossed_runs], confidence, n_resamples, seed, warns)
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
            str(t): {metric_name(str(m)): int(n) for m, n in per.items()}
            for t, per in (examples or {}).items()
        },
        comparisons=comparisons,
        crossed=crossed,
        aggregates=aggregates,
        declared=None
        if outcomes is None
        else {str(t): list(per) for t, per in outcomes.items() if per},
    )


def _declared(
    metric_cols: list[str],
    outcomes: Mapping[str, Mapping[str, Mapping[str, Any]]] | None,
    overrides: Mapping[str, bool] | None,
    warns: list[SensitivityWarning],
) -> tuple[dict[str, bool], dict[str, dict[str, int]]]:
    """Directions (an explicit override, else the declared one, else guessed from the name)
    and the evaluation-set sizes declared with the outcomes."""
    declared: dict[str, bool] = {}
    examples: dict[str, dict[str, int]] = {}
    for test, per in (outcomes or {}).items():
        for name, spec in per.items():
            hib = spec.get("higher_is_better")
            if hib is not None:
                if declared.setdefault(name, bool(hib)) != bool(hib):
                    warns.append(
                        SensitivityWarning(
                            "conflicting-direction",
                            f"{test}: outcome {name!r} is declared higher_is_better={hib}, "
                            f"another test declares the opposite; "
                            f"{'higher' if declared[name] else 'lower'} is better is used.",
                            test,
                            metric=name,
                        )
                    )
            if spec.get("n_examples"):
                examples.setdefault(str(test), {})[name] = int(spec["n_examples"])
    directions = {}
    for col in metric_cols:
        name = metric_name(col)
        if overrides and any(k in overrides for k in (name, col)):
            directions[name] = is_higher_better(name, overrides)
        else:
            directions[name] = declared.get(name, is_higher_better(name, None))
    return directions, examples


def _merge_examples(
    given: Mapping[str, Mapping[str, int]] | None, declared: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    merged = {str(t): dict(per) for t, per in declared.items()}
    for test, per in (given or {}).items():
        merged.setdefault(str(test), {}).update({str(m): int(n) for m, n in per.items()})
    return merged


def _input_warnings(test: str, tdf: pd.DataFrame, unused: list[str]) -> list[SensitivityWarning]:
    """Unused sources, too few / failed / NaN runs, and a missing ``all`` sweep."""
    warns = [
        SensitivityWarning(
            "unused-source",
            f"{test}: this sweep measures nothing for source {src!r}: the test never "
            f"asked for source {src} (repro.seed_for({src!r}) was never called), so its "
            f"runs only repeat the same seed. Drop it from the sweep or use the seed.",
            test,
            source=src,
        )
        for src in unused
    ]
    sources = ordered_sources(tdf["source"])
    _run_warnings(test, tdf, sources, warns)
    if REFERENCE_SOURCE not in sources:
        warns.append(
            SensitivityWarning(
                "no-reference",
                f"{test}: no {REFERENCE_SOURCE!r} sweep (every source varied), so variance "
                f"shares are undefined; add source {REFERENCE_SOURCE!r} to the sweep.",
                test,
            )
        )
    return warns


def _analyze_test(
    test: str,
    tdf: pd.DataFrame,
    metrics: list[str],
    directions: Mapping[str, bool],
    options: _Options,
    unused: list[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[SensitivityWarning]]:
    """The summary rows, curve rows and warnings of one test's metrics."""
    from repro_check.core import stats

    sources = ordered_sources(tdf["source"])
    failed = (tdf["status"] == "failed").to_numpy()
    masked = tdf[["source", *metrics]].copy()  # sorted by source, then k
    masked.loc[failed, metrics] = np.nan  # a failed run's values never count
    table = stats.summarize_sources(
        masked, metrics, confidence=options.confidence, reference=REFERENCE_SOURCE
    )
    runs_per_source = tdf.groupby("source", sort=False).size()
    failed_per_source = tdf[failed].groupby("source", sort=False).size()
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    warns: list[SensitivityWarning] = []
    constant: dict[str, list[str]] = {s: [] for s in sources}
    varying: list[str] = []
    for col in metrics:
        metric = metric_name(col)
        per_source = table[table["metric"] == col]
        ref = per_source[per_source["source"] == REFERENCE_SOURCE]
        ref_std = float(ref["std"].iloc[0]) if len(ref) else float("nan")
        ref_n = int(ref["n"].iloc[0]) if len(ref) else 0
        ref_varies = math.isfinite(ref_std) and ref_std > 0.0
        if ref_varies:
            varying.append(metric)
        hw = _target(options.target_half_width, metric, ref_std)
        n_examples = lookup(options.accuracy_examples, test, metric)
        for base in per_source.to_dict("records"):
            src = base["source"]
            n_runs = int(runs_per_source.get(src, 0))
            n_failed = int(failed_per_source.get(src, 0))
            row = _summary_row(test, metric, base, n_runs, n_failed, hw, n_examples, options)
            rows.append(row)
            if src != REFERENCE_SOURCE and ref_varies and row["n"] >= 2 and row["std"] == 0.0:
                constant[src].append(metric)
            if n_runs >= 2 and 0 < row["n"] < 2:
                warns.append(
                    SensitivityWarning(
                        "no-spread",
                        f"{test}: {metric} of source {src!r} has {row['n']} usable run: "
                        f"no spread (std, CI and variance share are undefined).",
                        test,
                        source=src,
                        metric=metric,
                    )
                )
        if len(ref) and ref_n >= 2 and not ref_varies:
            warns.append(
                SensitivityWarning(
                    "constant-metric",
                    f"{test}: {metric} is identical in all {ref_n} runs of the "
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
        if ref_n >= 1:
            ref_vals = _values(masked, REFERENCE_SOURCE, col)
            curves += _curve_rows(test, metric, ref_vals, directions[metric], options)
    warns += _constant_source_warnings(test, tdf, constant, varying, unused)
    return rows, curves, warns


def _values(masked: pd.DataFrame, source: str, column: str) -> np.ndarray:
    values = masked.loc[masked["source"] == source, column].to_numpy(dtype=np.float64)
    return values[np.isfinite(values)]


def _summary_row(
    test: str,
    metric: str,
    base: Mapping[str, Any],
    n_runs: int,
    n_failed: int,
    hw: float,
    n_examples: int | None,
    options: _Options,
) -> dict[str, Any]:
    """One row of :data:`SUMMARY_COLUMNS` from a ``stats.summarize_sources`` row."""
    import pandas as pd

    from repro_check.core import stats

    floor = wilson_low = wilson_high = float("nan")
    if n_examples is not None and base["n"] and 0.0 <= base["mean"] <= 1.0:
        floor = stats.binomial_noise_floor(base["mean"], int(n_examples))
        wilson = stats.wilson_interval(base["mean"] * int(n_examples), int(n_examples))
        wilson_low, wilson_high = wilson.low, wilson.high
    rec: Any = pd.NA
    if math.isfinite(base["std"]) and math.isfinite(hw) and hw > 0.0:
        rec = stats.recommended_runs(
            base["std"], hw, confidence=options.confidence, method=RECOMMENDED_RUNS_METHOD
        )
    row = {
        "test": test,
        "metric": metric,
        "n_runs": n_runs,
        "n_failed": n_failed,
        "n_nan": int(base["n_excluded"]) - n_failed,
        "noise_floor": floor,
        "wilson_low": wilson_low,
        "wilson_high": wilson_high,
        "target_half_width": hw,
        "recommended_runs": rec,
    }
    for key in SUMMARY_COLUMNS:
        if key not in row:
            row[key] = base[key]
    return {key: row[key] for key in SUMMARY_COLUMNS}


def _curve_rows(
    test: str, metric: str, values: np.ndarray, hib: bool, options: _Options
) -> list[dict[str, Any]]:
    """The expected-best curve of the ``all`` sweep (Dodge et al. 2019) with its band."""
    from repro_check.core import stats

    budgets = np.arange(1, values.size + 1)
    expected = stats.expected_max(values, budgets, higher_is_better=hib)
    low, high = stats.expected_max_band(
        values,
        budgets,
        confidence=options.confidence,
        n_resamples=options.n_resamples,
        seed=options.seed,
        higher_is_better=hib,
    )
    return [
        {
            "test": test,
            "metric": metric,
            "source": REFERENCE_SOURCE,
            "budget": int(b),
            "expected": float(e),
            "low": float(lo),
            "high": float(hi),
        }
        for b, e, lo, hi in zip(budgets, expected, low, high, strict=True)
    ]


def _constant_source_warnings(
    test: str,
    tdf: pd.DataFrame,
    constant: Mapping[str, list[str]],
    varying: list[str],
    unused: list[str],
) -> list[SensitivityWarning]:
    warns = []
    for src, const_metrics in constant.items():
        if not const_metrics or src in unused:
            continue
        n = len(tdf[tdf["source"] == src])
        if src in NON_SEED_SOURCES:  # not a stream the test draws from: a real finding
            message = (
                f"{test}: {', '.join(const_metrics)} is bit-for-bit identical across the {n} "
                f"{src!r} runs while {REFERENCE_SOURCE!r} varies: at this scale and training "
                f"length, {NON_SEED_SOURCES[src]} does not move this metric."
            )
        elif set(const_metrics) >= set(varying):
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
    return warns


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


def _commands(rows: pd.DataFrame, limit: int = 3) -> str:
    cmds = [c for c in rows["command"].tolist() if c]
    if not cmds:
        return ""
    shown = "; ".join(cmds[:limit])
    more = f" (+{len(cmds) - limit} more in runs.csv)" if len(cmds) > limit else ""
    return f" Rerun: {shown}{more}"
