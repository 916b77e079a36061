"""Scheduling the resume checks of a ``pytest --repro`` session (``resume_at=k``). Hooks' helper.

After collection, every marked test with a resume check joins one batch
(:class:`~repro_check.orchestration.resume_runs.ResumeBatch`: two fresh processes for the
session); under pytest-xdist, or for a test the batch does not hold, the test gets a batch of
its own. Checkpoints go to ``REPORT_DIR/resume/<test file>/<test name>/step-<k>`` and stay there
(the run catalog indexes them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from repro_check.core.paths import id_to_name, inside, nodeid_path
from repro_check.orchestration.case import Case
from repro_check.orchestration.launcher import WorkerLauncher
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec
from repro_check.orchestration.resume_runs import ResumeBatch
from repro_check.pytest_plugin.items import case_for, is_repro_item
from repro_check.pytest_plugin.options import Options


class SessionResumes:
    def __init__(
        self,
        launcher: WorkerLauncher,
        spec: ReplicaSpec,
        options: Options,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.launcher = launcher
        self.spec = spec
        self.options = options
        self.on_wait = on_wait
        self.batch: ResumeBatch | None = None

    def target(self, case: Case) -> tuple[int, str]:
        """Where the checkpoint of ``case``'s check goes (kept inside the report folder)."""
        assert case.resume_at is not None
        root = Path(self.options.report_dir or self.launcher.tmpdir) / "resume"
        folder = inside(root, root / nodeid_path(case.nodeid), "a resume checkpoint")
        return case.resume_at, str(folder / f"step-{case.resume_at}")

    def plan(self, session: pytest.Session) -> None:
        """One batch for the session's resume checks (not in an xdist worker: there each test
        is judged on its own, and a batch would run tests other workers own)."""
        if session.config.option.collectonly or hasattr(session.config, "workerinput"):
            return
        checks = {}
        for item in session.items:
            if is_repro_item(item):
                case = case_for(item, self.options)
                if case.resume_at is not None:
                    checks[case.nodeid] = self.target(case)
        if checks:
            self.batch = ResumeBatch(self.launcher, self.spec, checks, "resume", self.on_wait)

    def results(self, case: Case) -> list[ReplicaResult]:
        """The straight, stop and resumed runs of ``case`` (the VerdictPipeline's resumer)."""
        if self.batch is not None and case.nodeid in self.batch.checks:
            return self.batch.results(case.nodeid)
        tag = f"resume-{id_to_name(case.nodeid)}"
        checks = {case.nodeid: self.target(case)}
        own = ResumeBatch(self.launcher, self.spec, checks, tag, self.on_wait)
        try:
            return own.results(case.nodeid)
        finally:
            own.close()

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()
