"""Seeding shared by every kind of session, and the plain session (no ``--repro``).

Seeds are set in ``pytest_runtest_setup`` (tryfirst), before any fixture runs, from the test's
root seed; the ``repro`` fixture then hands the test its :class:`RunContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from repro_check.core.context import RunContext
from repro_check.core.record import MetricRecorder, Recorder
from repro_check.core.seeding import SeedPlan, root_seed_for_test
from repro_check.pytest_plugin.items import context_key, is_repro_item, steps_for
from repro_check.pytest_plugin.options import Options


def maybe_deterministic(enabled: bool) -> Callable[[], None]:
    """Enable deterministic mode when asked; always return a restore function."""
    if not enabled:
        return lambda: None
    from repro_check.core.determinism import enable_deterministic_mode

    return enable_deterministic_mode()


class SeededSession:
    """Sets each marked test's seeds and RunContext before its fixtures run. Subclasses say
    which replica this is, how it records, and which seeds, bit-flip or trace window apply."""

    base_seed: int

    def make_recorder(self, item: pytest.Item) -> Recorder | MetricRecorder | None:
        return None

    def replica_index(self, item: pytest.Item) -> int:
        return 0

    def root_seed(self, item: pytest.Item) -> int:
        return root_seed_for_test(self.base_seed, item.nodeid)

    def perturbations(self, item: pytest.Item) -> dict[str, int]:
        return {}

    def bitflip(self, item: pytest.Item) -> int | None:
        return None

    def trace(self, item: pytest.Item) -> Any:
        return None

    def resume_plan(self, item: pytest.Item) -> Any:
        """This run's part in a resume check ({"role", "at", "path"}), or None."""
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if not is_repro_item(item):
            return
        plan = SeedPlan(self.root_seed(item), self.perturbations(item))
        context = RunContext(
            plan,
            steps=steps_for(item),
            replica=self.replica_index(item),
            recorder=self.make_recorder(item),
            test_id=item.nodeid,
        )
        item.stash[context_key] = context
        context.seed_globals()
        flip = self.bitflip(item)
        if flip is not None:
            context.arm_bitflip(flip)
        trace = self.trace(item)
        if trace:
            context.trace_window(trace["start_after"], trace["stop_at"], trace["path"])
        resume = self.resume_plan(item)
        if resume:
            from repro_check.core.resume_state import ResumeController, ResumePlan

            context.resume = ResumeController(
                ResumePlan.from_json(resume),
                context.run_info.setdefault("resume", {}),
                {"test_id": item.nodeid, "seed": plan.root, "base_seed": self.base_seed},
            )


class PlainSession(SeededSession):
    """No ``--repro``: marked tests run once, seeded; ``record`` only checks types."""

    def __init__(self, options: Options) -> None:
        self.base_seed = options.base_seed
        self._restore_determinism = maybe_deterministic(options.deterministic)

    def pytest_unconfigure(self) -> None:
        self._restore_determinism()
