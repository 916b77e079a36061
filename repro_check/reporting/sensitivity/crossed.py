"""The crossed design: K_a x K_b runs of two sources, split two-way with their interaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.reporting.sensitivity.model import (
    CROSS,
    METRIC_PREFIX,
    SensitivityWarning,
    metric_name,
)

if TYPE_CHECKING:
    import pandas as pd

    from repro_check.core.stats import CrossedDecomposition


@dataclass(frozen=True)
class CrossedResult:
    test: str
    metric: str
    source: str
    decomposition: CrossedDecomposition

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "metric": self.metric,
            "source": self.source,
            **self.decomposition.to_dict(),
        }


def crossed_designs(
    df: pd.DataFrame,
    confidence: float,
    n_resamples: int,
    seed: int,
    warns: list[SensitivityWarning],
) -> list[CrossedResult]:
    """One two-way split per (test, crossed source, metric); an incomplete design is a
    warning naming the missing cells, never a silently unbalanced estimate."""
    from repro_check.core import stats

    out: list[CrossedResult] = []
    if df.empty:
        return out
    if not {"k_a", "k_b"} <= set(df.columns):
        warns.append(
            SensitivityWarning(
                "crossed-incomplete",
                f"runs of a crossed design ({', '.join(sorted(set(df['source'])))}) have no "
                f"k_a/k_b columns: their cells are unknown, so no two-way split",
                "",
            )
        )
        return out
    metric_cols = [c for c in df.columns if c.startswith(METRIC_PREFIX)]
    for (test, source), group in df.groupby(["test", "source"], sort=False):
        a, b = str(source).split(CROSS, 1)
        ka, kb = int(group["k_a"].max()) + 1, int(group["k_b"].max()) + 1
        alive = group["status"] != "failed"
        for col in metric_cols:
            if not np.isfinite(group[col].to_numpy(dtype=np.float64)).any():
                continue
            matrix = np.full((ka, kb), np.nan)
            for row in group[alive].to_dict("records"):
                matrix[int(row["k_a"]), int(row["k_b"])] = row[col]
            try:
                split = stats.crossed_decomposition(
                    matrix, a, b, confidence=confidence, n_resamples=n_resamples, seed=seed
                )
            except ValueError as exc:
                warns.append(
                    SensitivityWarning(
                        "crossed-incomplete",
                        f"{test}: {metric_name(col)} of the {source} design: {exc}",
                        str(test),
                        source=str(source),
                        metric=metric_name(col),
                    )
                )
                continue
            out.append(CrossedResult(str(test), metric_name(col), str(source), split))
    return out
