"""Fixtures shared by the project's test modules."""

from __future__ import annotations

import pytest
from pytest_runs import Finished
from suite_sessions import start_sessions


@pytest.fixture(scope="session")
def suite_sessions(tmp_path_factory) -> dict[str, Finished]:
    """The end-to-end sessions over the real suites (tests/suite_sessions.py), run once."""
    return start_sessions(tmp_path_factory)
