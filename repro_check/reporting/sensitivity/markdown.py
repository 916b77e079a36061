"""The ``sensitivity.md`` report, for reviewers."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

import numpy as np

from repro_check.reporting.sensitivity.compare import decision_rule
from repro_check.reporting.sensitivity.format import (
    Fmt,
    bracket,
    direction,
    isnum,
    md,
    md_code,
    n_cell,
    pct,
    rec_cell,
    sig,
)
from repro_check.reporting.sensitivity.model import (
    INTERVAL_METHODS,
    REFERENCE_SOURCE,
    SensitivityAnalysis,
)
from repro_check.reporting.sensitivity.sections import (
    aggregate_lines,
    comparison_lines,
    crossed_lines,
)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += _flatten(value, name + ".")
        else:
            items.append((name, value))
    return items


def _budget_selection(n: int) -> list[int]:
    if n <= 12:
        return list(range(1, n + 1))
    picks = [1, 2, 3, 4, 5, 8, 10, 15, 20, 30, 50, 75, 100, 150, 200, 500, 1000]
    return sorted({b for b in picks if b < n} | {n})


def markdown_report(
    analysis: SensitivityAnalysis,
    session: Mapping[str, Any] | None = None,
    disagreement: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    plot_files: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    plot_note: str = "",
) -> str:
    """The ``sensitivity.md`` text."""
    from tabulate import tabulate

    conf = f"{analysis.confidence * 100:g}%"
    lines = ["# Seed sensitivity report", ""]
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lines.append(
        f"Generated {created} by repro-check. Each source of randomness was varied on its own "
        f"(K runs, the other seeds fixed); `{REFERENCE_SOURCE}` varies every source at once, "
        f"with seeds of its own. {conf} CIs hold at small K: Student t for the mean, "
        f"chi-square for the std, Tukey-McLaughlin trimmed t for the IQM, F for the shares. "
        f"*share* is Var(source) / Var({REFERENCE_SOURCE}). One-at-a-time shares are "
        f"conditional on the other sources' seeds, frozen at their baseline values: they are "
        f"not a partition and need not sum to 1 (Summers & Dinneen, ICML 2021); a crossed "
        f"design (`--repro-crossed=A,B`) splits two sources with their interaction."
    )
    lines.append("")
    if session:
        lines += _session_lines(session)
    lines += ["## Warnings", ""]
    if analysis.warnings:
        lines += [f"- **{w.kind}**: {md(w.message)}" for w in analysis.warnings]
    else:
        lines.append("None.")
    if plot_note:
        lines.append(f"- {plot_note}")
    lines.append("")

    for test in analysis.tests:
        lines += [f"## `{test}`", ""]
        metrics = analysis.metrics(test)
        if not metrics:
            lines += ["No finite metric was recorded by any run (see the warnings).", ""]
        for metric in metrics:
            rows = analysis.rows(test, metric)
            fmt = Fmt(rows)
            hw = rows["target_half_width"].iloc[0]
            rec_header = f"runs for ±{sig(hw)}" if isnum(hw) else "runs for target"
            has_floor = bool(np.isfinite(rows["noise_floor"].to_numpy(dtype=np.float64)).any())
            headers = [
                "source",
                "n",
                "mean ± std",
                f"{conf} CI of mean",
                "std CI",
                "min – max",
                "IQM [CI]",
                "share [CI]",
                *(["noise floor", "test-set CI (Wilson)"] if has_floor else []),
                rec_header,
            ]
            body = []
            for row in rows.to_dict("records"):
                src = f"**{row['source']}**" if row["source"] == REFERENCE_SOURCE else row["source"]
                rng = f"{fmt(row['min'])} – {fmt(row['max'])}" if isnum(row["min"]) else "n/a"
                floor = [
                    sig(row["noise_floor"]),
                    bracket(fmt, row["wilson_low"], row["wilson_high"]),
                ]
                body.append(
                    [
                        src,
                        n_cell(row),
                        f"{fmt(row['mean'])} ± {sig(row['std'])}",
                        bracket(fmt, row["ci_low"], row["ci_high"]),
                        bracket(sig, row["std_low"], row["std_high"]),
                        rng,
                        f"{fmt(row['iqm'])} {bracket(fmt, row['iqm_low'], row['iqm_high'])}",
                        f"{pct(row['var_share'])} {bracket(pct, row['share_low'], row['share_high'])}",
                        *(floor if has_floor else []),
                        rec_cell(row["recommended_runs"]),
                    ]
                )
            lines += [f"### {metric} ({direction(analysis, metric)})", ""]
            lines.append(tabulate(body, headers=headers, tablefmt="github", disable_numparse=True))
            lines.append("")
            lines.append(
                f"*n*: runs used (of runs launched). *runs for ±x*: runs needed for a {conf} CI "
                f"of the mean of half-width x at that source's std ({analysis.target_rule})."
            )
            lines.append("")
            curve = analysis.curve(test, metric)
            if len(curve) >= 2:
                best = "max" if analysis.higher_is_better.get(metric, True) else "min"
                lines.append(
                    f"Expected best ({best}) {metric} over a budget of n runs of "
                    f"`{REFERENCE_SOURCE}` (Dodge et al., EMNLP 2019), {conf} bootstrap band:"
                )
                lines.append("")
                keep = set(_budget_selection(len(curve)))
                cbody = [
                    [int(r["budget"]), fmt(r["expected"]), f"[{fmt(r['low'])}, {fmt(r['high'])}]"]
                    for r in curve.to_dict("records")
                    if int(r["budget"]) in keep
                ]
                lines.append(
                    tabulate(
                        cbody,
                        headers=["runs n", f"expected {best}", f"{conf} band"],
                        tablefmt="github",
                        disable_numparse=True,
                    )
                )
                lines.append("")
            for kind, name in (plot_files or {}).get((test, metric), {}).items():
                lines += [f"![{metric}: {kind.replace('_', ' ')}]({name})", ""]
        dis = (disagreement or {}).get(test)
        if dis:
            lines += ["### Prediction disagreement between runs of one source", ""]
            dbody = [
                [
                    s,
                    sig(d.get("mean_disagreement"), 3),
                    sig(d.get("mean_correlation"), 3),
                    d.get("pairs", ""),
                ]
                for s, d in dis.items()
            ]
            lines.append(
                tabulate(
                    dbody,
                    headers=["source", "mean disagreement", "mean correlation", "pairs"],
                    tablefmt="github",
                    disable_numparse=True,
                )
            )
            lines.append("")

    plots = plot_files or {}
    lines += comparison_lines(analysis, plots)
    lines += aggregate_lines(analysis, plots)
    lines += crossed_lines(analysis)
    lines += _command_lines(analysis)
    lines += [
        "## Method",
        "",
        "- Per-source seeds: `repro.seed_for(source)` streams; run k of every source uses "
        "perturbation k + 1 of that source only; `all` runs draw seeds no one-source run uses, "
        "so Var(all) is estimated independently. Variants of one test share every seed "
        "(their root seed comes from the test id without `[...]`, or from `pair=`).",
        "- Outcomes are what the test declares with `repro.record_outcome`; recorded scalars "
        "such as the last minibatch's loss are diagnostics (`diag.*` in runs.csv).",
        "- mean, std (ddof=1), quartiles, IQM (Agarwal et al., NeurIPS 2021); intervals: "
        + "; ".join(f"{k}: {v}" for k, v in INTERVAL_METHODS.items())
        + " (`repro_check.core.stats`, docs/statistics.md).",
        "- Variance shares and the binomial noise floor sqrt(p(1-p)/n): Bouthillier et al., "
        "MLSys 2021. A `bitflip` source (one weight nudged by one ulp at init) follows Summers "
        "& Dinneen, ICML 2021.",
        "- Expected best score over n runs: Dodge et al., EMNLP 2019.",
        f"- Comparing two methods: P(A > B) with the rule: {decision_rule()}",
        "",
    ]
    return "\n".join(lines)


def _session_lines(session: Mapping[str, Any]) -> list[str]:
    lines = ["## Session", ""]
    labels = {
        "command": "command",
        "base_seed": "base seed",
        "K": "runs per source (K)",
        "k": "runs per source (K)",
        "runs_per_source": "runs per source (K)",
        "sources": "sources",
    }
    for key, label in labels.items():
        if key in session:
            value = session[key]
            if key == "command":
                value = md_code(value)
            elif isinstance(value, (list, tuple)):
                value = ", ".join(map(str, value))
            lines.append(f"- {label}: {value}")
    for key, value in session.items():
        if key in labels or key in ("environment", "environment_file"):
            continue
        if isinstance(value, (str, int, float, bool)):
            lines.append(f"- {key}: {value}")
    lines.append("")
    env = session.get("environment")
    env_file = session.get("environment_file")
    if env or env_file:
        lines += ["### Environment", ""]
        if isinstance(env, Mapping) and env:
            items = _flatten(env)
            for name, value in items[:60]:
                lines.append(f"- {md(name)}: {md(value)}")
            if len(items) > 60:
                lines.append(f"- ... and {len(items) - 60} more")
        elif env:
            lines.append(md(env))
        if env_file:
            lines.append(f"- full snapshot: `{env_file}` (compare with `repro-check env diff`)")
        lines.append("")
    return lines


def _command_lines(analysis: SensitivityAnalysis) -> list[str]:
    from tabulate import tabulate

    runs = analysis.runs
    lines = [
        "## Reproducing a run",
        "",
        "Every run's exact command, root seed and perturbation are in `runs.csv` (columns "
        "`command`, `root_seed`, `perturbation`).",
        "",
    ]
    bad = runs[runs["status"] != "ok"]
    if len(bad):
        lines += ["Runs that failed or produced NaN:", ""]
        for r in bad.to_dict("records"):
            err = r["error"].strip().splitlines()[-1] if r["error"].strip() else ""
            lines.append(
                f"- `{md(r['test'])}` source `{r['source']}` k={r['k']} ({r['status']})"
                + (f": {md(err)}" if err else "")
                + (f" -- {md_code(r['command'])}" if r["command"] else "")
            )
        lines.append("")
    body = [
        [md(r["test"]), r["source"], r["k"], r["status"], r["root_seed"], md_code(r["command"])]
        for r in runs.to_dict("records")
    ]
    lines += [f"<details><summary>All {len(runs)} runs and their commands</summary>", ""]
    lines.append(
        tabulate(
            body,
            headers=["test", "source", "k", "status", "root seed", "command"],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    lines += ["", "</details>", ""]
    return lines
