"""What a ``pytest --repro`` session shows and writes at the end: the terminal ``repro summary``,
the report files, environment.json and GitHub Actions' job summary."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_check.orchestration.verdict import ALLOWED, FAILING
from repro_check.reporting.verdicts import RenderedVerdict, human_bytes, summary_table


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 test``, ``2 tests``."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


@dataclass
class SessionReport:
    """The verdicts of a session and where its report went (or why it could not be written)."""

    verdicts: list[RenderedVerdict] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    error: str = ""

    def write_files(self, directory: Path, session: dict[str, Any], repo_dir: Path) -> None:
        from repro_check.reporting.files import write_reports

        try:
            self.paths = write_reports(directory, self.verdicts, session=session)
            self.paths.append(write_environment(directory, repo_dir))
        except OSError as exc:
            self.error = (
                f"repro-check: could not write the report to {directory}: "
                f"{exc.strerror or exc}; choose another folder with --repro-report=DIR"
            )

    def footer(self, terminalreporter: Any, written: str | None = None) -> None:
        if self.paths:
            terminalreporter.write_line(f"report: {written or ', '.join(map(str, self.paths))}")
        if self.error:
            terminalreporter.write_line(self.error, red=True)


def write_environment(directory: Path, repo_dir: Path) -> Path:
    from repro_check import environment

    path = directory / "environment.json"
    environment.save(environment.capture(repo_dir=str(repo_dir)), path)
    return path


def summary_lines(
    verdicts: Sequence[RenderedVerdict], base_seed: int
) -> Iterable[tuple[str, dict[str, bool]]]:
    """The ``repro summary`` section, line by line, with terminal markup."""
    yield summary_table(verdicts), {}
    total = sum(v.json["bytes_fingerprinted"] for v in verdicts)
    failed = sum(v.json["status"] in FAILING for v in verdicts)
    yield (
        (
            f"{plural(len(verdicts), 'test')}, {failed} not reproducible or failing; "
            f"{human_bytes(total)} fingerprinted; base seed {base_seed}"
        ),
        {},
    )
    for verdict in verdicts:
        if verdict.json["nonfinite"] and verdict.json["status"] not in FAILING:
            yield (
                (  # reproducible, yet worth knowing
                    f"warning: {verdict.json['nodeid']} reproducibly produced non-finite values "
                    f"(first: {verdict.json['nonfinite']})"
                ),
                {"yellow": True},
            )
    for verdict in verdicts:
        if verdict.json["status"] == ALLOWED:
            for op, why in (verdict.json.get("allowed_nondeterminism") or {}).items():
                yield f"allowed nondeterminism in {verdict.json['nodeid']}: {op} -- {why}", {}


def write_step_summary(verdicts: Sequence[RenderedVerdict]) -> None:
    """Append the summary to GitHub Actions' job summary when it is available."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:  # an append-only file GitHub owns: no atomic rewrite, one write per session
        with open(target, "a", encoding="utf-8") as handle:
            handle.write("## repro-check\n\n" + summary_table(verdicts, "github") + "\n\n")
    except OSError:
        pass
