"""Recording a ``pytest --repro`` session or sweep in the run catalog. Hooks only.

The run's row is inserted (status ``running``) when the session starts and completed when it
ends, after the report files are written; under pytest-xdist only the controller writes (the
workers ship their verdicts to it). A catalog that cannot be written never fails the tests: the
summary says why and the session goes on.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from repro_check.orchestration.replicas import ReplicaResult
from repro_check.orchestration.verdict import FAILING
from repro_check.pytest_plugin.options import Options

RUN_ID_ENV = "REPRO_CHECK_RUN_ID"  # set by `repro-check runs verify` (commands/runs.py)
VERIFIES_ENV = "REPRO_CHECK_VERIFIES"


def noting_reference(
    results: Iterable[ReplicaResult], facts: dict[str, Any]
) -> Iterator[ReplicaResult]:
    """Pass the results through, keeping what the catalog needs of replica 0's: its record
    digests and the data versions the test declared."""
    from repro_check.catalog.lineage import record_digests

    for result in results:
        if result.replica == 0 and not facts and result.record is not None:
            facts.update(record_digests(result.record))
            facts["data_versions"] = dict(result.run_info.get("data_versions") or {})
        yield result


class CatalogRecorder:
    """Writes this session into the catalog at ``options.catalog``; ``session_name`` is the
    registered plugin whose verdicts (``report.verdicts``) or sweep rows (``rows``) it reads."""

    def __init__(self, config: pytest.Config, options: Options, kind: str, session_name: str):
        self.config = config
        self.options = options
        self.kind = kind
        self.session_name = session_name
        self.path: Path = options.catalog  # type: ignore[assignment]
        self.run_id: str | None = None
        self.error = ""

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        from repro_check.catalog import Catalog, CatalogError, RunStart

        params = self.config.invocation_params
        start = RunStart(
            kind=self.kind,
            argv=[str(a) for a in params.args],
            cwd=str(params.dir),
            python=sys.executable,
            base_seed=self.options.base_seed,
            options=_options(self.options, self.config if self.kind == "sweep" else None),
            report_dir=str(self.options.report_dir) if self.options.report_dir else None,
            verifies=os.environ.get(VERIFIES_ENV) or None,
        )
        try:
            with Catalog(self.path) as catalog:
                self.run_id = catalog.start_run(start, os.environ.get(RUN_ID_ENV) or None)
        except (CatalogError, OSError) as exc:
            self.error = f"repro-check: the run catalog was not written: {exc}"

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from repro_check.catalog import Catalog, CatalogError

        if self.run_id is None:
            return
        try:
            end = self._end(int(exitstatus))
            with Catalog(self.path) as catalog:
                catalog.finish_run(self.run_id, end)
        except (CatalogError, OSError, ValueError) as exc:
            self.error = f"repro-check: run {self.run_id} was not completed in the catalog: {exc}"

    @pytest.hookimpl(
        trylast=True
    )  # after the repro summary: a failure's text ends with its command
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.error:
            terminalreporter.write_line(self.error, yellow=True)
        elif self.run_id is not None:
            where = "" if _is_default(self.path, self.config) else f" --catalog {self.path}"
            terminalreporter.write_line(
                f"run {self.run_id} recorded in {_shown(self.path, self.config)} "
                f"(repro-check runs show {self.run_id}{where})"
            )

    def _end(self, exitstatus: int) -> Any:
        from repro_check.catalog import RunEnd
        from repro_check.catalog.lineage import git_lineage
        from repro_check.catalog.session import (
            archive_file,
            archive_folder,
            checkpoint_artifacts,
            outcome_of,
            session_entries,
            sweep_entries,
            write_digests,
        )

        assert self.run_id is not None
        owner = self.config.pluginmanager.get_plugin(self.session_name)
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        report_dir = self.options.report_dir
        if self.kind == "sweep":
            tests, data = sweep_entries(getattr(owner, "rows", []))
            report_files = list(getattr(getattr(owner, "report", None), "paths", []))
            report_files = [p for p in report_files if p.suffix in (".json", ".csv", ".md")]
            store = getattr(getattr(owner, "store", None), "path", None)
            report_files += [Path(store)] if store else []  # the rows: the sweep's own record
            tables: dict[str, Any] = {}
        else:
            verdicts = [v.json for v in getattr(getattr(owner, "report", None), "verdicts", [])]
            tests, data = session_entries(verdicts)
            report_files = list(getattr(getattr(owner, "report", None), "paths", []))
            tables = dict(getattr(owner, "key_tables", {}))
        folder = archive_folder(self.path, self.run_id)
        artifacts = []
        for path in report_files:
            if Path(path).is_file():
                kind = {"environment.json": "environment", "runs.jsonl": "sweep-runs"}.get(
                    Path(path).name, "report"
                )
                artifacts.append(archive_file(Path(path), folder, kind))
        if tables:
            artifacts.append(write_digests(folder, tables))
        artifacts += checkpoint_artifacts(report_dir, [t.nodeid for t in tests])
        snapshot = _snapshot(report_files, self.config)
        excluded = [p for p in (report_dir, self.path.parent) if p is not None]
        failed = sum(t.status in FAILING or t.status == "failed" for t in tests)
        return RunEnd(
            status="interrupted" if interrupted else "finished",
            outcome=outcome_of([t.status for t in tests], interrupted),
            exit_code=exitstatus,
            snapshot=snapshot,
            git=git_lineage(snapshot, excluded),
            tests=tests,
            artifacts=artifacts,
            data_versions=data,
            archive=str(folder) if folder.is_dir() else None,
            summary={"tests": len(tests), "failed": failed},
        )


def _snapshot(report_files: list[Path], config: pytest.Config) -> dict[str, Any]:
    """The session's environment.json when it wrote one, else a fresh capture."""
    from repro_check import environment

    for path in report_files:
        if Path(path).name == "environment.json":
            try:
                return environment.load(path)
            except environment.StoredFileError:
                break
    return environment.capture(repo_dir=str(config.rootpath))


SWEEP_OPTIONS = ("seeds", "sources", "crossed", "crossed_seeds", "sweep_threads", "only_run")


def _options(options: Options, sweep: pytest.Config | None = None) -> dict[str, Any]:
    """The session's options as recorded; a sweep's own (K, sources, ...) too."""
    recorded = {
        f.name: str(v) if isinstance(v := getattr(options, f.name), Path) else v
        for f in dataclasses.fields(options)
    }
    for name in SWEEP_OPTIONS if sweep is not None else ():
        recorded[f"sweep_{name}"] = sweep.getoption(f"repro_{name}")
    return recorded


def _is_default(path: Path, config: pytest.Config) -> bool:
    """Whether ``repro-check runs`` started here finds this catalog without ``--catalog``."""
    default = Path(config.invocation_params.dir, "reports", "catalog.sqlite")
    return default.resolve() == path.resolve()


def _shown(path: Path, config: pytest.Config) -> str:
    """Relative to where pytest started when inside it, else absolute."""
    try:
        shown = os.path.relpath(path, config.invocation_params.dir)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path.resolve()) if shown.startswith("..") else shown
