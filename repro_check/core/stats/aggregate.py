"""Aggregates across several tests (tasks), as rliable computes them (Agarwal et al. 2021).

A *task* is one test (or one group of paired variants); each task has its own runs. Every
aggregate gives each task equal weight, and its interval is a *stratified* percentile bootstrap:
runs are resampled within each task, never across tasks. Scores must be on one scale across
tasks (the same outcome, e.g. accuracy); rliable normalises them first for that reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

from repro_check.core.stats._common import check_confidence
from repro_check.core.stats.improvement import _p_unpaired
from repro_check.core.stats.intervals import Interval

STRATIFIED = "stratified bootstrap"


def _tasks(scores: Sequence[Any]) -> list[np.ndarray]:
    tasks = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores]
    tasks = [t[np.isfinite(t)] for t in tasks]
    if not tasks or any(t.size == 0 for t in tasks):
        raise ValueError("every task needs at least one finite run")
    return tasks


def _resample(tasks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    return [t[rng.integers(0, t.size, size=t.size)] for t in tasks]


def aggregate_iqm(scores: Sequence[Any]) -> float:
    """IQM of every run of every task pooled (rliable's ``aggregate_iqm``: the 25 % trimmed
    mean of the flattened runs x tasks scores)."""
    return float(scipy.stats.trim_mean(np.concatenate(_tasks(scores)), 0.25))


def _stratified(
    statistic: Callable[[list[np.ndarray]], Any],
    samples: list[list[np.ndarray]],
    confidence: float,
    n_resamples: int,
    seed: int | np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray]:
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    draws = np.array([statistic(*[_resample(s, rng) for s in samples]) for _ in range(n_resamples)])
    alpha = 1.0 - confidence
    low, high = np.quantile(draws, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    return low, high


def stratified_iqm_ci(
    scores: Sequence[Any],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator | None = 0,
) -> Interval:
    """:func:`aggregate_iqm` with its stratified-bootstrap percentile interval."""
    check_confidence(confidence)
    tasks = _tasks(scores)
    point = aggregate_iqm(tasks)
    low, high = _stratified(lambda t: aggregate_iqm(t), [tasks], confidence, n_resamples, seed)
    n = int(sum(t.size for t in tasks))
    return Interval(float(low), float(high), point, confidence, STRATIFIED, n, 0)


@dataclass(frozen=True)
class PerformanceProfile:
    """Fraction of runs scoring above each threshold ``tau`` (tasks weighted equally), with a
    stratified-bootstrap band: rliable's score distribution. ``higher_is_better=False``
    counts runs *below* tau."""

    taus: np.ndarray
    fraction: np.ndarray
    low: np.ndarray
    high: np.ndarray
    higher_is_better: bool = True


def _profile(tasks: list[np.ndarray], taus: np.ndarray, hib: bool) -> np.ndarray:
    if hib:
        per_task = [np.mean(t[:, None] > taus[None, :], axis=0) for t in tasks]
    else:
        per_task = [np.mean(t[:, None] < taus[None, :], axis=0) for t in tasks]
    return np.mean(per_task, axis=0)


def performance_profile(
    scores: Sequence[Any],
    taus: Any = None,
    higher_is_better: bool = True,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator | None = 0,
) -> PerformanceProfile:
    """The performance profile of one method over its tasks (default: 101 thresholds spanning
    the pooled runs)."""
    check_confidence(confidence)
    tasks = _tasks(scores)
    if taus is None:
        pooled = np.concatenate(tasks)
        taus = np.linspace(pooled.min(), pooled.max(), 101)
    taus = np.asarray(taus, dtype=np.float64).reshape(-1)
    fraction = _profile(tasks, taus, higher_is_better)
    low, high = _stratified(
        lambda t: _profile(t, taus, higher_is_better), [tasks], confidence, n_resamples, seed
    )
    return PerformanceProfile(taus, fraction, low, high, higher_is_better)


def _mean_p(x: list[np.ndarray], y: list[np.ndarray]) -> float:
    return float(np.mean([_p_unpaired(a, b) for a, b in zip(x, y, strict=True)]))


def aggregate_probability_of_improvement(
    x: Sequence[Any],
    y: Sequence[Any],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator | None = 0,
) -> Interval:
    """P(X > Y) averaged over tasks (``x[m]`` and ``y[m]`` are the runs of X and Y on task m;
    Mann-Whitney within each task), with a stratified-bootstrap interval: rliable's
    ``probability_of_improvement``. Higher is better; negate losses."""
    check_confidence(confidence)
    xs, ys = _tasks(x), _tasks(y)
    if len(xs) != len(ys):
        raise ValueError(f"X has {len(xs)} tasks and Y {len(ys)}: compare on the same tasks")
    point = _mean_p(xs, ys)
    low, high = _stratified(_mean_p, [xs, ys], confidence, n_resamples, seed)
    n = min(sum(t.size for t in xs), sum(t.size for t in ys))
    return Interval(float(low), float(high), point, confidence, STRATIFIED, int(n), 0)
