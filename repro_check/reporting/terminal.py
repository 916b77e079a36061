"""What a ``pytest --repro`` session shows and writes at the end: the terminal ``repro summary``,
the report files, environment.json and GitHub Actions' job summary."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_check.orchestration.verdict import (
    ALLOWED,
    BASELINE_MISMATCH,
    BASELINE_MISSING,
    DIVERGED,
    ERROR,
    FAILING,
    IDENTICAL,
    NOT_RECORDED,
    RESUME_MISMATCH,
    SINGLE,
    SKIPPED,
    STRUCTURAL,
    VARIANT_MISMATCH,
)
from repro_check.reporting.verdicts import RenderedVerdict, human_bytes, plural, summary_table

__all__ = ["SessionReport", "checkpoint_lines", "outcome_counts", "plural", "summary_lines"]

#: How the summary line names each outcome: (statuses, singular, plural), in the order shown.
#: Each test is counted once, by its final status; a missing baseline is not "not reproducible".
OUTCOMES: tuple[tuple[frozenset[str], str, str], ...] = (
    (frozenset({IDENTICAL}), "reproducible", "reproducible"),
    (frozenset({ALLOWED}), "reproducible within an allowance", "reproducible within allowances"),
    (frozenset({SINGLE}), "run once (nothing compared)", "run once (nothing compared)"),
    (frozenset({DIVERGED, STRUCTURAL}), "not reproducible", "not reproducible"),
    (frozenset({ERROR}), "raised an error", "raised errors"),
    (frozenset({NOT_RECORDED}), "recorded nothing", "recorded nothing"),
    (frozenset({BASELINE_MISMATCH}), "differs from its baseline", "differ from their baselines"),
    (frozenset({BASELINE_MISSING}), "baseline missing", "baselines missing"),
    (frozenset({VARIANT_MISMATCH}), "disagrees with a variant", "disagree with variants"),
    (frozenset({RESUME_MISMATCH}), "does not resume equivalently", "do not resume equivalently"),
    (frozenset({SKIPPED}), "skipped", "skipped"),
)
SHOWN_COMMANDS = 5  # create commands listed before "and N more"


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
            shown = ", ".join(_shown(path, Path.cwd()) for path in self.paths)
            terminalreporter.write_line(f"report: {written or shown}")
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
    yield (
        f"{outcome_counts(verdicts)}; {human_bytes(total)} fingerprinted; base seed {base_seed}",
        {},
    )
    yield from _baseline_notices(verdicts)
    created = [v.json for v in verdicts if _action(v) == "created"]
    if created:
        them = "it" if len(created) == 1 else "them"
        yield f"created {plural(len(created), 'baseline')} (commit {them}):", {}
        for test in created[:SHOWN_COMMANDS]:
            yield f"  {test['baseline']['path']}", {}
        if len(created) > SHOWN_COMMANDS:
            yield f"  and {len(created) - SHOWN_COMMANDS} more", {}
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


def _action(verdict: RenderedVerdict) -> str:
    return (verdict.json.get("baseline") or {}).get("action", "")


#: Tests without a baseline, and what the summary says about them (with the commands).
BASELINE_NOTICES = (
    (
        "missing",
        "{tests} without a baseline (a new test's first --repro run?): create {them}, then commit:",
    ),
    (
        "unchecked",
        "warning: {tests} passed without a baseline to check (repro_missing_baseline = warn); "
        "create {them}:",
    ),
)


def _baseline_notices(
    verdicts: Sequence[RenderedVerdict],
) -> Iterable[tuple[str, dict[str, bool]]]:
    for action, header in BASELINE_NOTICES:
        tests = [v.json for v in verdicts if _action(v) == action]
        if tests:
            them = "it" if len(tests) == 1 else "them"
            yield header.format(tests=plural(len(tests), "test"), them=them), {"yellow": True}
            yield from _commands(tests)


def outcome_counts(verdicts: Sequence[RenderedVerdict]) -> str:
    """``3 tests: 2 reproducible, 1 baseline missing`` -- each test once, by its status."""
    statuses = [v.json["status"] for v in verdicts]
    parts = []
    for group, one, many in OUTCOMES:
        count = sum(status in group for status in statuses)
        if count:
            parts.append(f"{count} {one if count == 1 else many}")
    known = frozenset().union(*(group for group, _, _ in OUTCOMES))
    other = sum(status not in known for status in statuses)
    if other:
        parts.append(f"{other} other")
    return f"{plural(len(verdicts), 'test')}: {', '.join(parts)}" if parts else "0 tests"


def _commands(tests: Sequence[dict[str, Any]]) -> Iterable[tuple[str, dict[str, bool]]]:
    for test in tests[:SHOWN_COMMANDS]:
        yield f"  {test.get('accept_command') or test['nodeid']}", {}
    if len(tests) > SHOWN_COMMANDS:
        yield (
            f"  and {len(tests) - SHOWN_COMMANDS} more: rerun this session with --repro-update",
            {},
        )


def checkpoint_lines(folder: Path, nodeids: Sequence[str], start: Path) -> list[str]:
    """Where ``--repro-save-checkpoints`` put this session's checkpoints (the summary footer)."""
    from repro_check.orchestration.checkpoints import test_folder

    saved = [(n, test_folder(folder, n)) for n in nodeids if test_folder(folder, n).is_dir()]
    if not saved:
        return [f"checkpoints: none written to {_shown(folder, start)} (no test recorded a step)"]
    lines = [
        f"checkpoints: {_shown(folder, start)}{os.sep} -- the last recorded step of each replica, "
        f"as <test file>/<test name>/replica-<i>/step-<n>.safetensors + .json (manifest); "
        f"restore one with repro_check.load_checkpoint(path, model=..., optimizer=...)"
    ]
    for nodeid, path in saved[:SHOWN_COMMANDS]:
        lines.append(f"  {nodeid}: {_shown(path, start)}{os.sep}")
    if len(saved) > SHOWN_COMMANDS:
        lines.append(f"  and {len(saved) - SHOWN_COMMANDS} more")
    return lines


def _shown(path: Path, start: Path) -> str:
    """Relative to ``start`` when inside it (as a user types it), else absolute."""
    try:
        relative = os.path.relpath(path, start)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if relative.startswith(os.pardir) else relative


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
