"""The Markdown sections beyond the per-source tables: A vs B, across tests, crossed design."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from repro_check.reporting.sensitivity.format import bracket, decision_cell, md, pct, sig
from repro_check.reporting.sensitivity.model import SensitivityAnalysis


def _table(body: list[list[Any]], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def comparison_lines(
    analysis: SensitivityAnalysis, plot_files: Mapping[tuple[str, str], Mapping[str, str]]
) -> list[str]:
    if not analysis.comparisons:
        return []
    conf = f"{analysis.confidence * 100:g}%"
    lines = [
        "## A vs B: variants of one test",
        "",
        "Variants share their seeds (parametrizations of one test, or one `pair=` name), so run "
        "k of A and run k of B are compared as a pair as well as as two samples. *Δ mean* is "
        f"mean(A) − mean(B) with its {conf} CI (paired t / Welch t); *P(A>B)* is the "
        "probability that A's run beats B's, in the metric's direction of improvement, with "
        "a Wilson (paired) or Newcombe (unpaired) interval; effect size d_z (paired) or Hedges' "
        "g (unpaired). A decision is made only with enough runs (Bouthillier et al.'s rule "
        "with Noether's sample size).",
        "",
    ]
    body = []
    for c in analysis.comparisons:
        sides = [c.comparison.paired, c.comparison.unpaired]
        for side in [s for s in sides if s is not None]:
            imp = side.improvement
            body.append(
                [
                    f"`{md(c.test_a)}` vs `{md(c.test_b)}`",
                    c.metric,
                    "paired" if side.paired else "unpaired",
                    f"{imp.n_a}/{imp.n_b}",
                    f"{sig(side.mean_difference.point, 3)} "
                    f"{bracket(lambda x: sig(x, 3), side.mean_difference.low, side.mean_difference.high)}",
                    f"{sig(imp.p, 3)} {bracket(lambda x: sig(x, 3), imp.ci_low, imp.ci_high)}",
                    f"{side.effect_size_name} = {sig(side.effect_size, 3)}",
                    md(decision_cell(imp)),
                ]
            )
    headers = [
        "A vs B",
        "metric",
        "analysis",
        "n",
        "Δ mean [CI]",
        "P(A>B) [CI]",
        "effect",
        "decision",
    ]
    lines += [_table(body, headers), ""]
    for c in analysis.comparisons:
        name = plot_files.get((f"{c.test_a} vs {c.test_b}", c.metric), {}).get("pairs")
        if name:
            lines += [f"![{c.metric}: {md(c.test_a)} vs {md(c.test_b)}]({name})", ""]
    return lines


def aggregate_lines(
    analysis: SensitivityAnalysis, plot_files: Mapping[tuple[str, str], Mapping[str, str]]
) -> list[str]:
    if not analysis.aggregates:
        return []
    conf = f"{analysis.confidence * 100:g}%"
    lines = [
        "## Across tests (rliable)",
        "",
        "Each test (or group of variants) is a task, each variant's parametrization a method "
        "(Agarwal et al., NeurIPS 2021): the IQM of every run of every task, with a "
        f"{conf} stratified-bootstrap CI (runs resampled within each task); P(X > Y) averaged "
        "over the tasks both methods ran; the performance profile is in the plot. Scores are "
        "pooled as they are: compare only outcomes on one scale across tasks.",
        "",
    ]
    for agg in analysis.aggregates:
        lines += [
            f"### {agg.metric} over {len(agg.tasks)} tasks "
            f"({'higher' if agg.higher_is_better else 'lower'} is better)",
            "",
        ]
        body = [
            [
                md(m),
                agg.method_tasks.get(m, 0),
                sig(i.point, 4),
                bracket(lambda x: sig(x, 4), i.low, i.high),
                i.n,
            ]
            for m, i in agg.iqm.items()
        ]
        lines += [_table(body, ["method", "tasks", "IQM", f"{conf} CI", "runs"]), ""]
        if agg.improvements:
            body = [
                [
                    md(imp["x"]),
                    md(imp["y"]),
                    imp["tasks"],
                    sig(imp["interval"].point, 3),
                    bracket(lambda x: sig(x, 3), imp["interval"].low, imp["interval"].high),
                ]
                for imp in agg.improvements
            ]
            lines += [_table(body, ["X", "Y", "tasks", "P(X > Y)", f"{conf} CI"]), ""]
        name = plot_files.get(("across tests", agg.metric), {}).get("aggregate")
        if name:
            lines += [f"![{agg.metric} across tests]({name})", ""]
    return lines


def crossed_lines(analysis: SensitivityAnalysis) -> list[str]:
    if not analysis.crossed:
        return []
    conf = f"{analysis.confidence * 100:g}%"
    lines = [
        "## Crossed design: two sources and their interaction",
        "",
        "Every seed of one source with every seed of the other (the remaining seeds fixed). "
        "The variance splits into the two main effects and their interaction (random-effects "
        "two-way ANOVA, method of moments); these shares *are* a partition of this design's "
        f"variance. {conf} intervals: two-way bootstrap (approximate).",
        "",
    ]
    for result in analysis.crossed:
        d = result.decomposition
        lines += [f"### `{md(result.test)}`: {result.metric}, {d.k_a} × {d.k_b} runs", ""]
        body = []
        for term in d.terms:
            interval = d.intervals.get(term)
            body.append(
                [
                    term,
                    sig(d.components[term], 3),
                    pct(d.shares[term]),
                    bracket(pct, interval.low, interval.high) if interval else "n/a",
                ]
            )
        lines += [_table(body, ["term", "variance component", "share", f"{conf} CI"]), ""]
        if d.truncated:
            lines += [
                f"Negative estimates set to 0: {', '.join(d.truncated)} (sampling noise "
                "larger than that effect).",
                "",
            ]
    return lines
