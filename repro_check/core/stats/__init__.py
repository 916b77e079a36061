"""Statistics for seed-sensitivity reports, written to read like the papers they implement.

Core layer: numpy, scipy and (for :func:`summarize_sources` only) pandas; never pytest or torch.
The style follows rliable (Agarwal et al., NeurIPS 2021): robust aggregates (IQM), intervals
and probability of improvement rather than a single number -- with intervals chosen to keep
their coverage at the 2 to 30 runs of a seed sweep (:mod:`.intervals`).

Conventions shared by every function here:

* Input is any array-like of numbers; it is flattened.
* Non-finite values (NaN, +-inf) are *counted* and excluded -- never silently dropped: the
  returned objects say how many were excluded (:class:`Summary`, :class:`Interval`,
  :class:`ImprovementTest`).
* Fewer than two finite values give no spread: std / confidence bounds are NaN and the result
  carries a flag (``Summary.note``, ``Interval.method == "insufficient-data"``); nothing raises.
* Constant data gives degenerate (zero-width) intervals, without warnings or NaN.

Modules: :mod:`.summary` (describe, IQM), :mod:`.intervals` (t, chi-square, trimmed-t, F,
Wilson, bootstrap), :mod:`.variance` (shares, crossed two-way split), :mod:`.expected`
(expected max), :mod:`.improvement` (P(A>B), mean difference, effect size, decision rule),
:mod:`.aggregate` (rliable's across-task view), :mod:`.tables` (the per-source table).

References (see docs/statistics.md for the formulas):

* Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice"
  (NeurIPS) -- IQM, stratified bootstrap, performance profiles, probability of improvement.
* Bouthillier et al. 2021, "Accounting for Variance in Machine Learning Benchmarks" (MLSys) --
  per-source variance, binomial noise floor, P(A>B) decision rule, Noether sample size.
* Summers & Dinneen 2021, "Nondeterminism and Instability in Neural Network Optimization" (ICML).
* Dodge et al. 2019, "Show Your Work: Improved Reporting of Experimental Results" (EMNLP) --
  expected validation performance (expected max over a budget of runs).
* Efron & Tibshirani 1993, "An Introduction to the Bootstrap" -- percentile bootstrap.
* Tukey & McLaughlin 1963; Yuen 1974 -- the trimmed-mean t interval.
* Newcombe 2006, "Confidence intervals for an effect size measure based on the Mann-Whitney
  statistic" (Statistics in Medicine) -- the score interval of P(A>B).
* Noether 1987, "Sample size determination for some common nonparametric tests" (JASA).
"""

from repro_check.core.stats._common import CONSTANT, DEFAULT_N_RESAMPLES, INSUFFICIENT
from repro_check.core.stats.aggregate import (
    PerformanceProfile,
    aggregate_iqm,
    aggregate_probability_of_improvement,
    performance_profile,
    stratified_iqm_ci,
)
from repro_check.core.stats.expected import expected_max, expected_max_band
from repro_check.core.stats.improvement import (
    DECISION_RULE,
    TOO_FEW,
    Comparison,
    ImprovementTest,
    SideBySide,
    compare_samples,
    decision_rule,
    effect_size,
    mean_difference,
    newcombe_auc_interval,
    noether_sample_size,
    probability_of_improvement,
)
from repro_check.core.stats.intervals import (
    Interval,
    binomial_noise_floor,
    bootstrap_ci,
    iqm_ci,
    mean_ci,
    recommended_runs,
    std_ci,
    variance_ratio_ci,
    wilson_interval,
)
from repro_check.core.stats.summary import Summary, describe, iqm
from repro_check.core.stats.tables import SUMMARY_COLUMNS, summarize_sources
from repro_check.core.stats.variance import (
    CrossedDecomposition,
    crossed_decomposition,
    variance_share_cis,
    variance_shares,
)

__all__ = [
    "CONSTANT",
    "DECISION_RULE",
    "DEFAULT_N_RESAMPLES",
    "INSUFFICIENT",
    "SUMMARY_COLUMNS",
    "TOO_FEW",
    "Comparison",
    "CrossedDecomposition",
    "ImprovementTest",
    "Interval",
    "PerformanceProfile",
    "SideBySide",
    "Summary",
    "aggregate_iqm",
    "aggregate_probability_of_improvement",
    "binomial_noise_floor",
    "bootstrap_ci",
    "compare_samples",
    "crossed_decomposition",
    "decision_rule",
    "describe",
    "effect_size",
    "expected_max",
    "expected_max_band",
    "iqm",
    "iqm_ci",
    "mean_ci",
    "mean_difference",
    "newcombe_auc_interval",
    "noether_sample_size",
    "performance_profile",
    "probability_of_improvement",
    "recommended_runs",
    "std_ci",
    "stratified_iqm_ci",
    "summarize_sources",
    "variance_ratio_ci",
    "variance_share_cis",
    "variance_shares",
    "wilson_interval",
]
