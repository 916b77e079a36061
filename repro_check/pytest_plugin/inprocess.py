"""In-process replicas (``--repro-mode=inprocess``): the test's pytest protocol run N times in
this process, tearing down only function-scoped fixtures between replicas.

The first N-1 replicas run silently inside ``pytest_runtest_protocol``; the last one is pytest's
own logged run, and the verdict is made when its call phase ends. At most two replicas' records
are held at a time (replica 0 and the first one that differs from it).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import pytest

from repro_check.core.record import Recorder
from repro_check.core.spill import SpillWriter
from repro_check.orchestration.replicas import ReplicaResult
from repro_check.pytest_plugin.items import context_key, replica_key, started_key
from repro_check.pytest_plugin.worker import ParentChain, outcome_of, runtime_snapshot


class InProcessReplicas:
    def __init__(self, replicas: int, spill_folder: Path, spill_bytes: int) -> None:
        self.replicas = replicas
        self.spill_folder = spill_folder
        self.spill_bytes = spill_bytes
        #: Per test: replica 0's result, and the first replica that differs from it.
        self._kept: dict[str, list[ReplicaResult]] = {}
        self._spills: dict[int, SpillWriter] = {}

    @property
    def last(self) -> int:
        return self.replicas - 1

    def recorder(self, index: int) -> Recorder:
        """One spill file per replica index, shared by the tests of the session."""
        if index not in self._spills:
            path = self.spill_folder / f"inprocess-{index}.bin"
            self._spills[index] = SpillWriter(path, self.spill_bytes)
        return Recorder(self._spills[index])

    def run_all_but_last(self, item: pytest.Item) -> None:
        """Run replicas 0..N-2 silently; the caller lets pytest run (and log) the last one."""
        from _pytest.runner import runtestprotocol

        keep_parents = ParentChain(item.listchain()[:-1])
        self._kept[item.nodeid] = []
        for index in range(self.last):
            item.stash[replica_key] = index
            started = time.perf_counter()
            reports = runtestprotocol(item, log=False, nextitem=keep_parents)  # type: ignore[arg-type]
            self._keep(item.nodeid, self._result(item, index, reports, started))
        item.stash[replica_key] = self.last
        item.stash[started_key] = time.perf_counter()

    def finish(self, item: pytest.Item, error: str) -> list[ReplicaResult]:
        """The last replica's call phase ended (``error``: its traceback, if it raised): the
        results to judge."""
        started = item.stash.get(started_key, time.perf_counter())
        last = self._result(item, self.last, [], started)
        if error:
            last.outcome, last.error = "failed", error
        self._keep(item.nodeid, last)
        return self._kept.pop(item.nodeid, [])

    def _keep(self, nodeid: str, result: ReplicaResult) -> None:
        """A later replica identical to replica 0 adds nothing to the verdict but its time."""
        from repro_check.core.compare import compare_runs

        kept = self._kept[nodeid]
        if len(kept) >= 2:
            kept[-1].duration += result.duration
            return
        if (
            kept
            and result.outcome == "passed"
            and kept[0].outcome == "passed"
            and kept[0].record is not None
            and result.record is not None
            and compare_runs(kept[0].record, result.record).identical
        ):
            kept[0].duration += result.duration
            return
        kept.append(result)

    @staticmethod
    def _result(
        item: pytest.Item, index: int, reports: list[pytest.TestReport], started: float
    ) -> ReplicaResult:
        context = item.stash.get(context_key, None)
        outcome, error = outcome_of(reports)
        return ReplicaResult(
            item.nodeid,
            index,
            outcome,
            error,
            time.perf_counter() - started,
            record=context.close() if context else None,
            sources_used=sorted(context.sources_used) if context else [],
            environment=runtime_snapshot() if index == 0 else {},
            run_info=context.run_info if context else {},
        )

    def close(self) -> None:
        for spill in self._spills.values():
            spill.close()


def last_replica_error() -> str:
    """The traceback of the exception being handled, as a replica's error text."""
    return traceback.format_exc(limit=-8)
