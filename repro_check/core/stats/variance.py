"""Where the variance comes from: one-at-a-time shares and a crossed two-way split.

One-at-a-time shares (Bouthillier et al., MLSys 2021) vary one source with every other seed
frozen at its baseline value, so each share is *conditional* on those frozen seeds: with a
pure interaction between two sources the shares can sum to anything. A crossed design (K_a x
K_b runs, every seed of source a with every seed of source b) separates the two main effects
from their interaction (:func:`crossed_decomposition`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from repro_check.core.stats._common import check_confidence, finite
from repro_check.core.stats.intervals import Interval, variance_ratio_ci


def _var(values: Sequence[float]) -> float:
    x, _, _ = finite(values)
    return float(np.var(x, ddof=1)) if x.size >= 2 else float("nan")


def variance_shares(
    per_source: Mapping[str, Sequence[float]], reference: str = "all"
) -> dict[str, float]:
    """Each source's variance (ddof=1) as a share of the ``reference`` source's variance.

    ``per_source`` maps a source of randomness (``"init"``, ``"data"``, ...) to the metric of
    runs where only that source's seed varied; ``reference`` (default ``"all"``) is the sweep
    where every source varied. Following Bouthillier et al. (MLSys 2021), share = Var(source) /
    Var(all). Shares are *not* a partition: they need not sum to 1, and a single source often
    reaches a share near 1 on its own (Summers & Dinneen, ICML 2021). Sources with fewer than two
    finite runs, and every source when Var(all) is zero or undefined, get NaN -- except that a
    zero-variance source over a positive Var(all) gets 0.0.
    """
    if reference not in per_source:
        raise KeyError(
            f"variance_shares needs a {reference!r} sweep (every source varied) as the "
            f"denominator; got sources {sorted(per_source)}"
        )
    variances = {name: _var(vals) for name, vals in per_source.items()}
    denominator = variances[reference]
    shares: dict[str, float] = {}
    for name, var in variances.items():
        if math.isnan(var) or math.isnan(denominator) or denominator <= 0.0:
            shares[name] = float("nan")
        else:
            shares[name] = var / denominator
    return shares


def variance_share_cis(
    per_source: Mapping[str, Sequence[float]], reference: str = "all", confidence: float = 0.95
) -> dict[str, Interval]:
    """The F interval of each share Var(source) / Var(reference) (:func:`variance_ratio_ci`).

    Valid when the reference runs are independent of the source's runs (the sweep gives
    ``all`` seeds of its own for that reason). The reference's own share is exactly 1.
    """
    if reference not in per_source:
        raise KeyError(f"variance_share_cis needs a {reference!r} sweep; got {sorted(per_source)}")
    ref = per_source[reference]
    out = {}
    for name, values in per_source.items():
        if name == reference and _var(ref) > 0.0:
            n = int(finite(ref)[0].size)
            out[name] = Interval(1.0, 1.0, 1.0, confidence, "reference", n, 0)
        else:
            out[name] = variance_ratio_ci(values, ref, confidence)
    return out


@dataclass(frozen=True)
class CrossedDecomposition:
    """Two-way random-effects split of a crossed K_a x K_b design (one run per cell).

    ``components`` are the variance components of source a, source b and their interaction
    (method of moments, Searle et al. 1992: (MS_a - MS_ab) / K_b, (MS_b - MS_ab) / K_a, MS_ab),
    negative estimates truncated at 0 (``truncated`` names them). ``shares`` divide each by
    their sum, so they *are* a partition of the variance of this design; ``intervals`` are
    percentile intervals from a two-way bootstrap (rows and columns resampled independently:
    approximate, and too narrow below about 5 x 5). With one run per cell the interaction
    also holds any noise the two seeds do not explain (none, for a bitwise-deterministic run).
    """

    source_a: str
    source_b: str
    k_a: int
    k_b: int
    mean: float
    sums_of_squares: dict[str, float]
    mean_squares: dict[str, float]
    components: dict[str, float]
    shares: dict[str, float]
    intervals: dict[str, Interval] = field(default_factory=dict)
    truncated: tuple[str, ...] = ()

    @property
    def terms(self) -> tuple[str, str, str]:
        return (self.source_a, self.source_b, f"{self.source_a} x {self.source_b}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _two_way(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean squares (a, b, ab) and variance components along the last two axes of ``y``."""
    ka, kb = y.shape[-2], y.shape[-1]
    grand = y.mean(axis=(-2, -1), keepdims=True)
    rows = y.mean(axis=-1, keepdims=True)
    cols = y.mean(axis=-2, keepdims=True)
    ss_a = kb * ((rows - grand) ** 2).sum(axis=(-2, -1))
    ss_b = ka * ((cols - grand) ** 2).sum(axis=(-2, -1))
    ss_ab = ((y - rows - cols + grand) ** 2).sum(axis=(-2, -1))
    ms = np.stack([ss_a / (ka - 1), ss_b / (kb - 1), ss_ab / ((ka - 1) * (kb - 1))])
    comp = np.stack([(ms[0] - ms[2]) / kb, (ms[1] - ms[2]) / ka, ms[2]])
    return ms, comp


def _shares(components: np.ndarray) -> np.ndarray:
    clipped = np.clip(components, 0.0, None)
    total = clipped.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, clipped / np.where(total > 0, total, 1.0), np.nan)


def crossed_decomposition(
    matrix: Any,
    source_a: str = "a",
    source_b: str = "b",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator | None = 0,
) -> CrossedDecomposition:
    """Split the variance of ``matrix[i, j]`` (run with seed i of ``source_a`` and seed j of
    ``source_b``, every other seed fixed) into a, b and the a x b interaction.

    Needs K_a, K_b >= 2 and finite values in every cell (a failed run leaves the design
    unbalanced: rerun it). See :class:`CrossedDecomposition` for the estimators.
    """
    check_confidence(confidence)
    y = np.asarray(matrix, dtype=np.float64)
    if y.ndim != 2 or min(y.shape) < 2:
        raise ValueError(f"a crossed design needs a K_a x K_b matrix with K >= 2, got {y.shape}")
    if not np.isfinite(y).all():
        missing = [tuple(int(v) for v in idx) for idx in np.argwhere(~np.isfinite(y))]
        raise ValueError(
            f"the crossed design has non-finite or missing cells {missing[:5]}: every "
            f"({source_a}, {source_b}) seed pair needs a finite value; rerun those runs"
        )
    ka, kb = y.shape
    names = (source_a, source_b, f"{source_a} x {source_b}")
    ms, comp = _two_way(y)
    shares = _shares(comp)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    rows = rng.integers(0, ka, size=(n_resamples, ka))
    cols = rng.integers(0, kb, size=(n_resamples, kb))
    boot = y[rows[:, :, None], cols[:, None, :]]  # (n_resamples, ka, kb)
    _, boot_comp = _two_way(boot)
    boot_shares = _shares(boot_comp)
    alpha = 1.0 - confidence
    intervals = {}
    for i, name in enumerate(names):
        draws = boot_shares[i][np.isfinite(boot_shares[i])]
        if draws.size:
            low, high = np.quantile(draws, [alpha / 2.0, 1.0 - alpha / 2.0])
            intervals[name] = Interval(
                float(low), float(high), float(shares[i]), confidence, "two-way bootstrap", ka * kb
            )
    grand = float(y.mean())
    ss = {
        names[0]: float(kb * ((y.mean(axis=1) - grand) ** 2).sum()),
        names[1]: float(ka * ((y.mean(axis=0) - grand) ** 2).sum()),
    }
    ss[names[2]] = float(((y - grand) ** 2).sum()) - ss[names[0]] - ss[names[1]]
    return CrossedDecomposition(
        source_a=source_a,
        source_b=source_b,
        k_a=ka,
        k_b=kb,
        mean=grand,
        sums_of_squares=ss,
        mean_squares={n: float(v) for n, v in zip(names, ms, strict=True)},
        components={n: float(max(v, 0.0)) for n, v in zip(names, comp, strict=True)},
        shares={n: float(v) for n, v in zip(names, shares, strict=True)},
        intervals=intervals,
        truncated=tuple(n for n, v in zip(names, comp, strict=True) if v < 0.0),
    )
