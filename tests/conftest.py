"""Fixtures shared by the project's test modules.

The end-to-end sessions over the real suites (tests/suite_sessions.py) are the longest part of
the run and mostly keep both cores busy, while the rest of the test run mostly keeps one: they are
started as soon as collection shows a test that needs them, and run beside the other tests.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from pytest_runs import Finished
from suite_sessions import Launched

FIXTURE = "suite_sessions"
_running: list[tuple[Launched, Path]] = []


def _launch() -> Launched:
    base = Path(tempfile.mkdtemp(prefix="repro-suite-sessions-"))
    launched = Launched(base)
    _running.append((launched, base))
    return launched


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or getattr(session.config, "workerinput", None):
        return
    if any(FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        _launch()


def pytest_sessionfinish() -> None:
    for launched, base in _running:
        launched.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def suite_sessions() -> dict[str, Finished]:
    """The suite sessions' outputs and reports, waited for once."""
    launched = _running[0][0] if _running else _launch()
    return launched.collect()
