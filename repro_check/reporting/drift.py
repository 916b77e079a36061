"""Rendering backend variants: per-variant verdicts, the growth table, the drift curve (PNG).

Everything here works on the JSON form of a :class:`~repro_check.orchestration.drift.
VariantReport` (``verdict.to_json()["variants"]``), so the failure message, the terminal
section, report.md and ``repro-check compare`` share one renderer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

#: Rows of a growth table: the first drift step, then evenly spaced up to the last step.
GROWTH_ROWS = 8
_MARK = {
    "identical": "==",
    "agrees": "ok",
    "drifts": "ok",
    "judge": "f64",
    "skipped": "--",
    "disagrees": "FAIL",
    "failed": "FAIL",
}


def growth_indices(first: int, count: int, rows: int = GROWTH_ROWS) -> list[int]:
    """Which steps a growth table shows: the first drift step and the two after it, then
    evenly spaced up to the last (every step when there are few)."""
    remaining = list(range(first, count))
    if len(remaining) <= rows:
        return remaining
    head = remaining[:3]
    span = remaining[3:]
    tail = [span[round(i * (len(span) - 1) / (rows - 4))] for i in range(rows - 3)]
    return sorted(set(head) | set(tail))


def _g(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}g}"


def _rule_cell(step: Mapping[str, Any]) -> str:
    judgement = step.get("judgement")
    if not judgement:
        return "-"
    allowed = judgement.get("allowed")
    error = judgement.get("candidate_error")
    if isinstance(allowed, (int, float)) and isinstance(error, (int, float)) and allowed > 0:
        return f"{error / allowed:.2g}x allowed" + ("" if judgement["agrees"] else " BEYOND")
    return "ok" if judgement.get("agrees") else "BEYOND"


def growth_table(outcome: Mapping[str, Any], indent: str = "    ") -> list[str]:
    """How one variant's drift grows over the steps (one row per chosen step)."""
    drift = outcome.get("drift") or {}
    steps = drift.get("steps") or []
    first = next((i for i, s in enumerate(steps) if s["keys_differing"]), None)
    if first is None:
        return []
    rows = []
    for index in growth_indices(first, len(steps)):
        s = steps[index]
        total = s["elements_total"] or 1
        rows.append(
            [
                s["step"],
                f"{s['keys_differing']}/{s['keys_total']}",
                "-" if s.get("from_stats") else f"{100.0 * s['elements_differing'] / total:.1f}%",
                _g(s["max_abs"]),
                _g(s["max_ulp"], 6),
                _g(s["relative_rms"]),
                _g(s["reference_error"]),
                _rule_cell(s),
            ]
        )
    headers = [
        "step",
        "keys differing",
        "elements",
        "max abs diff",
        "max ULP",
        "drift (rel. RMS)",
        "ref vs float64",
        "float64 rule",
    ]
    table = tabulate(rows, headers=headers, tablefmt="simple")
    return [indent + line for line in table.splitlines()]


def outcome_lines(outcome: Mapping[str, Any], indent: str = "  ") -> list[str]:
    """One variant: its verdict, first drift step/key/op, and (when it drifted) the table."""
    mark = _MARK.get(outcome["status"], outcome["status"])
    lines = [f"{indent}[{mark}] {outcome['label']}: {outcome['status']} -- {outcome['reason']}"]
    drift = outcome.get("drift") or {}
    first_step = drift.get("first_drift_step")
    if first_step is not None and outcome["status"] != "judge":
        lines.append(f"{indent}    first drift: step {first_step}, {drift.get('first_drift_key')}")
    op = outcome.get("drift_op")
    if op:
        lines.append(f"{indent}    first drift op: {_op_headline(op)}")
    if outcome["status"] in ("agrees", "drifts", "disagrees", "judge"):
        lines += growth_table(outcome, indent + "    ")
    return lines


def _op_headline(op: Mapping[str, Any]) -> str:
    from repro_check.orchestration.drift_op import DriftOp

    return DriftOp.from_json(dict(op)).headline()


def report_lines(report: Mapping[str, Any], indent: str = "  ") -> list[str]:
    """Every variant of one test (the failure message and ``repro-check compare``)."""
    lines = [f"{indent}backend variants, judged by {report.get('judged_by') or '-'}:"]
    if report.get("note"):
        lines.append(f"{indent}  {report['note']}")
    for outcome in report.get("outcomes") or []:
        lines += outcome_lines(outcome, indent + "  ")
    return lines


def variant_lines(verdicts: Sequence[Any]) -> Iterable[tuple[str, dict[str, bool]]]:
    """The terminal's ``repro variants`` lines for a session's rendered verdicts."""
    tests = [(v.json["nodeid"], v.json.get("variants")) for v in verdicts]
    tests = [(nodeid, report) for nodeid, report in tests if report]
    if not tests:
        return
    yield "", {}
    yield "repro variants (drift against the reference replicas; float64 rule)", {"bold": True}
    for nodeid, report in tests:
        failed = bool(report.get("failed"))
        yield (
            f"{nodeid}: {'a variant disagrees' if failed else 'variants agree'}",
            ({"red": True} if failed else {"green": True}),
        )
        for line in report_lines(report):
            if "[FAIL]" in line:
                yield line, {"red": True}
            else:
                yield line, {"yellow": True} if ": drifts -- " in line else {}


# ------------------------------------------------------------------------------ the curve


def plot_drift(nodeid: str, report: Mapping[str, Any], path: Path) -> Path | None:
    """A log-scale drift curve: each variant's RMS difference from the reference, relative to
    the reference's RMS, per step; dashed: the reference's own error against float64 (what
    rounding alone explains). None when there is nothing to plot."""
    curves = []
    yardstick: list[tuple[int, float]] = []
    for outcome in report.get("outcomes") or []:
        steps = (outcome.get("drift") or {}).get("steps") or []
        points = [
            (s["step"], s["relative_rms"])
            for s in steps
            if isinstance(s["relative_rms"], (int, float)) and s["relative_rms"] > 0
        ]
        if outcome["status"] == "judge" and not yardstick:  # the judge's drift: rounding
            yardstick = list(points)
        if not yardstick:
            yardstick = [
                (s["step"], s["reference_error"])
                for s in steps
                if isinstance(s.get("reference_error"), (int, float)) and s["reference_error"] > 0
            ]
        if steps and outcome["status"] != "judge":  # the judge's curve is the dashed line
            curves.append((outcome, points))
    if not curves and not yardstick:
        return None
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for outcome, points in curves:
        label = f"{outcome['name']}: {outcome['status']}"
        if not points:
            label += " (bit for bit)"
            axes.plot([], [], label=label)
            continue
        xs, ys = zip(*points, strict=True)
        axes.plot(xs, ys, "-", marker="o", markersize=3, label=label)
    if yardstick:
        xs, ys = zip(*yardstick, strict=True)
        axes.plot(xs, ys, "k--", linewidth=1, label="reference vs float64 (rounding)")
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel("recorded step")
    axes.set_ylabel("RMS difference / RMS (relative)")
    axes.set_title(nodeid if len(nodeid) < 70 else "..." + nodeid[-67:], fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    tmp.replace(path)
    return path


def drift_section(directory: Path, tests: Sequence[Mapping[str, Any]]) -> tuple[str, list[Path]]:
    """report.md's "Backend variants" section and the PNGs it shows (written under
    ``directory/drift/``); tests are report.json test entries."""
    with_variants = [t for t in tests if t.get("variants")]
    if not with_variants:
        return "", []
    lines = ["## Backend variants", ""]
    lines.append(
        "Each variant ran the test in another environment. A variant agrees when, at its first "
        "drift step (the first step where it differs from the reference at all), its error "
        "against the float64 run is within the float64 rule; later growth is training "
        "amplifying rounding and is shown, not failed. Curves: RMS difference from the "
        "reference relative to its RMS, log scale; dashed: the reference's own error against "
        "float64."
    )
    lines.append("")
    paths = []
    for test in with_variants:
        report = test["variants"]
        lines += [f"### {test['nodeid']}", ""]
        png = plot_drift(
            test["nodeid"],
            report,
            _png_path(directory, test["nodeid"]),
        )
        if png is not None:
            paths.append(png)
            lines += [f"![drift]({png.relative_to(directory).as_posix()})", ""]
        lines += ["```", *report_lines(report, ""), "```", ""]
    return "\n".join(lines), paths


def _png_path(directory: Path, nodeid: str) -> Path:
    from repro_check.core.paths import nodeid_path

    relative = nodeid_path(nodeid)
    return directory / "drift" / relative.parent / (relative.name + ".png")
