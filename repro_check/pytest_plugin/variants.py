"""``--repro-variants`` / ``@pytest.mark.repro(variants=[...])``: from pytest items to the
variant plan, and from the replica pool to each variant's results. Hooks stay in
:mod:`repro_check.pytest_plugin.parent`; the decisions are in
:mod:`repro_check.orchestration.variants` and :mod:`repro_check.orchestration.drift`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import pytest

from repro_check.orchestration.executor import ReplicaPool
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec
from repro_check.orchestration.variants import (
    NO_VARIANTS,
    PlannedVariant,
    Variant,
    parse_variants,
    plan_variants,
    probe_capabilities,
    with_judge,
)
from repro_check.pytest_plugin.items import is_repro_item, marker_of
from repro_check.pytest_plugin.options import Options


def wanted_variants(items: Sequence[pytest.Item], options: Options) -> dict[str, list[Variant]]:
    """Each marked test's variants: the session's (--repro-variants, ini) and its marker's,
    with the float64 judge added."""
    wanted: dict[str, list[Variant]] = {}
    if NO_VARIANTS in options.variants:
        return wanted
    for item in items:
        if not is_repro_item(item):
            continue
        variants = with_judge(parse_variants([*options.variants, *marker_of(item).variants]))
        if variants:
            wanted[item.nodeid] = variants
    return wanted


def plan_session(
    items: Sequence[pytest.Item], options: Options, first_index: int, *, gpu_workers: bool = False
) -> list[PlannedVariant]:
    """The session's variant plan (empty when no test asks for variants)."""
    wanted = wanted_variants(items, options)
    if not wanted:
        return []
    if options.mode != "subprocess":
        raise pytest.UsageError(
            "backend variants run in fresh processes beside subprocess replicas: drop "
            "--repro-mode=inprocess (or the variants)"
        )
    return plan_variants(
        wanted,
        probe_capabilities(gpu_workers=gpu_workers),
        runs=options.variant_runs,
        first_index=first_index,
    )


def extra_jobs(
    plan: Sequence[PlannedVariant], only: str | None = None
) -> list[tuple[list[str], ReplicaSpec]]:
    """(tests, spec) for every variant replica process the plan starts (``only``: for one test,
    as under pytest-xdist, where each test starts its own processes)."""
    if only is not None:
        return [([only], spec) for p in plan if only in p.nodeids for spec in p.specs]
    return [(list(p.nodeids), spec) for p in plan for spec in p.specs]


def results_of(
    pool: ReplicaPool, nodeid: str, tick: Callable[[], None] | None = None
) -> Callable[[PlannedVariant], Iterator[ReplicaResult]]:
    """What the variant stage asks for: one variant's replica results for ``nodeid``."""

    def of(planned: PlannedVariant) -> Iterator[ReplicaResult]:
        for spec in planned.specs:
            yield pool.result(nodeid, spec.index, tick)

    return of


def header_line(plan: Sequence[PlannedVariant]) -> str:
    runs = [p for p in plan if p.specs]
    skipped = [p for p in plan if not p.specs]
    parts = [f"{p.variant.describe()} x{len(p.specs)}" for p in runs]
    text = "repro-check variants: " + (", ".join(parts) or "none runnable here")
    if skipped:
        text += "; skipped: " + "; ".join(f"{p.name} ({p.skipped})" for p in skipped)
    return text


def variant_options(options: Options) -> tuple[str, ...]:
    """The options a rerun command needs to run the same variants."""
    extra: list[Any] = []
    if options.variants:
        extra.append(f"--repro-variants={','.join(options.variants)}")
    if options.variants and options.variant_runs != options.runs:
        extra.append(f"--repro-variant-runs={options.variant_runs}")
    return tuple(extra)


@dataclass
class Cluster:
    """The session's Dask cluster under ``--repro-executor=dask`` (else nothing): replica and
    variant processes start on its workers; GPU variants only on workers with a GPU resource."""

    client: Any = None
    cluster: Any = None

    @classmethod
    def for_config(cls, config: pytest.Config, workers: int) -> Cluster:
        if config.getoption("repro_executor") != "dask":
            return cls()
        from repro_check.orchestration.cluster import DaskUnavailable, start_dask

        try:
            return cls(*start_dask(config.getoption("repro_dask_scheduler"), workers))
        except DaskUnavailable as exc:
            raise pytest.UsageError(str(exc)) from None

    @property
    def gpu_workers(self) -> bool:
        from repro_check.orchestration.cluster import has_gpu_workers

        return self.client is not None and has_gpu_workers(self.client)

    @property
    def executor(self) -> Executor | None:
        from repro_check.orchestration.cluster import ResourceExecutor

        return ResourceExecutor(self.client) if self.client is not None else None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None
