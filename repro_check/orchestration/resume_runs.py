"""Running resume checks: two fresh processes for a whole batch of tests, not two per test.

The first process runs every test of the batch straight and then stopped after its step k (the
stop run writes the checkpoint); when it has finished them all, a second, fresh process resumes
every test from its checkpoint. Process start-up (``import torch``) is paid twice per session
whatever the number of tests, and the second process's start-up overlaps the first one's work:
it starts at once and serves (:mod:`.serving`), asked for each test only when every checkpoint
exists. Under pytest-xdist each test is a batch of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from repro_check.orchestration.executor import ReplicaPool
from repro_check.orchestration.launcher import WorkerLauncher
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec
from repro_check.orchestration.resume import RESUME, STOP, STRAIGHT, resume_runs


class ResumeBatch:
    """The resume checks of ``checks`` (test id -> (k, checkpoint path)), run by ``launcher``
    with the process settings of ``spec``."""

    def __init__(
        self,
        launcher: WorkerLauncher,
        spec: ReplicaSpec,
        checks: Mapping[str, tuple[int, str]],
        tag: str = "resume",
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.launcher = launcher
        self.spec = spec
        self.checks = dict(checks)
        self.tag = tag
        self.on_wait = on_wait
        self._runs = resume_runs(self.checks)
        self._pools: list[ReplicaPool] = []
        self._lock = threading.Lock()
        self._got: dict[tuple[int, str, str], ReplicaResult] = {}
        for _, path in self.checks.values():  # a stale checkpoint must not stand in for a new one
            for stale in Path(path).parent.glob("step-*"):
                if stale.suffix in (".safetensors", ".json"):
                    stale.unlink(missing_ok=True)
        self._start(0)
        self._start(1, serve=True)  # waits, started, until the checkpoints exist
        self._first_done = False

    def _start(self, part: int, serve: bool = False) -> ReplicaPool:
        runs = self._runs[part]
        nodeids = list(self.checks)
        job = self.launcher.job(nodeids, self.spec, f"{self.tag}/{part}", runs=runs, serve=serve)
        pool = ReplicaPool(
            [job],
            ThreadPoolExecutor(max_workers=1),
            run_jobs={run.run_id: self.spec.index for run in runs},
            relaunch=self.launcher.relaunch,
        )
        pool.start()
        self._pools.append(pool)
        return pool

    def _wait(self, part: int, nodeid: str, role: str) -> ReplicaResult:
        """A run's result (kept: a pool hands each result out once)."""
        key = (part, nodeid, role)
        if key not in self._got:
            on_wait = self.on_wait or getattr(self.launcher, "on_wait", None)  # progress
            self._got[key] = self._pools[part].result(nodeid, f"resume-{role}", on_wait)
        return self._got[key]

    def results(self, nodeid: str) -> list[ReplicaResult]:
        """The straight, stop and resumed runs of one test of the batch, in that order."""
        straight, stop = self._wait(0, nodeid, STRAIGHT), self._wait(0, nodeid, STOP)
        with self._lock:
            if not self._first_done:
                for other in self.checks:  # the first process must be done with every test
                    self._wait(0, other, STRAIGHT)
                    self._wait(0, other, STOP)
                self._pools[0].close()
                self._first_done = True
        if not Path(self.checks[nodeid][1]).with_suffix(".json").is_file():
            # the stop run left no checkpoint: the verdict says why from the first two runs
            return [straight, stop, ReplicaResult(nodeid, self.spec.index, "passed")]
        return [straight, stop, self._wait(1, nodeid, RESUME)]

    def close(self) -> None:
        for pool in self._pools:
            pool.close()
