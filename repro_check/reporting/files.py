"""The report files of a ``pytest --repro`` session: report.json and report.md."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from repro_check.core.atomic import atomic_write_text, write_json
from repro_check.orchestration.verdict import FAILING
from repro_check.reporting.verdicts import RenderedVerdict, summary_table

REPORT_SCHEMA = "repro-check/report"
REPORT_SCHEMA_VERSION = 1


def report_document(
    verdicts: Sequence[RenderedVerdict], *, session: dict[str, Any]
) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "session": session,
        "totals": {
            "tests": len(verdicts),
            "failed": sum(v.json["status"] in FAILING for v in verdicts),
            "identical": sum(v.json["status"] == "identical" for v in verdicts),
        },
        "tests": [v.json for v in verdicts],
    }


def markdown_report(verdicts: Sequence[RenderedVerdict], document: dict[str, Any]) -> str:
    session = document["session"]
    lines = [
        "# repro-check report",
        "",
        f"- created: {document['created']}",
        f"- command: `{session.get('command', '')}`",
        f"- base seed: {session.get('base_seed')}",
        f"- replicas: {session.get('runs')} ({session.get('mode')})",
        "",
        summary_table(verdicts, tablefmt="github"),
        "",
    ]
    environment = session.get("environment") or {}
    if environment:
        lines += ["## Environment", ""]
        lines += [f"- {key}: {value}" for key, value in environment.items()]
        lines.append("")
    tolerance = [v for v in verdicts if (v.json.get("baseline") or {}).get("mode") == "tolerance"]
    if tolerance:  # why each was not compared bit for bit: one line per relevant difference
        lines += ["## Baselines compared with tolerances", ""]
        for v in tolerance:
            b = v.json["baseline"]
            lines.append(f"- `{v.json['nodeid']}`: {b.get('status')} -- {b.get('reason')}")
            lines += [f"  - {d}" for d in b.get("env_differences") or []]
        lines.append("")
    failures = [v for v in verdicts if v.failure]
    if failures:
        lines += ["## Failures", ""]
        for v in failures:
            lines += [f"### {v.json['nodeid']}", "", "```", v.failure, "```", ""]
    return "\n".join(lines)


def write_reports(
    directory: Path, verdicts: Sequence[RenderedVerdict], *, session: dict[str, Any]
) -> list[Path]:
    """Write report.json and report.md atomically; returns the paths written."""
    document = report_document(verdicts, session=session)
    json_path, md_path = directory / "report.json", directory / "report.md"
    write_json(json_path, document)
    from repro_check.reporting.drift import drift_section

    variants_md, pngs = drift_section(directory, document["tests"])
    atomic_write_text(md_path, markdown_report(verdicts, document) + variants_md)
    return [json_path, md_path, *pngs]
