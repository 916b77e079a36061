"""From pytest items to the orchestration layer's plain data: which tests are marked, their
:class:`~repro_check.orchestration.case.Case`, and the stash keys the sessions share."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest

from repro_check.core.context import RunContext
from repro_check.core.seeding import pairing_id, root_seed_for_test
from repro_check.orchestration.allowance import Allowance, AllowanceError, from_ini_lines, merge
from repro_check.orchestration.case import (
    Case,
    MarkerError,
    MarkerSettings,
    parse_marker,
    parse_steps,
)
from repro_check.orchestration.replicas import RunSpec
from repro_check.pytest_plugin.options import Options

MARKER = "repro"

context_key = pytest.StashKey[RunContext]()
run_key = pytest.StashKey[RunSpec]()
replica_key = pytest.StashKey[int]()
started_key = pytest.StashKey[float]()  # when the logged (last) in-process replica began


class ReproFailure(AssertionError):
    """A marked test is not reproducible; its message is the whole report (no traceback)."""


def is_repro_item(item: pytest.Item) -> bool:
    return item.get_closest_marker(MARKER) is not None


def uses_hypothesis(items: Iterable[pytest.Item]) -> bool:
    """Whether a marked test is written with hypothesis's ``@given`` (its workers then load
    hypothesis's pytest plugin)."""
    return any(
        getattr(getattr(item, "obj", None), "is_hypothesis_test", False)
        for item in items
        if is_repro_item(item)
    )


def marker_of(item: pytest.Item) -> MarkerSettings:
    """The test's marker settings, validated (a usage error naming the test otherwise)."""
    marker = item.get_closest_marker(MARKER)
    args, kwargs = (marker.args, marker.kwargs) if marker else ((), {})
    try:
        return parse_marker(item.nodeid, args, kwargs, extra=SWEEP_KEYWORDS)
    except MarkerError as exc:
        raise pytest.UsageError(str(exc)) from None


#: Marker keywords read by sensitivity sweeps: ``pair="name"`` gives differently named tests
#: the same seeds (parametrized variants of one test share them without it).
SWEEP_KEYWORDS = ("pair",)


def pair_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker(MARKER)
    pair = marker.kwargs.get("pair") if marker else None
    if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.repro(pair={pair!r}): pair must be a non-empty name"
        )
    return pair


def sweep_root_seed(item: pytest.Item, base_seed: int) -> int:
    """A sweep's root seed: shared by the variants of one test, or by tests with one pair."""
    return root_seed_for_test(base_seed, pairing_id(item.nodeid, pair_of(item)))


def replica_timeouts(items: list[pytest.Item]) -> dict[str, float | None]:
    """The time limits markers set (``timeout=``), by test id; the others use the session's."""
    return {
        item.nodeid: timeout
        for item in items
        if is_repro_item(item) and (timeout := marker_of(item).timeout) is not None
    }


def steps_for(item: pytest.Item) -> int:
    override = item.config.getoption("repro_steps")
    if override is not None:
        try:
            return parse_steps(override, item.nodeid, "--repro-steps")
        except MarkerError as exc:
            raise pytest.UsageError(str(exc)) from None
    return marker_of(item).steps


def ini_allowances(config: pytest.Config) -> list[Allowance]:
    try:
        return from_ini_lines(config.getini("repro_allow"))
    except AllowanceError as exc:
        raise pytest.UsageError(str(exc)) from None


def target_of(item: pytest.Item) -> str:
    """The test as a user names it from the folder pytest was started in."""
    config = item.config
    path, _, rest = item.nodeid.partition("::")
    relative = os.path.relpath(config.rootpath / path, config.invocation_params.dir)
    return relative + ("::" + rest if rest else "")


def case_for(item: pytest.Item, options: Options) -> Case:
    marker = marker_of(item)
    return Case(
        item.nodeid,
        target_of(item),
        steps=steps_for(item),
        atol=marker.atol if marker.atol is not None else options.atol,
        rtol=marker.rtol if marker.rtol is not None else options.rtol,
        allowed=merge(ini_allowances(item.config), list(marker.allow)),
        resume_at=options.resume_at if options.resume_at is not None else marker.resume_at,
    )


def validate(items: list[pytest.Item]) -> None:
    """Every marked test's marker and the ini allowances are read once, at collection: a typo
    is a usage error before any replica starts."""
    marked = [item for item in items if is_repro_item(item)]
    if marked:
        ini_allowances(marked[0].config)
    for item in marked:
        steps_for(item)
