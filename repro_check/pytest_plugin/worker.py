"""Inside a replica process (``--repro-worker=SPEC``): run the listed tests once per assigned
run and stream one result line per (test, run) to the channel file the parent reads."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from repro_check.core.atomic import read_json
from repro_check.core.backend import apply_settings
from repro_check.core.paths import id_to_name
from repro_check.core.record import MetricRecorder, Recorder, RunRecord
from repro_check.core.spill import SpillWriter
from repro_check.orchestration.guards import ProgressRecorder, WorkerGuard, watch_parent
from repro_check.orchestration.investigation import WHOLE_RUN
from repro_check.orchestration.launcher import WORKER_SCHEMA
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec, RunSpec
from repro_check.pytest_plugin.items import case_for, context_key, run_key, sweep_root_seed
from repro_check.pytest_plugin.options import Options
from repro_check.pytest_plugin.seeded import SeededSession, maybe_deterministic


@dataclass
class ParentChain:
    """Stands in for ``nextitem`` so that only the item's own (function-scoped) fixtures are
    torn down between in-process replicas; module and session fixtures stay."""

    chain: list[Any] = field(default_factory=list)

    def listchain(self) -> list[Any]:
        return self.chain


def apply_backend(backend: Any) -> Callable[[], None]:
    """Switch thread count / deterministic mode for one sweep run; returns the undo."""
    if not backend:
        return lambda: None
    import torch

    threads = torch.get_num_threads()
    if "threads" in backend:
        torch.set_num_threads(int(backend["threads"]))
    undo_deterministic = maybe_deterministic(bool(backend.get("deterministic")))

    def restore() -> None:
        undo_deterministic()
        torch.set_num_threads(threads)

    return restore


class WorkerSession(SeededSession):
    """Inside a replica process: run each listed test once per assigned run, and stream one
    result line per (test, run) to the channel file.

    A replica worker has one run; a sensitivity worker has many (one per perturbed seed plan),
    so ``import torch`` and collection are paid once per process, not once per run.
    """

    def __init__(self, config: pytest.Config, spec_path: Path, options: Options) -> None:
        spec = read_json(spec_path, schema=WORKER_SCHEMA, max_version=1)
        self.config = config
        self.options = options
        self.spec = ReplicaSpec.from_json(spec["replica"])
        self.base_seed = int(spec["base_seed"])
        self.nodeids = set(spec["nodeids"])
        self.channel = spec["channel"]
        self.runs = [RunSpec.from_json(run) for run in spec["runs"]]
        #: (test, run id) pairs already finished by an earlier, interrupted sweep.
        self.skip = {(str(n), str(r)) for n, r in spec.get("skip", [])}
        self.metrics_only = bool(spec.get("metrics_only", False))
        #: Serving: run the tests the parent writes to this request pipe, as they come
        #: (:mod:`repro_check.orchestration.serving`); None: run the listed tests and exit.
        self.requests: str | None = spec.get("requests")
        self._tear_down_first = False
        self.spill = SpillWriter(spec["spill_path"], int(spec["spill_bytes"]))
        self.guard = WorkerGuard(
            self.channel, spec.get("timeouts", {}), spec.get("timeout_file"), self._say
        )
        watch_parent()
        maybe_deterministic(bool(spec.get("deterministic", False)))
        if self.spec.num_threads is not None:
            import torch

            torch.set_num_threads(self.spec.num_threads)

    def root_seed(self, item: pytest.Item) -> int:
        if self.metrics_only:  # a sweep run: variants of one test share their seeds
            return sweep_root_seed(item, self.base_seed)
        return super().root_seed(item)

    def perturbations(self, item: pytest.Item) -> dict[str, int]:
        return dict(item.stash[run_key].perturbations)

    def bitflip(self, item: pytest.Item) -> int | None:
        return item.stash[run_key].bitflip

    def trace(self, item: pytest.Item) -> Any:
        """The run's own trace window, else -- for a replica of a test that allows known
        nondeterminism, which is expected to diverge -- the whole run: the parent can then
        name the op from these traces without rerunning anything."""
        trace = item.stash[run_key].trace
        if trace or self.metrics_only or not case_for(item, self.options).allowed:
            return trace
        return {
            "start_after": None,
            "stop_at": WHOLE_RUN,
            "path": str(Path(self.channel).parent / f"trace-{id_to_name(item.nodeid)}.jsonl"),
        }

    def replica_index(self, item: pytest.Item) -> int:
        return self.spec.index

    def resume_plan(self, item: pytest.Item) -> Any:
        from repro_check.orchestration.resume import plan_for

        return plan_for(item.stash[run_key].resume, item.nodeid)

    def make_recorder(self, item: pytest.Item) -> Any:
        inner = MetricRecorder() if self.metrics_only else Recorder(self.spill)
        return ProgressRecorder(inner, self.guard)

    def _say(self, message: str) -> None:
        """A line on the worker's real stderr (the parent keeps its tail), past pytest's
        capture."""
        capman = self.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else nullcontext():
            sys.stderr.write(f"repro-check worker: {message}\n")
            sys.stderr.flush()

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        def wanted(item: pytest.Item) -> bool:
            return item.nodeid in self.nodeids and any(
                (item.nodeid, run.run_id) not in self.skip for run in self.runs
            )

        self.guard.collected(self.nodeids, (item.nodeid for item in items))
        keep = [item for item in items if wanted(item)]
        dropped = [item for item in items if not wanted(item)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """A serving worker's loop: each requested test, in the order asked, until the parent
        says stop. Module and session fixtures stay set up between tests that share them and
        are torn down when a test outside them comes (or at the end), as in a normal run."""
        if self.requests is None:
            return None  # pytest's own loop over the listed tests
        from repro_check.orchestration.serving import follow_requests

        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            return None  # collection errors: pytest's loop reports them and stops
        items = {item.nodeid: item for item in session.items}
        for nodeid in follow_requests(self.requests):
            item = items.get(nodeid)
            if item is None:
                continue  # not collected: the parent knows from the collection event
            self._tear_down_first = True  # under this test's time limit (see below)
            keep_parents = ParentChain(item.listchain()[:-1])
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=keep_parents)
        return True

    def _tear_down_until(self, item: pytest.Item) -> None:
        """Tear down the fixtures of the previous test's scopes that ``item`` is outside of
        (pytest does this itself when it knows the next test; a serving worker cannot). It runs
        under ``item``'s time limit; an error is written to the worker's output, not charged
        to ``item`` (the parent's own session runs the same fixtures and reports it)."""
        try:
            item.session._setupstate.teardown_exact(item)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the next test must still run
            self._say(f"a fixture teardown before {item.nodeid} failed: {exc!r}")

    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool:
        from _pytest.runner import runtestprotocol

        keep_parents = ParentChain(item.listchain()[:-1])
        runs = [run for run in self.runs if (item.nodeid, run.run_id) not in self.skip]
        for position, run in enumerate(runs):
            item.stash[run_key] = run
            last = position == len(runs) - 1
            started = time.perf_counter()
            restore = apply_backend(run.backend)
            undo_variant = apply_settings(self.spec.settings)  # a backend variant's settings
            try:
                with self.guard.test(item.nodeid, run.run_id):
                    if self._tear_down_first:  # the previous test's scopes this one is outside
                        self._tear_down_first = False
                        self._tear_down_until(item)
                    reports = runtestprotocol(
                        item, log=False, nextitem=nextitem if last else keep_parents
                    )  # type: ignore[arg-type]
            finally:
                undo_variant()
                restore()
            context = item.stash.get(context_key, None)
            outcome, error = outcome_of(reports)
            if context and context.run_info.get("resume", {}).get("stopped"):
                outcome, error = "passed", ""  # stopped after its checkpoint, as asked
            record = context.close() if context else None
            result = ReplicaResult(
                item.nodeid,
                self.spec.index,
                outcome,
                error,
                time.perf_counter() - started,
                record=record if isinstance(record, RunRecord) else None,
                sources_used=sorted(context.sources_used) if context else [],
                environment={} if self.metrics_only else runtime_snapshot(),
                run_id=run.run_id,
                metrics=record if isinstance(record, dict) else {},
                predictions=context.predictions if context else None,
                run_info={
                    **(context.run_info if context else {}),
                    **({"backend": dict(run.backend)} if run.backend else {}),
                },
            )
            self.guard.send(result.to_json())
        return True

    def pytest_unconfigure(self) -> None:
        self.spill.close()
        self.guard.close()


def outcome_of(reports: list[pytest.TestReport]) -> tuple[str, str]:
    for report in reports:
        if report.failed:
            return "failed", f"[{report.when}] {report.longreprtext}"
    for report in reports:
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            return "skipped", str(reason)
    return "passed", ""


def runtime_snapshot() -> dict[str, Any]:
    """The environment snapshot of this process (packages left out: they are in the report's
    environment.json, and listing them costs more than a training step)."""
    from repro_check import environment

    return environment.capture(include_packages=False)


def runtime_summary(snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides the numbers of this process, in brief, with the full snapshot's hash."""
    from repro_check import environment

    snapshot = snapshot or runtime_snapshot()
    summary = environment.summary(snapshot)
    summary["env_vars"] = snapshot.get("env_vars", {})
    summary["snapshot_hash"] = environment.snapshot_hash(snapshot)
    return summary
