"""Keep marked tests tidy when the plugin is disabled (``pytest -p no:repro``).

Opt in from a conftest.py: ``pytest_plugins = ["repro_check.fallback"]``. When the ``repro``
plugin is active this does nothing. When it is disabled, it registers the ``repro`` marker (no
``PytestUnknownMarkWarning``, and ``--strict-markers`` still collects) and skips every marked
test with a reason that names the plugin -- instead of ``fixture 'repro' not found`` errors, or,
for tests that do not use the fixture, an unseeded run that proves nothing.

Without it, nothing can help: a disabled plugin runs no code.
"""

from __future__ import annotations

import pytest

SKIP_REASON = (
    "repro-check is disabled (-p no:repro): this training test needs its plugin; "
    "run without -p no:repro (plain pytest runs it once, seeded)"
)


def pytest_configure(config: pytest.Config) -> None:
    from repro_check import pytest_plugin

    # Registered by its entry point ("repro") or by -p repro_check.pytest_plugin.
    if config.pluginmanager.is_registered(pytest_plugin):
        return
    config.addinivalue_line("markers", pytest_plugin.MARKER_HELP)
    config.pluginmanager.register(_Disabled(), "repro-fallback")


class _Disabled:
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if item.get_closest_marker("repro") or "repro" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))

    @pytest.fixture
    def repro(self) -> None:
        """Never reached (marked tests are skipped); it keeps collection free of errors."""
        pytest.skip(SKIP_REASON)
