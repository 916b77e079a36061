"""Coverage of the report's 95 % intervals, and false decisions under a null, by simulation.

Prints name=value lines: ``coverage.<statistic>.<distribution>.n<n>`` (fraction of simulated
samples whose interval contains the true value) and ``null_better.<method>.n<n>`` (fraction of
null comparisons -- A and B from one distribution -- that end in "A better" or "B better").
Seeded; no wall-clock. ``python benchmarks/bench_stats_coverage.py [--reps 4000]``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import scipy.stats

from repro_check.core import stats

NS = (2, 3, 5, 8, 20)


def _draw(rng: np.random.Generator, dist: str, size: tuple[int, ...]) -> np.ndarray:
    if dist == "normal":
        return rng.normal(0.0, 1.0, size)
    return rng.lognormal(0.0, 0.5, size)  # right-skewed, like a loss


def _truth(dist: str) -> dict[str, float]:
    if dist == "normal":
        return {"mean": 0.0, "std": 1.0, "iqm": 0.0}
    s2 = 0.25
    iqm = (
        scipy.stats.lognorm(0.5).expect(
            lb=scipy.stats.lognorm(0.5).ppf(0.25), ub=scipy.stats.lognorm(0.5).ppf(0.75)
        )
        / 0.5
    )
    return {
        "mean": math.exp(s2 / 2),
        "std": math.sqrt((math.exp(s2) - 1) * math.exp(s2)),
        "iqm": float(iqm),
    }


def coverage(reps: int) -> None:
    rng = np.random.default_rng(20261129)
    for dist in ("normal", "lognormal"):
        truth = _truth(dist)
        for n in NS:
            samples = _draw(rng, dist, (reps, n))
            hits = {"mean.t": 0, "mean.percentile": 0, "std.chi2": 0, "iqm.trimmed-t": 0}
            for x in samples:
                hits["mean.t"] += stats.mean_ci(x).contains(truth["mean"])
                hits["std.chi2"] += stats.std_ci(x).contains(truth["std"])
                hits["iqm.trimmed-t"] += stats.iqm_ci(x).contains(truth["iqm"])
                if n >= 3:
                    boot = stats.bootstrap_ci(x, n_resamples=500, seed=rng)
                    hits["mean.percentile"] += boot.contains(truth["mean"])
            for name, count in hits.items():
                if name == "mean.percentile" and n < 3:
                    continue
                print(f"coverage.{name}.{dist}.n{n}={count / reps:.3f}")
    # variance share, normal data, independent samples: true ratio 0.5
    for n in NS[1:]:
        a = rng.normal(0.0, math.sqrt(0.5), (reps, n))
        b = rng.normal(0.0, 1.0, (reps, n))
        hit = sum(stats.variance_ratio_ci(x, y).contains(0.5) for x, y in zip(a, b, strict=True))
        print(f"coverage.share.F.normal.n{n}={hit / reps:.3f}")


def improvement(reps: int) -> None:
    rng = np.random.default_rng(7)
    delta = 0.5
    for n in NS[1:] + (30,):
        # unpaired: A ~ N(delta, 1), B ~ N(0, 1); P(A > B) = Phi(delta / sqrt 2)
        truth = scipy.stats.norm.cdf(delta / math.sqrt(2))
        hit = 0
        for _ in range(reps):
            a, b = rng.normal(delta, 1, n), rng.normal(0, 1, n)
            t = stats.probability_of_improvement(a, b, paired=False)
            hit += t.ci_low <= truth <= t.ci_high
        print(f"coverage.p_improvement.newcombe.n{n}={hit / reps:.3f}")
        # paired: shared seed effect s, own noise e: P(a_k > b_k) = Phi(delta / (0.5 sqrt 2))
        truth = scipy.stats.norm.cdf(delta / (0.5 * math.sqrt(2)))
        hit = 0
        for _ in range(reps):
            s = rng.normal(0, 1, n)
            a, b = s + delta + rng.normal(0, 0.5, n), s + rng.normal(0, 0.5, n)
            t = stats.probability_of_improvement(a, b, paired=True)
            hit += t.ci_low <= truth <= t.ci_high
        print(f"coverage.p_improvement.wilson.n{n}={hit / reps:.3f}")


def null_decisions(reps: int) -> None:
    rng = np.random.default_rng(11)
    for n in (2, 3, 4, 8, 20, 29, 40):
        old = new = 0
        for _ in range(reps):
            a, b = rng.normal(0, 1, n), rng.normal(0, 1, n)
            boot = stats.probability_of_improvement(
                a, b, method="percentile", n_resamples=500, seed=rng
            )
            # the old rule: the decision from the percentile CI whatever n
            old += stats.improvement._decide(boot.ci_low, boot.ci_high, 0.75) != "inconclusive"
            new += stats.probability_of_improvement(a, b).decision in ("A better", "B better")
        print(f"null_better.percentile_any_n.n{n}={old / reps:.3f}")
        print(f"null_better.noether_gated.n{n}={new / reps:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=4000)
    args = parser.parse_args()
    coverage(args.reps)
    improvement(args.reps)
    null_decisions(max(500, args.reps // 4))


if __name__ == "__main__":
    main()
