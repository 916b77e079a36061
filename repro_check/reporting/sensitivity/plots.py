"""PNG plots on bare Agg figures (never pyplot: the user's backend and figures are left alone)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from repro_check.core.atomic import atomic_write_bytes
from repro_check.reporting.sensitivity.format import direction, file_slug, isnum, sig
from repro_check.reporting.sensitivity.model import REFERENCE_SOURCE, SensitivityAnalysis

_SOURCE_COLOR = "#1f77b4"
_ALL_COLOR = "#d62728"


def write_plots(
    analysis: SensitivityAnalysis, out: Path, slugs: Mapping[str, str]
) -> tuple[dict[tuple[str, str], dict[str, str]], list[Path]]:
    # Bare Figures on the Agg canvas: pyplot's backend and global state are never touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401  (ImportError early)

    files: dict[tuple[str, str], dict[str, str]] = {}
    paths: list[Path] = []
    for test in analysis.tests:
        for metric in analysis.metrics(test):
            base = f"{slugs[test]}__{file_slug(metric, 40)}"
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
    for c in analysis.comparisons:
        fig = _pairs_figure(analysis, c)
        name = (
            f"{file_slug(c.test_a, 60)}__vs__{file_slug(c.test_b, 60)}__{file_slug(c.metric, 40)}"
        )
        paths.append(_save(fig, out / f"{name}.png"))
        files[(f"{c.test_a} vs {c.test_b}", c.metric)] = {"pairs": f"{name}.png"}
    for agg in analysis.aggregates:
        name = f"across_tests__{file_slug(agg.metric, 40)}.png"
        paths.append(_save(_aggregate_figure(analysis, agg), out / name))
        files[("across tests", agg.metric)] = {"aggregate": name}
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
            if isnum(floor) and isnum(row["mean"]):
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
        if isnum(row["mean"]):
            lo = row["ci_low"] if isnum(row["ci_low"]) else row["mean"]
            hi = row["ci_high"] if isnum(row["ci_high"]) else row["mean"]
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
    ax.set_ylabel(_mpl(f"{metric} ({direction(analysis, metric)})"))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(_mpl(f"{metric} at the last step, one point per run"), fontsize=10)
    fig.suptitle(_wrap(test), fontsize=9, family="monospace")
    handles = [
        Line2D([], [], ls="", marker="o", color=_SOURCE_COLOR, label="run: one source varied"),
        Line2D(
            [], [], ls="", marker="o", color=_ALL_COLOR, label=f"run: {REFERENCE_SOURCE} varied"
        ),
        Line2D([], [], ls="-", marker="D", color="black", label=f"mean, {conf} t CI"),
    ]
    if isnum(rows["noise_floor"].iloc[-1]):
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
        observed, color="0.3", ls="--", lw=1, label=f"best observed run ({sig(observed, 4)})"
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


def _pairs_figure(analysis: SensitivityAnalysis, c: Any) -> Any:
    """Run k of A beside run k of B (a line per pair when they share seeds), and the two
    means with the CI of their difference in the title."""
    from matplotlib.figure import Figure

    a = analysis.values(c.test_a, c.metric, c.source, keep_missing=True)
    b = analysis.values(c.test_b, c.metric, c.source, keep_missing=True)
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    if c.paired_seeds:
        for x, y in zip(a, b, strict=False):
            if np.isfinite(x) and np.isfinite(y):
                ax.plot([0, 1], [x, y], color="0.6", lw=0.8, zorder=1)
    ax.scatter(np.zeros(a.size), a, color=_SOURCE_COLOR, zorder=3, s=22)
    ax.scatter(np.ones(b.size), b, color=_ALL_COLOR, zorder=3, s=22)
    for x, mean in ((0, c.mean_a), (1, c.mean_b)):
        ax.plot([x - 0.15, x + 0.15], [mean, mean], color="black", lw=2, zorder=4)
    ax.set_xticks([0, 1])
    ax.set_xticklabels([_wrap(c.test_a, 30), _wrap(c.test_b, 30)], fontsize=7)
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel(_mpl(f"{c.metric} ({'higher' if c.higher_is_better else 'lower'} is better)"))
    side = c.comparison.primary
    diff, imp = side.mean_difference, side.improvement
    kind = "paired" if side.paired else "unpaired"
    ax.set_title(
        _mpl(
            f"{kind}: mean A - B = {sig(diff.point, 3)} [{sig(diff.low, 3)}, {sig(diff.high, 3)}]"
            f"\nP(A>B) = {sig(imp.p, 3)} [{sig(imp.ci_low, 3)}, {sig(imp.ci_high, 3)}]; "
            f"{imp.decision}"
        ),
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _aggregate_figure(analysis: SensitivityAnalysis, agg: Any) -> Any:
    """rliable's two panels: IQM with its stratified-bootstrap CI per method, and the
    performance profiles with their bands."""
    from matplotlib.figure import Figure

    conf = f"{analysis.confidence * 100:g}%"
    fig = Figure(figsize=(10.0, 4.2))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    methods = list(agg.iqm)
    for i, method in enumerate(methods):
        ci = agg.iqm[method]
        left.errorbar(
            ci.point,
            i,
            xerr=[[ci.point - ci.low], [ci.high - ci.point]],
            fmt="o",
            color=f"C{i}",
            capsize=4,
        )
        prof = agg.profiles[method]
        right.plot(prof.taus, prof.fraction, color=f"C{i}", label=_mpl(method))
        right.fill_between(prof.taus, prof.low, prof.high, color=f"C{i}", alpha=0.2, lw=0)
    left.set_yticks(range(len(methods)))
    left.set_yticklabels([_mpl(m) for m in methods], fontsize=8)
    left.set_xlabel(_mpl(f"IQM of {agg.metric} over {len(agg.tasks)} tasks ({conf} CI)"))
    left.grid(axis="x", alpha=0.3)
    word = ">" if agg.higher_is_better else "<"
    right.set_xlabel(_mpl(f"threshold tau on {agg.metric}"))
    right.set_ylabel(_mpl(f"fraction of runs with score {word} tau"))
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="best")
    fig.suptitle("Across tests (rliable: stratified bootstrap)", fontsize=10)
    fig.tight_layout()
    return fig
