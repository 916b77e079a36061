"""The pytest plugin: ``pytest --repro``. Hooks only.

Without ``--repro`` a ``@pytest.mark.repro`` test runs once, seeded, as a plain test. With it,
every marked test runs as several replicas -- by default each in a fresh interpreter (one worker
process per replica for the whole session) -- and the parent compares what they recorded.

The hooks here register one session object for the run (syrupy hands off to its
SnapshotSession the same way); the sessions translate pytest's world into calls on the
orchestration layer, which decides. Options live under one prefix (``--repro-*``, ini
``repro_*``); ``-p no:repro`` disables the plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from repro_check.core.context import RunContext
from repro_check.pytest_plugin.items import (
    MARKER,
    ReproFailure,
    context_key,
    is_repro_item,
    validate,
)
from repro_check.pytest_plugin.options import Options, add_options

MARKER_HELP = (
    "repro(steps=10, atol=, rtol=, allow={op: why}, resume_at=k): a training test whose "
    "recorded state must be reproducible (run with --repro to replay it as replicas and compare "
    "them bitwise; resume_at=k also checks a resume from a checkpoint after step k)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    options = Options.from_config(config)
    worker_spec = config.getoption("repro_worker")
    if worker_spec:
        from repro_check.pytest_plugin.worker import WorkerSession

        config.pluginmanager.register(
            WorkerSession(config, Path(worker_spec), options), "repro-worker"
        )
        return
    if config.getoption("repro_sensitivity"):
        from repro_check.pytest_plugin.sensitivity import SensitivitySession

        config.pluginmanager.register(SensitivitySession(config, options), "repro-sensitivity")
    elif options.enabled:
        from repro_check.pytest_plugin.parent import ParentSession

        config.pluginmanager.register(ParentSession(config, options), "repro-session")
    else:
        from repro_check.pytest_plugin.seeded import PlainSession

        config.pluginmanager.register(PlainSession(options), "repro-plain")
    sweep = bool(config.getoption("repro_sensitivity"))
    recorded = (options.enabled or sweep) and not config.option.collectonly
    if recorded and options.catalog is not None and not hasattr(config, "workerinput"):
        from repro_check.pytest_plugin.catalog import CatalogRecorder

        kind, owner = ("sweep", "repro-sensitivity") if sweep else ("session", "repro-session")
        recorder = CatalogRecorder(config, options, kind, owner)
        config.pluginmanager.register(recorder, "repro-catalog")
    if config.getoption("repro_audit"):
        from repro_check.pytest_plugin.audit import AuditPlugin

        config.pluginmanager.register(AuditPlugin(config, options.report_dir), "repro-audit")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Using the fixture opts a test in, as the marker does.
    for item in items:
        if "repro" in getattr(item, "fixturenames", ()) and not is_repro_item(item):
            item.add_marker(MARKER)
    validate(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A repro failure's message is the whole report: no traceback of the plugin's frames."""
    report = yield
    if call.excinfo is not None and isinstance(call.excinfo.value, ReproFailure):
        report.longrepr = str(call.excinfo.value)
    return report


@pytest.fixture
def repro(request: pytest.FixtureRequest) -> RunContext:
    """The RunContext of this replica: seeds (``seed``, ``seed_for``), ``steps``,
    ``dataloader_kwargs()`` and ``record(step, **state)``."""
    context = request.node.stash.get(context_key, None)
    if context is None:  # plugin hooks were bypassed (e.g. the fixture used from a class scope)
        raise RuntimeError("the repro fixture is only available to function-scoped tests")
    return context
