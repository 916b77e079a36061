"""Formatting shared by the writers: numbers, table cells, escapes, file names."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.paths import id_to_name
from repro_check.reporting.sensitivity.model import REFERENCE_SOURCE

if TYPE_CHECKING:
    import pandas as pd

    from repro_check.reporting.sensitivity.model import SensitivityAnalysis


def isnum(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def sig(x: Any, digits: int = 2) -> str:
    """``digits`` significant digits, fixed-point for moderate magnitudes."""
    if not isnum(x):
        return "n/a"
    x = float(x)
    if x == 0.0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if -5 <= mag < 6:
        return f"{x:.{max(0, digits - 1 - mag)}f}"
    return f"{x:.{digits - 1}e}"


class Fmt:
    """Decimals for one (test, metric) table: two significant digits of the reference spread."""

    def __init__(self, rows: pd.DataFrame) -> None:
        stds = rows["std"].to_numpy(dtype=np.float64)
        ref = rows.loc[rows["source"] == REFERENCE_SOURCE, "std"].to_numpy(dtype=np.float64)
        spread = float(ref[0]) if ref.size and isnum(ref[0]) and ref[0] > 0 else float("nan")
        if not math.isfinite(spread):
            positive = stds[np.isfinite(stds) & (stds > 0)]
            spread = float(positive.min()) if positive.size else float("nan")
        self.decimals: int | None = None
        if math.isfinite(spread):
            d = 1 - math.floor(math.log10(spread))
            if d <= 8:
                self.decimals = max(0, d)

    def __call__(self, x: Any) -> str:
        if not isnum(x):
            return "n/a"
        x = float(x)
        if self.decimals is None:
            return f"{x:.4g}"
        if x != 0.0 and abs(x) >= 1e7:
            return f"{x:.4g}"
        return f"{x:.{self.decimals}f}"


def pct(x: Any) -> str:
    return f"{100.0 * float(x):.0f}%" if isnum(x) else "n/a"


def n_cell(row: Mapping[str, Any]) -> str:
    parts = []
    if row["n_failed"]:
        parts.append(f"{row['n_failed']} failed")
    if row["n_nan"]:
        parts.append(f"{row['n_nan']} NaN")
    if not parts and row["n"] == row["n_runs"]:
        return str(row["n"])
    return f"{row['n']} of {row['n_runs']} ({', '.join(parts) or 'excluded'})"


def rec_cell(x: Any) -> str:
    try:
        return "n/a" if x is None or x != x or str(x) == "<NA>" else str(int(x))
    except (TypeError, ValueError):
        return "n/a"


def direction(analysis: SensitivityAnalysis, metric: str) -> str:
    return "higher is better" if analysis.higher_is_better.get(metric, True) else "lower is better"


def md(text: Any) -> str:
    """Escape a cell for a GitHub table (pipes, newlines)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_code(text: Any) -> str:
    s = str(text).replace("\n", " ")
    fence = "``" if "`" in s else "`"
    return f"{fence}{md(s)}{fence}" if s else ""


def file_slug(text: str, limit: int = 80) -> str:
    """A file name for ``text`` by the project's one id-to-path rule (core/paths: injective,
    the text itself when it is a safe name, else a cleaned prefix and a hash)."""
    return id_to_name(text, limit)


def nodeid_slugs(tests: Sequence[str]) -> dict[str, str]:
    return {test: file_slug(test) for test in tests}


def bracket(fmt: Any, low: Any, high: Any) -> str:
    """``[low, high]`` in ``fmt`` (a :class:`Fmt` or :func:`sig`), or ``n/a``."""
    return f"[{fmt(low)}, {fmt(high)}]" if isnum(low) and isnum(high) else "n/a"


def decision_cell(improvement: Any) -> str:
    """A comparison's decision, with how many runs it lacks when it made none."""
    if improvement.decision == "too few runs":
        return f"none: {improvement.reason}"
    return str(improvement.decision)
