"""The report folder: ``write_report`` and the ``sensitivity.json`` document."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from repro_check.core.atomic import atomic_write_text, encode_float, write_json
from repro_check.reporting.sensitivity.compare import decision_rule
from repro_check.reporting.sensitivity.format import nodeid_slugs
from repro_check.reporting.sensitivity.latex import latex_tables
from repro_check.reporting.sensitivity.markdown import markdown_report
from repro_check.reporting.sensitivity.model import (
    METRIC_PREFIX,
    REFERENCE_SOURCE,
    SCHEMA,
    SCHEMA_VERSION,
    SensitivityAnalysis,
)
from repro_check.reporting.sensitivity.plots import write_plots


def write_report(
    analysis: SensitivityAnalysis,
    directory: str | Path,
    *,
    session: Mapping[str, Any] | None = None,
    disagreement: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write the report files into ``directory`` (created if needed), each atomically.

    ``sensitivity.md`` (for reviewers), ``sensitivity.tex`` (booktabs tables for a paper),
    ``runs.csv`` (one row per run, with its command and seeds), ``sensitivity.json`` (schema
    ``repro-check/sensitivity`` v2, NaN as null) and, when ``plots`` and matplotlib is
    installed, two PNGs per test and metric: ``<test>__<metric>__sources.png`` and
    ``<test>__<metric>__expected_max.png``. Returns the paths written.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    slugs = nodeid_slugs(analysis.tests)
    written: list[Path] = []
    plot_files: dict[tuple[str, str], dict[str, str]] = {}
    plot_note = ""
    if plots:
        try:
            plot_files, pngs = write_plots(analysis, out, slugs)
            written += pngs
        except ImportError as exc:  # matplotlib is the optional `plots` extra
            plot_note = (
                f"plots skipped: matplotlib is not installed ({exc}); pip install matplotlib"
            )

    csv_path = out / "runs.csv"
    atomic_write_text(csv_path, analysis.runs.to_csv(index=False))
    written.append(csv_path)

    md_path = out / "sensitivity.md"
    atomic_write_text(
        md_path, markdown_report(analysis, session, disagreement, plot_files, plot_note)
    )
    written.append(md_path)

    tex_path = out / "sensitivity.tex"
    atomic_write_text(tex_path, latex_tables(analysis))
    written.append(tex_path)

    json_path = out / "sensitivity.json"
    files = [p.name for p in written] + [json_path.name]
    write_json(json_path, json_document(analysis, session, disagreement, plot_files, files))
    written.append(json_path)
    return written


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats by the project's one policy (atomic.encode_float:
    "nan", "inf", "-inf"), so an undefined statistic (the std of one run) reads "nan"."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return encode_float(float(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__name__ in ("NAType", "NaTType"):
        return None
    return str(obj)


def json_document(
    analysis: SensitivityAnalysis,
    session: Mapping[str, Any] | None = None,
    disagreement: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    plot_files: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    files: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``sensitivity.json`` document (schema ``repro-check/sensitivity``, version 2)."""
    slugs = nodeid_slugs(analysis.tests)
    tests = []
    for test in analysis.tests:
        metrics = []
        for metric in analysis.metrics(test):
            curve = analysis.curve(test, metric)
            metrics.append(
                {
                    "name": metric,
                    "column": METRIC_PREFIX + metric,
                    "higher_is_better": analysis.higher_is_better.get(metric, True),
                    "sources": analysis.rows(test, metric)
                    .drop(columns=["test", "metric"])
                    .to_dict("records"),
                    "expected_max": {
                        "source": REFERENCE_SOURCE,
                        "budgets": curve["budget"].tolist(),
                        "expected": curve["expected"].tolist(),
                        "low": curve["low"].tolist(),
                        "high": curve["high"].tolist(),
                    },
                    "plots": dict((plot_files or {}).get((test, metric), {})),
                }
            )
        tests.append(
            {
                "nodeid": test,
                "slug": slugs[test],
                "sources": analysis.sources(test),
                "runs_per_source": {
                    s: int((analysis.runs[analysis.runs["test"] == test]["source"] == s).sum())
                    for s in analysis.sources(test)
                },
                "metrics": metrics,
                "disagreement": (disagreement or {}).get(test),
            }
        )
    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {**analysis.settings(), "decision_rule": decision_rule()},
        "session": dict(session) if session else None,
        "tests": tests,
        "comparisons": [c.to_dict() for c in analysis.comparisons],
        "across_tests": [a.to_dict() for a in analysis.aggregates],
        "crossed": [c.to_dict() for c in analysis.crossed],
        "declared_outcomes": analysis.declared,
        "plots": {
            f"{key[0]} :: {key[1]}": dict(value)
            for key, value in (plot_files or {}).items()
            if key[0] not in analysis.tests
        },
        "warnings": [w.to_dict() for w in analysis.warnings],
        "runs_file": "runs.csv",
        "runs": analysis.runs.to_dict("records"),
        "files": list(files),
    }
    return _jsonable(document)
