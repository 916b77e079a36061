"""repro_check.core.stats against scipy/numpy on known data, and its robustness promises."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from repro_check.core import stats
from repro_check.core.stats import (
    Interval,
    binomial_noise_floor,
    bootstrap_ci,
    describe,
    expected_max,
    expected_max_band,
    iqm,
    probability_of_improvement,
    recommended_runs,
    summarize_sources,
    variance_shares,
)
from repro_check.core.stats.improvement import _decide, _p_unpaired

RNG = np.random.default_rng(12345)
SAMPLE = RNG.normal(loc=0.8, scale=0.05, size=23)
FAST = 400  # bootstrap resamples in tests

finite_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite_floats, min_size=1, max_size=30)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------------------------- describe


def test_iqm_matches_scipy_trim_mean():
    assert iqm(SAMPLE) == pytest.approx(scipy.stats.trim_mean(SAMPLE, 0.25), rel=0, abs=0)
    assert iqm([1, 2, 3, 4, 100, -100, 5, 6]) == scipy.stats.trim_mean(
        [1, 2, 3, 4, 100, -100, 5, 6], 0.25
    )


def test_iqm_excludes_non_finite_and_handles_empty():
    assert iqm([1.0, 2.0, 3.0, np.nan, np.inf]) == scipy.stats.trim_mean([1.0, 2.0, 3.0], 0.25)
    assert math.isnan(iqm([]))
    assert math.isnan(iqm([np.nan]))


def test_iqm_vectorised_axis():
    data = RNG.normal(size=(5, 12))
    np.testing.assert_allclose(iqm(data, axis=-1), scipy.stats.trim_mean(data, 0.25, axis=-1))


def test_describe_matches_numpy():
    s = describe(SAMPLE)
    assert (s.n, s.n_finite, s.n_nan, s.n_inf) == (23, 23, 0, 0)
    assert s.mean == pytest.approx(np.mean(SAMPLE))
    assert s.std == pytest.approx(np.std(SAMPLE, ddof=1))
    assert (s.min, s.max) == (SAMPLE.min(), SAMPLE.max())
    q = np.quantile(SAMPLE, [0.05, 0.25, 0.5, 0.75, 0.95])
    assert [s.q05, s.q25, s.median, s.q75, s.q95] == pytest.approx(q)
    assert s.iqm == pytest.approx(scipy.stats.trim_mean(SAMPLE, 0.25))
    assert s.note is None and s.has_spread


def test_describe_counts_and_excludes_non_finite():
    s = describe([1.0, np.nan, 2.0, np.inf, -np.inf, 3.0, np.nan])
    assert (s.n, s.n_finite, s.n_nan, s.n_inf, s.n_excluded) == (7, 3, 2, 2, 4)
    assert s.mean == 2.0 and s.std == 1.0
    assert "4 non-finite" in s.note


def test_describe_single_value_has_no_spread(no_warnings):
    s = describe([0.7])
    assert s.mean == 0.7 and s.median == 0.7 and s.iqm == 0.7
    assert math.isnan(s.std)
    assert not s.has_spread and "fewer than 2" in s.note


def test_describe_empty_and_all_nan(no_warnings):
    for values in ([], [np.nan, np.nan]):
        s = describe(values)
        assert s.n_finite == 0 and math.isnan(s.mean) and math.isnan(s.std)
        assert "no finite values" in s.note
    assert describe([np.nan, np.nan]).n_nan == 2


def test_describe_constant(no_warnings):
    s = describe([0.5] * 6)
    assert s.std == 0.0 and s.min == s.max == s.iqm == 0.5
    assert s.to_dict()["n"] == 6


# ---------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_equals_direct_scipy_call():
    ci = bootstrap_ci(SAMPLE, np.mean, confidence=0.9, n_resamples=FAST, seed=7)
    ref = scipy.stats.bootstrap(
        (SAMPLE,),
        np.mean,
        n_resamples=FAST,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(7),
    )
    assert ci.low == ref.confidence_interval.low
    assert ci.high == ref.confidence_interval.high
    assert ci.point == pytest.approx(np.mean(SAMPLE))
    assert (ci.method, ci.confidence, ci.n) == ("percentile", 0.9, 23)
    assert ci.low < ci.point < ci.high


def test_bootstrap_ci_is_reproducible_and_accepts_iqm():
    a = bootstrap_ci(SAMPLE, iqm, n_resamples=FAST, seed=3)
    b = bootstrap_ci(SAMPLE, iqm, n_resamples=FAST, seed=3)
    assert a == b
    assert a.point == pytest.approx(scipy.stats.trim_mean(SAMPLE, 0.25))
    assert a.low <= a.point <= a.high


def test_bootstrap_ci_constant_data_is_degenerate(no_warnings):
    ci = bootstrap_ci([2.5] * 8, n_resamples=FAST)
    assert (ci.low, ci.high, ci.point) == (2.5, 2.5, 2.5)
    assert ci.method == "constant-data" and ci.half_width == 0.0


@pytest.mark.parametrize("values", [[], [1.0], [np.nan, 4.0, np.inf]])
def test_bootstrap_ci_insufficient_data(values, no_warnings):
    ci = bootstrap_ci(values, n_resamples=FAST)
    assert isinstance(ci, Interval)
    assert ci.method == "insufficient-data"
    assert math.isnan(ci.low) and math.isnan(ci.high)


def test_bootstrap_ci_excludes_and_counts_non_finite():
    ci = bootstrap_ci([*SAMPLE, np.nan, np.inf], n_resamples=FAST, seed=1)
    assert (ci.n, ci.n_excluded) == (23, 2)
    assert ci == Interval(
        **{**bootstrap_ci(SAMPLE, n_resamples=FAST, seed=1).to_dict(), "n_excluded": 2}
    )


def test_bootstrap_ci_rejects_bad_confidence():
    with pytest.raises(ValueError):
        bootstrap_ci(SAMPLE, confidence=95)


# ---------------------------------------------------------------------------------- variance


def test_variance_shares_known_values():
    shares = variance_shares(
        {"all": [0.0, 2.0, 4.0], "init": [0.0, 1.0, 2.0], "data": [1.0, 1.0, 1.0]}
    )
    assert shares == {"all": 1.0, "init": 0.25, "data": 0.0}


def test_variance_shares_robust_to_zero_variance_and_few_runs(no_warnings):
    shares = variance_shares({"all": [1.0, 1.0, 1.0], "init": [1.0, 2.0]})
    assert math.isnan(shares["all"]) and math.isnan(shares["init"])
    shares = variance_shares({"all": [1.0, 3.0, np.nan], "init": [2.0], "data": [1.0, 2.0]})
    assert shares["all"] == 1.0 and math.isnan(shares["init"])
    assert shares["data"] == pytest.approx(0.5 / 2.0)


def test_variance_shares_needs_reference():
    with pytest.raises(KeyError, match="all"):
        variance_shares({"init": [1.0, 2.0]})
    assert variance_shares({"every": [0.0, 2.0], "x": [0.0, 1.0]}, reference="every")["x"] == 0.25


def test_binomial_noise_floor():
    assert binomial_noise_floor(0.9, 10_000) == pytest.approx(math.sqrt(0.9 * 0.1 / 10_000))
    assert binomial_noise_floor(0.9, 10_000) == pytest.approx(0.003)
    assert binomial_noise_floor(1.0, 50) == 0.0
    for bad in [(1.5, 10), (-0.1, 10), (0.5, 0)]:
        with pytest.raises(ValueError):
            binomial_noise_floor(*bad)


def test_recommended_runs_normal_approximation():
    z = scipy.stats.norm.ppf(0.975)
    assert recommended_runs(1.0, 0.5) == math.ceil((z * 1.0 / 0.5) ** 2) == 16
    assert recommended_runs(0.02, 0.005, confidence=0.99) == math.ceil(
        (scipy.stats.norm.ppf(0.995) * 4) ** 2
    )
    assert recommended_runs(0.0, 0.1) == 2
    assert recommended_runs(1e-9, 1.0) == 2


def test_recommended_runs_student_t_is_never_smaller():
    for std, hw in [(1.0, 0.5), (1.0, 1.0), (0.3, 0.05), (2.0, 3.0)]:
        n_t = recommended_runs(std, hw, method="t")
        assert n_t >= recommended_runs(std, hw)
        assert scipy.stats.t.ppf(0.975, n_t - 1) * std / math.sqrt(n_t) <= hw
        if n_t > 2:
            n = n_t - 1
            assert scipy.stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) > hw


@pytest.mark.parametrize("std,hw", [(float("nan"), 0.1), (1.0, 0.0), (-1.0, 0.1), (1.0, -1)])
def test_recommended_runs_rejects_undefined_inputs(std, hw):
    with pytest.raises(ValueError):
        recommended_runs(std, hw)


# ---------------------------------------------------------------------------------- expected max


def test_expected_max_one_run_is_the_mean():
    assert expected_max(SAMPLE, [1])[0] == pytest.approx(np.mean(SAMPLE))


def test_expected_max_exact_against_enumeration():
    values = np.array([0.3, 0.1, 0.7, 0.7, 0.2])
    for n in (1, 2, 3):
        brute = np.mean([max(t) for t in itertools.product(values, repeat=n)])
        assert expected_max(values, [n])[0] == pytest.approx(brute, rel=1e-12)


def test_expected_max_matches_monte_carlo():
    budgets = [1, 2, 5, 10, 30]
    rng = np.random.default_rng(0)
    draws = rng.choice(SAMPLE, size=(100_000, max(budgets)), replace=True)
    mc = [draws[:, :n].max(axis=1).mean() for n in budgets]
    np.testing.assert_allclose(expected_max(SAMPLE, budgets), mc, atol=2e-3)


def test_expected_max_tends_to_max_and_lower_is_better():
    assert expected_max(SAMPLE, [10_000])[0] == pytest.approx(SAMPLE.max())
    np.testing.assert_allclose(
        expected_max(SAMPLE, [1, 3, 9], higher_is_better=False),
        -expected_max(-SAMPLE, [1, 3, 9]),
    )
    assert expected_max(SAMPLE, [50], higher_is_better=False)[0] >= SAMPLE.min()


@settings(max_examples=60, deadline=None)
@given(values=samples, budgets=st.lists(st.integers(1, 200), min_size=1, max_size=8))
def test_expected_max_monotone_and_bounded(values, budgets):
    budgets = sorted(budgets)
    curve = expected_max(values, budgets)
    arr = np.asarray(values)
    scale = 1e-9 * max(1.0, float(np.abs(arr).max()))
    assert np.all(np.diff(curve) >= -scale)
    assert np.all(curve <= arr.max() + scale)
    assert np.all(curve >= arr.mean() - scale)


def test_expected_max_robustness(no_warnings):
    assert np.isnan(expected_max([], [1, 2])).all()
    assert expected_max([0.4, np.nan, np.inf], [1, 5]).tolist() == [0.4, 0.4]
    assert expected_max([2.0] * 4, [1, 3]).tolist() == [2.0, 2.0]
    for bad in ([0], [1.5], [-2]):
        with pytest.raises(ValueError):
            expected_max(SAMPLE, bad)


def test_expected_max_band():
    budgets = [1, 4, 16]
    low, high = expected_max_band(SAMPLE, budgets, n_resamples=FAST, seed=0)
    point = expected_max(SAMPLE, budgets)
    assert low.shape == high.shape == (3,)
    assert np.all(low <= point) and np.all(point <= high)
    again = expected_max_band(SAMPLE, budgets, n_resamples=FAST, seed=0)
    np.testing.assert_array_equal(low, again[0])
    nan_low, nan_high = expected_max_band([1.0], budgets)
    assert np.isnan(nan_low).all() and np.isnan(nan_high).all()


# ---------------------------------------------------------------------------------- P(A>B)

BIG = RNG.normal(loc=0.8, scale=0.05, size=40)  # above Noether's 29 runs per side


@settings(max_examples=40, deadline=None)
@given(
    a=st.lists(st.integers(0, 5), min_size=1, max_size=12),
    b=st.lists(st.integers(0, 5), min_size=1, max_size=12),
)
def test_unpaired_p_equals_mann_whitney_u_over_nm(a, b):
    expected = scipy.stats.mannwhitneyu(a, b).statistic / (len(a) * len(b))
    assert _p_unpaired(np.array(a, float), np.array(b, float)) == pytest.approx(expected)
    brute = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
    assert expected == pytest.approx(brute)


def test_unpaired_percentile_ci_equals_a_direct_scipy_bootstrap():
    a = SAMPLE + 0.01
    b = RNG.normal(0.8, 0.05, size=17)
    t = probability_of_improvement(
        a, b, paired=False, n_resamples=FAST, seed=5, method="percentile"
    )
    u = scipy.stats.mannwhitneyu(a, b).statistic
    assert t.p == pytest.approx(u / (len(a) * len(b)))
    ref = scipy.stats.bootstrap(
        (a, b),
        lambda x, y: np.mean(x[..., :, None] > y[..., None, :], axis=(-2, -1)),
        n_resamples=FAST,
        method="percentile",
        rng=np.random.default_rng(5),
    )
    # no ties in continuous data: the brute-force statistic resamples identically
    assert t.ci_low == pytest.approx(ref.confidence_interval.low)
    assert t.ci_high == pytest.approx(ref.confidence_interval.high)
    assert (t.n_a, t.n_b, t.paired, t.method) == (23, 17, False, "percentile")


def _newcombe_brute(p: float, n: int, m: int) -> tuple[float, float]:
    """Newcombe's method 5 by a grid search over theta (the definition, not a root finder)."""
    z2 = scipy.stats.norm.ppf(0.975) ** 2
    theta = np.linspace(0.0, 1.0, 2_000_001)
    n_star = (n + m) / 2
    var = (
        theta
        * (1 - theta)
        / (n * m)
        * (1 + (n_star - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
    )
    inside = theta[(p - theta) ** 2 <= z2 * var]
    return float(inside.min()), float(inside.max())


@pytest.mark.parametrize("p,n,m", [(0.7, 10, 12), (1.0, 5, 5), (0.0, 3, 8), (0.5, 29, 29)])
def test_unpaired_interval_is_newcombes_score_interval(p, n, m):
    low, high = stats.newcombe_auc_interval(p, n, m)
    ref_low, ref_high = _newcombe_brute(p, n, m)
    assert (low, high) == pytest.approx((ref_low, ref_high), abs=2e-6)
    assert 0.0 <= low <= p <= high <= 1.0


def test_paired_p_counts_ties_as_half_with_a_wilson_interval():
    t = probability_of_improvement([1, 2, 3, 4], [0, 2, 5, 1])
    assert t.p == (1 + 0.5 + 0 + 1) / 4
    wilson = stats.wilson_interval(2.5, 4)
    assert (t.ci_low, t.ci_high, t.method) == (wilson.low, wilson.high, "wilson")
    boot = probability_of_improvement(
        [1, 2, 3, 4], [0, 2, 5, 1], n_resamples=FAST, method="percentile"
    )
    ref = scipy.stats.bootstrap(
        ([1.0, 2, 3, 4], [0.0, 2, 5, 1]),
        lambda x, y, axis: np.mean((x > y) + 0.5 * (x == y), axis=axis),
        paired=True,
        n_resamples=FAST,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    assert (boot.ci_low, boot.ci_high) == (
        ref.confidence_interval.low,
        ref.confidence_interval.high,
    )


def test_wilson_interval_known_values():
    # Newcombe (1998), Table I: 0/10 and 5/10 at 95 %
    assert (stats.wilson_interval(0, 10).low, stats.wilson_interval(0, 10).high) == pytest.approx(
        (0.0, 0.2775), abs=1e-4
    )
    five = stats.wilson_interval(5, 10)
    assert (five.low, five.high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert math.isnan(stats.wilson_interval(0, 0).low)
    with pytest.raises(ValueError):
        stats.wilson_interval(11, 10)


def test_noether_sample_size():
    z = scipy.stats.norm.ppf(0.95) * 2
    assert stats.noether_sample_size() == math.ceil(z**2 / (6 * 0.25**2)) == 29
    assert stats.noether_sample_size(gamma=0.9) < 29 < stats.noether_sample_size(gamma=0.7)
    with pytest.raises(ValueError):
        stats.noether_sample_size(gamma=0.5)


def test_two_to_four_runs_never_name_a_winner(no_warnings):
    t = probability_of_improvement([0.7, 0.8], [0.6, 0.65])
    assert t.p == 1.0 and t.decision == "too few runs" and t.decision != "A better"
    assert t.runs_needed == 29 and "run 27 more" in t.reason
    assert t.ci_low < 0.5  # 2 of 2 wins is consistent with a coin flip
    for n in (2, 3, 4):
        a, b = np.arange(n) + 10.0, np.arange(n) * 1.0
        for paired in (True, False):
            assert probability_of_improvement(a, b, paired=paired).decision == "too few runs"


def test_decision_clearly_better_and_clearly_worse(no_warnings):
    better = probability_of_improvement(BIG + 0.5, BIG)
    assert (better.p, better.ci_high, better.decision) == (1.0, 1.0, "A better")
    assert better.ci_low > 0.9 and better.reason == ""
    worse = probability_of_improvement(BIG, BIG + 0.5, paired=False)
    assert (worse.p, worse.decision) == (0.0, "B better")
    assert "0.5" in better.rule and "0.75" in better.rule and "Bouthillier" in better.rule
    assert "29" in better.rule and "Noether" in better.rule


def test_decision_inconclusive_for_same_distribution():
    b = RNG.normal(0.8, 0.05, size=40)
    t = probability_of_improvement(BIG, b)
    assert t.decision == "inconclusive"
    assert t.ci_low < 0.5 < t.ci_high


@pytest.mark.parametrize(
    "low,high,decision",
    [
        (0.51, 0.80, "A better"),
        (0.55, 0.70, "inconclusive"),  # significant, not meaningful
        (0.45, 0.90, "inconclusive"),  # meaningful, not significant
        (0.20, 0.45, "B better"),
        (0.30, 0.49, "inconclusive"),
        (float("nan"), float("nan"), "inconclusive"),
    ],
)
def test_decision_rule_cases(low, high, decision):
    assert _decide(low, high, 0.75) == decision


def test_improvement_robustness(no_warnings):
    t = probability_of_improvement([1.0, np.nan, 3.0, 4.0], [0.0, 1.0, np.inf, 2.0])
    assert (t.n_a, t.n_b, t.n_excluded) == (2, 2, 2)
    assert t.p == 1.0
    single = probability_of_improvement([1.0], [0.0])
    assert single.p == 1.0 and math.isnan(single.ci_low) and single.decision == "too few runs"
    empty = probability_of_improvement([np.nan], [1.0, 2.0], paired=False)
    assert math.isnan(empty.p) and empty.decision == "too few runs"
    constant = probability_of_improvement([1.0] * 5, [1.0] * 5)
    assert constant.p == 0.5 and constant.ci_low < 0.5 < constant.ci_high
    assert constant.decision == "too few runs"
    constant = probability_of_improvement([1.0] * 5, [1.0] * 5, method="percentile")
    assert (constant.ci_low, constant.ci_high, constant.method) == (0.5, 0.5, "constant-data")
    with pytest.raises(ValueError, match="paired"):
        probability_of_improvement([1.0, 2.0], [1.0])


def test_mean_difference_and_effect_size_against_scipy():
    a, b = SAMPLE + 0.01, SAMPLE + RNG.normal(0, 0.01, SAMPLE.size)
    paired = stats.mean_difference(a, b, paired=True)
    ref = scipy.stats.ttest_rel(a, b).confidence_interval()
    assert (paired.low, paired.high, paired.method) == (
        pytest.approx(ref.low),
        pytest.approx(ref.high),
        "paired t",
    )
    welch = stats.mean_difference(a, b, paired=False)
    ref = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert (welch.low, welch.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    d = a - b
    assert stats.effect_size(a, b, paired=True) == (pytest.approx(d.mean() / d.std(ddof=1)), "d_z")
    n = a.size
    pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    g = (a.mean() - b.mean()) / pooled * (1 - 3 / (4 * 2 * n - 9))
    assert stats.effect_size(a, b, paired=False) == (pytest.approx(g), "Hedges g")


def test_identical_variants_compare_as_equal(no_warnings):
    values = [0.71, 0.74, 0.69, 0.73]
    c = stats.compare_samples(values, list(values))
    assert c.paired is not None and c.paired.improvement.p == 0.5
    assert c.paired.improvement.ci_low < 0.5 < c.paired.improvement.ci_high
    assert c.paired.mean_difference.contains(0.0)
    assert c.unpaired.mean_difference.contains(0.0)
    assert c.decision == "too few runs"


# ---------------------------------------------------------------------------------- intervals


def test_mean_std_iqm_intervals_against_scipy_and_formulas():
    x = SAMPLE[:7]
    m = stats.mean_ci(x)
    ref = scipy.stats.t.interval(0.95, 6, loc=x.mean(), scale=scipy.stats.sem(x))
    assert (m.low, m.high, m.method) == (pytest.approx(ref[0]), pytest.approx(ref[1]), "t")
    s = stats.std_ci(x)
    sd = x.std(ddof=1)
    assert s.low == pytest.approx(sd * math.sqrt(6 / scipy.stats.chi2.ppf(0.975, 6)))
    assert s.high == pytest.approx(sd * math.sqrt(6 / scipy.stats.chi2.ppf(0.025, 6)))
    q = stats.iqm_ci(x)  # n = 7: one run cut from each end, h = 5
    w = np.clip(x, np.sort(x)[1], np.sort(x)[5])
    se = math.sqrt(6 * np.var(w, ddof=1) / (5 * 4))
    assert q.point == pytest.approx(scipy.stats.trim_mean(x, 0.25))
    assert q.high - q.point == pytest.approx(scipy.stats.t.ppf(0.975, 4) * se)
    assert q.method == "trimmed-t" and stats.iqm_ci(x[:3]).method == "t"
    r = stats.variance_ratio_ci(x, SAMPLE[7:])
    ratio = np.var(x, ddof=1) / np.var(SAMPLE[7:], ddof=1)
    assert r.low == pytest.approx(ratio / scipy.stats.f.ppf(0.975, 6, 15))
    assert r.high == pytest.approx(ratio / scipy.stats.f.ppf(0.025, 6, 15))


def test_small_sample_intervals_are_degenerate_not_wrong(no_warnings):
    for ci in (stats.mean_ci, stats.std_ci, stats.iqm_ci):
        assert ci([1.0]).method == "insufficient-data"
        assert ci([2.0, 2.0, 2.0]).method == "constant-data"
    assert stats.mean_ci([0.1, 0.3]).low < 0.1  # n = 2: wider than [min, max]


def test_intervals_cover_at_n5_by_simulation():
    """Nominal 95 % at n = 5 must cover >= 93 % (the percentile bootstrap covers ~80 %)."""
    rng = np.random.default_rng(20261129)
    reps = 2000
    x = rng.normal(0.0, 1.0, (reps, 5))
    covered = {
        "mean": np.mean([stats.mean_ci(v).contains(0.0) for v in x]),
        "std": np.mean([stats.std_ci(v).contains(1.0) for v in x]),
        "iqm": np.mean([stats.iqm_ci(v).contains(0.0) for v in x]),
        "share": np.mean(
            [
                stats.variance_ratio_ci(v[:5] * math.sqrt(0.5), w).contains(0.5)
                for v, w in zip(x, x[::-1], strict=True)
            ]
        ),
    }
    assert all(c >= 0.93 for c in covered.values()), covered
    boot = np.mean(
        [bootstrap_ci(v, n_resamples=200, seed=i).contains(0.0) for i, v in enumerate(x[:500])]
    )
    assert boot < 0.9  # the reason the report does not use it at small n


# ---------------------------------------------------------------------------------- crossed


def test_crossed_decomposition_separates_main_effects_and_interaction():
    rng = np.random.default_rng(3)
    rows, cols = rng.normal(0, 2.0, 6), rng.normal(0, 1.0, 5)
    additive = rows[:, None] + cols[None, :]
    d = stats.crossed_decomposition(additive, "init", "data", n_resamples=FAST)
    assert d.shares["init x data"] == pytest.approx(0.0, abs=1e-12)
    assert d.components["init"] == pytest.approx(np.var(rows, ddof=1))
    assert d.components["data"] == pytest.approx(np.var(cols, ddof=1))
    assert sum(d.shares.values()) == pytest.approx(1.0)
    total = ((additive - additive.mean()) ** 2).sum()
    assert sum(d.sums_of_squares.values()) == pytest.approx(total)
    pure = rows[:, None] * cols[None, :] - np.outer(rows.mean(), cols.mean())
    pure = pure - pure.mean(axis=0) - pure.mean(axis=1, keepdims=True) + pure.mean()
    inter = stats.crossed_decomposition(pure, "init", "data", n_resamples=FAST)
    assert inter.shares["init x data"] == pytest.approx(1.0)
    assert set(inter.truncated) <= {"init", "data"}
    assert all(i.low <= d.shares[name] <= i.high for name, i in d.intervals.items())
    with pytest.raises(ValueError, match="rerun"):
        stats.crossed_decomposition([[1.0, np.nan], [2.0, 3.0]])


# ---------------------------------------------------------------------------------- aggregate


def test_aggregate_iqm_profiles_and_improvement_follow_rliable():
    rng = np.random.default_rng(5)
    x = [rng.normal(0.8, 0.05, 10), rng.normal(0.6, 0.05, 7)]
    y = [rng.normal(0.78, 0.05, 10), rng.normal(0.55, 0.05, 9)]
    assert stats.aggregate_iqm(x) == scipy.stats.trim_mean(np.concatenate(x), 0.25)
    ci = stats.stratified_iqm_ci(x, n_resamples=FAST)
    assert ci.low <= ci.point <= ci.high and ci.method == "stratified bootstrap"
    p = stats.aggregate_probability_of_improvement(x, y, n_resamples=FAST)
    per_task = [
        scipy.stats.mannwhitneyu(a, b).statistic / (a.size * b.size)
        for a, b in zip(x, y, strict=True)
    ]
    assert p.point == pytest.approx(np.mean(per_task))
    assert p.low <= p.point <= p.high
    prof = stats.performance_profile(x, taus=[0.0, 0.7, 2.0], n_resamples=FAST)
    assert prof.fraction.tolist() == pytest.approx(
        [1.0, np.mean([np.mean(x[0] > 0.7), np.mean(x[1] > 0.7)]), 0.0]
    )
    assert np.all(prof.low <= prof.fraction) and np.all(prof.fraction <= prof.high)
    # stratified: a task's runs never stand in for another task's
    fixed = stats.stratified_iqm_ci([[1.0, 1.0], [3.0, 3.0]], n_resamples=FAST)
    assert fixed.low == fixed.high == 2.0


# ---------------------------------------------------------------------------------- tables


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for source, scale in [("all", 0.02), ("init", 0.01), ("data", 0.015)]:
        for i, v in enumerate(rng.normal(0.9, scale, size=8)):
            rows.append({"source": source, "acc": v, "loss": 1 - v if i else np.nan})
    return pd.DataFrame(rows)


def test_summarize_sources():
    table = _table()
    out = summarize_sources(table, ["acc", "loss"])
    assert list(out.columns) == list(stats.SUMMARY_COLUMNS)
    assert list(out["source"]) == ["all", "init", "data"] * 2
    row = out[(out.source == "init") & (out.metric == "acc")].iloc[0]
    values = table.loc[table.source == "init", "acc"].to_numpy()
    assert row["n"] == 8 and row["mean"] == pytest.approx(values.mean())
    assert row["std"] == pytest.approx(values.std(ddof=1))
    assert row["iqm"] == pytest.approx(scipy.stats.trim_mean(values, 0.25))
    ci = stats.mean_ci(values)
    assert (row["ci_low"], row["ci_high"], row["ci_method"]) == (ci.low, ci.high, "t")
    sd, trimmed = stats.std_ci(values), stats.iqm_ci(values)
    assert (row["std_low"], row["std_high"]) == (sd.low, sd.high)
    assert (row["iqm_low"], row["iqm_high"]) == (trimmed.low, trimmed.high)
    shares = variance_shares(
        {s: table.loc[table.source == s, "acc"].to_numpy() for s in ("all", "init", "data")}
    )
    assert row["var_share"] == pytest.approx(shares["init"])
    share = stats.variance_ratio_ci(values, table.loc[table.source == "all", "acc"].to_numpy())
    assert (row["share_low"], row["share_high"]) == (share.low, share.high)
    loss = out[out.metric == "loss"]
    assert (loss["n"] == 7).all() and (loss["n_excluded"] == 1).all()


def test_summarize_sources_without_reference_and_bad_columns():
    table = _table()
    out = summarize_sources(table[table.source != "all"], "acc")
    assert out["var_share"].isna().all() and len(out) == 2
    with pytest.raises(KeyError, match="nope"):
        summarize_sources(table, ["nope"])
