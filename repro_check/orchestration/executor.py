"""Replica processes: fresh interpreters that run marked tests and stream back their records.

One worker process per replica per session runs every marked test (``import torch`` alone costs
seconds, so a process per test would cost more than the training) and appends one JSON line per
finished test to its channel file. The parent reads the channels as results arrive. Processes
are launched through a ``concurrent.futures.Executor`` -- a local thread pool by default -- so a
distributed engine can take its place without touching the rest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec

#: Variables that would make a worker pytest do something else than its job.
SCRUBBED_ENV = (
    "PYTEST_ADDOPTS",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_CURRENT_TEST",
)
STDERR_TAIL_LINES = 30


class ChannelReader:
    """Incremental reader of a JSON-lines file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def append_channel(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    """Append one result line (a single write, so a reader never sees half a line as whole)."""
    line = (json.dumps(document, allow_nan=True) + "\n").encode("utf-8")
    with open(path, "ab") as handle:
        handle.write(line)
        handle.flush()


@dataclass
class WorkerJob:
    """One replica's worker process: its command, environment and files."""

    spec: ReplicaSpec
    command: list[str]
    env: dict[str, str]
    cwd: str
    channel: Path
    stdout: Path
    stderr: Path
    process: subprocess.Popen[bytes] | None = None
    cancelled: bool = False

    def run(self) -> int:
        if self.cancelled:
            return -signal.SIGTERM
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
            return self.process.wait()

    def terminate(self) -> None:
        self.cancelled = True
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()

    def stderr_tail(self) -> str:
        for path in (self.stderr, self.stdout):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                return "\n".join(lines[-STDERR_TAIL_LINES:])
        return "(no output)"


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def worker_env(spec: ReplicaSpec, extra_pythonpath: Sequence[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(spec.env)
    if spec.num_threads is not None:
        env["OMP_NUM_THREADS"] = str(spec.num_threads)
    paths = [*extra_pythonpath, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ReplicaPool:
    """Runs worker jobs through an executor and hands out per-test results as they stream in."""

    POLL_SECONDS = 0.02

    def __init__(
        self,
        jobs: Sequence[WorkerJob],
        executor: Executor | None = None,
        run_jobs: dict[str, int] | None = None,
    ) -> None:
        self.jobs = {job.spec.index: job for job in jobs}
        #: Which job runs which run (by run key); replicas: run "i" is job i.
        self.run_jobs = run_jobs or {str(index): index for index in self.jobs}
        self._executor = executor or ThreadPoolExecutor(
            max_workers=len(jobs), thread_name_prefix="repro-replica"
        )
        self._owns_executor = executor is None
        self._futures: dict[int, Future[int]] = {}
        self._readers = {index: ChannelReader(job.channel) for index, job in self.jobs.items()}
        self._pending: dict[tuple[str, str], ReplicaResult] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        for index, job in self.jobs.items():
            self._futures[index] = self._executor.submit(job.run)

    def result(self, nodeid: str, run: int | str) -> ReplicaResult:
        """Block until run ``run`` (a replica index or run id) has finished test ``nodeid``,
        or its process has died."""
        key = (nodeid, str(run))
        index = self.run_jobs[str(run)]
        while True:
            with self._lock:
                self._drain(index)
                if key in self._pending:
                    return self._pending.pop(key)
                future = self._futures[index]
                if future.done():
                    self._drain(index)
                    if key in self._pending:
                        return self._pending.pop(key)
                    return self._crashed(nodeid, index, str(run), future)
            time.sleep(self.POLL_SECONDS)

    def _drain(self, index: int) -> None:
        for document in self._readers[index].poll():
            result = ReplicaResult.from_json(document)
            self._pending[(result.nodeid, result.key)] = result

    def _crashed(self, nodeid: str, index: int, run: str, future: Future[int]) -> ReplicaResult:
        job = self.jobs[index]
        exc = future.exception()
        how = f"could not start ({exc})" if exc else describe_exit(future.result())
        return ReplicaResult(
            nodeid,
            index,
            "crashed",
            error=f"replica {index} process {how} before finishing this test "
            f"({job.spec.describe()}).\nLast lines of its output:\n{job.stderr_tail()}",
            run_id=run if run != str(index) else "",
        )

    def close(self) -> None:
        for job in self.jobs.values():
            job.terminate()
        if self._owns_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)


def python_executable() -> str:
    return sys.executable
