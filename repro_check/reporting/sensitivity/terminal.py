"""The compact table printed in the pytest terminal summary."""

from __future__ import annotations

from repro_check.reporting.sensitivity.format import Fmt, bracket, decision_cell, isnum, pct, sig
from repro_check.reporting.sensitivity.model import SensitivityAnalysis


def terminal_table(analysis: SensitivityAnalysis, *, show_warnings: bool = True) -> str:
    """A compact table for the pytest terminal summary (test, metric, source, n, mean, std, CI,
    share), followed by the warnings when ``show_warnings``."""
    from tabulate import tabulate

    ci_header = f"{analysis.confidence * 100:g}% CI"
    headers = ["test", "metric", "source", "n", "mean", "std", ci_header, "share"]
    table: list[list[str]] = []
    for test in analysis.tests:
        first_test = True
        for metric in analysis.metrics(test):
            rows = analysis.rows(test, metric)
            fmt = Fmt(rows)
            first_metric = True
            for row in rows.to_dict("records"):
                n = str(row["n"]) if row["n"] == row["n_runs"] else f"{row['n']}/{row['n_runs']}"
                table.append(
                    [
                        test if first_test else "",
                        metric if first_metric else "",
                        row["source"],
                        n,
                        fmt(row["mean"]),
                        sig(row["std"]),
                        f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"
                        if isnum(row["ci_low"])
                        else "n/a",
                        pct(row["var_share"]),
                    ]
                )
                first_test = first_metric = False
    text = tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True)
    for c in analysis.comparisons:
        side = c.comparison.primary
        imp, diff = side.improvement, side.mean_difference
        text += (
            f"\n{c.test_a} vs {c.test_b}, {c.metric} ({'paired' if side.paired else 'unpaired'}"
            f"): mean A - B = {sig(diff.point, 3)} {bracket(lambda x: sig(x, 3), diff.low, diff.high)}"
            f", P(A>B) = {sig(imp.p, 3)} {bracket(lambda x: sig(x, 3), imp.ci_low, imp.ci_high)}"
            f"; decision: {decision_cell(imp)}"
        )
    if show_warnings and analysis.warnings:
        text += "\n" + "\n".join(f"warning: {w.message}" for w in analysis.warnings)
    return text
