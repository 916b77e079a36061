"""Replica processes: fresh interpreters that run marked tests and stream back their records.

One worker process per replica per session runs every marked test (``import torch`` alone costs
seconds, so a process per test would cost more than the training) and appends its events and
one result line per finished test to its channel file (:mod:`.channel`). The parent reads the
channels as results arrive. Processes are launched through a ``concurrent.futures.Executor`` --
a local thread pool by default -- so a distributed engine can take its place.

A fault stays with the test it happened in: when a worker dies (segfault, ``os._exit``, an
interrupt) or overruns a test's time limit, that test fails with the signal or exit status, the
last step it recorded and the last lines of the process's output, and the pool starts a fresh
worker for the tests it had not finished. Workers die with the parent (``PR_SET_PDEATHSIG`` on
Linux, and a watchdog in the worker), so killing the parent leaves no orphans.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repro_check.core.paths import is_no_space, no_space_message
from repro_check.orchestration.channel import (
    COLLECTED,
    EVENT,
    START,
    STEP,
    ChannelReader,
    Running,
    append_channel,
)
from repro_check.orchestration.processes import (
    STDERR_TAIL_LINES,
    death_signal,
    describe_exit,
    process_env,
    read_available,
    stack_top,
    summarize_output,
)
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec, RunSpec
from repro_check.orchestration.serving import RequestQueue, RequestSender

if TYPE_CHECKING:
    from repro_check.orchestration.warm import WarmInterpreter

__all__ = ["ReplicaPool", "WorkerJob", "append_channel", "describe_exit"]

#: A worker that could not write its channel (disk full) exits with this status (ENOSPC's number).
EXIT_NO_SPACE = 28
TAIL_BYTES = 64 * 1024  # of a worker's output kept in memory for its failure message


Pair = tuple[str, str]  # (test id, run key)


@dataclass
class WorkerJob:
    """One worker process: its command, environment and files, and the (test, run) pairs it
    is responsible for (what a restarted worker must still do)."""

    spec: ReplicaSpec
    command: list[str]
    env: dict[str, str]
    cwd: str
    channel: Path
    output: Path  # stdout and stderr, interleaved (a copy; the tail is also kept in memory)
    nodeids: tuple[str, ...] = ()
    runs: tuple[RunSpec, ...] = ()
    skip: frozenset[Pair] = frozenset()
    metrics_only: bool = False
    tag: str = ""
    attempt: int = 0  # 0: the first process; n: the n-th restart
    #: Where the worker's own watchdog writes the stacks of a test that overran its limit.
    timeout_file: Path | None = None
    #: A serving worker's request file (:mod:`.serving`): it runs the tests appended there,
    #: not its whole list. None: it runs ``nodeids`` in order and exits.
    requests: Path | None = None
    #: A warm interpreter reserved for this job (:mod:`.warm`), launched by ``run``.
    warm: WarmInterpreter | None = field(default=None, repr=False)
    started_warm: bool = False  # whether the process is that interpreter
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    cancelled: bool = False
    _tail: bytes = field(default=b"", repr=False)
    _output_error: str = field(default="", repr=False)

    def pairs(self) -> set[Pair]:
        runs = [run.run_id for run in self.runs] or [str(self.spec.index)]
        return {(nodeid, run) for nodeid in self.nodeids for run in runs} - self.skip

    def run(self) -> int:
        if self.cancelled:
            self._drop_warm()
            return -signal.SIGTERM
        warm, self.warm = self.warm, None
        launched = warm.launch(self.command) if warm is not None else None
        self.started_warm = launched is not None
        self.process = launched or subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=process_env(self.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=death_signal(),  # noqa: PLW1509 - one prctl call, resolved beforehand
        )
        if self.cancelled:  # closed while starting
            self.process.kill()
        self._pump()
        return self.process.wait()

    def _pump(self) -> None:
        """Copy the worker's output to its file and keep the tail in memory (a full disk must
        not cost the message its last lines), until the worker exits."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        os.set_blocking(fd, False)
        try:
            out = open(self.output, "ab")  # noqa: SIM115 - closed below
        except OSError as exc:
            out, self._output_error = None, f"output not saved: {exc.strerror}"
        try:
            while True:
                finished = self.process.poll() is not None
                data, eof = read_available(fd)
                if data:
                    self._tail = (self._tail + data)[-TAIL_BYTES:]
                    out = self._copy(out, data)
                if eof or finished:  # after the exit, what was in the pipe has been read
                    return
                if not data:
                    select.select([fd], [], [], 0.2)
        finally:
            self.process.stdout.close()
            if out is not None:
                with contextlib.suppress(OSError):
                    out.close()

    def _copy(self, out: Any, data: bytes) -> Any:
        if out is None:
            return None
        try:
            out.write(data)
            out.flush()
            return out
        except OSError as exc:
            self._output_error = (
                no_space_message(self.output, "the replica's output")
                if is_no_space(exc)
                else f"output not saved: {exc.strerror}"
            )
            with contextlib.suppress(OSError):
                out.close()
            return None

    def terminate(self) -> None:
        self.cancelled = True
        self._drop_warm()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()

    def kill(self) -> None:
        """SIGKILL now (a hung test, or the parent going down); never waits."""
        self.cancelled = True
        self._drop_warm()
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                process.kill()

    def _drop_warm(self) -> None:
        warm, self.warm = self.warm, None
        if warm is not None:  # reserved, not launched yet
            warm.discard()

    def output_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        text = self._tail.decode("utf-8", "replace")
        if not text:
            with contextlib.suppress(OSError):
                with open(self.output, "rb") as handle:
                    handle.seek(max(0, handle.seek(0, os.SEEK_END) - TAIL_BYTES))
                    text = handle.read().decode("utf-8", "replace")
        shown = summarize_output(text, lines)
        if self._output_error:
            shown.append(f"({self._output_error})")
        return "\n".join(shown) or "(no output)"

    def timeout_report(self) -> str:
        """The stacks the worker's watchdog wrote when a test overran its limit ("" if none)."""
        if self.timeout_file is None:
            return ""
        try:
            return self.timeout_file.read_text(errors="replace").strip()
        except OSError:
            return ""


#: Starts a fresh worker for the pairs a dead one left: (the dead job, pairs done) -> new job.
Relaunch = Callable[[WorkerJob, set[Pair]], WorkerJob]

_LIVE_POOLS: weakref.WeakSet[ReplicaPool] = weakref.WeakSet()


def kill_all_workers() -> None:
    """SIGKILL every worker of every open pool (the parent is going down: no waiting)."""
    for pool in list(_LIVE_POOLS):
        for job in list(pool.jobs.values()):
            job.kill()


def cleanup_on_sigterm(cleanup: Callable[[], None]) -> Callable[[], None]:
    """On SIGTERM run ``cleanup`` (kill the workers, remove the session folder), then die of
    SIGTERM as the default action would. Installed only over the default action, from the
    main thread; returns the function that uninstalls it."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        try:
            cleanup()
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)

    def uninstall() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return uninstall


@dataclass
class _Slot:
    """One worker's place in the pool, across restarts."""

    job: WorkerJob
    reader: ChannelReader
    future: Future[int] | None = None
    running: Running | None = None
    missing: set[str] = field(default_factory=set)  # asked for, not collected
    collected: int | None = None
    done: set[Pair] = field(default_factory=set)
    killed: str = ""  # why the parent killed the process ("" if it did not)
    crashes_in_a_row: int = 0
    gave_up: str = ""  # why no further restart happens
    #: A serving worker's request file, held open by the parent (:mod:`.serving`).
    sender: RequestSender | None = None

    @classmethod
    def of(cls, job: WorkerJob, **kw: Any) -> _Slot:
        sender = RequestSender(job.requests) if job.requests is not None else None
        return cls(job, ChannelReader(job.channel), sender=sender, **kw)


class ReplicaPool:
    """Runs worker jobs through an executor and hands out per-test results as they stream in;
    a worker that dies in a test fails that test and is restarted for the rest."""

    #: How often a waiting parent reads the channels: first after ~1 ms (a tiny test's result
    #: is often that close, and serving replicas wait for it to ask the next one), then less
    #: and less often, up to this (a long test is not disturbed by the polling).
    POLL_SECONDS = 0.02
    #: How long past a test's limit the parent waits for the worker's own watchdog (which
    #: prints where the test hung) before it kills the process itself.
    KILL_GRACE_S = 30.0
    #: A worker that crashes in this many tests in a row is not restarted again (a fault
    #: outside the tests, e.g. in a session fixture, would otherwise cost a start per test).
    MAX_CRASHES_IN_A_ROW = 3

    def __init__(
        self,
        jobs: Sequence[WorkerJob],
        executor: Executor | None = None,
        run_jobs: dict[str, int] | None = None,
        relaunch: Relaunch | None = None,
        clock: Callable[[], float] = time.time,
        concurrency: int | None = None,
    ) -> None:
        """``concurrency``: for serving workers, how many work at once (default: all)."""
        self._slots = {job.spec.index: _Slot.of(job) for job in jobs}
        #: Which job runs which run (by run key); replicas: run "i" is job i.
        self.run_jobs = run_jobs or {str(index): index for index in self._slots}
        self._runs_of: dict[int, list[str]] = {index: [] for index in self._slots}
        for run_key, index in self.run_jobs.items():
            self._runs_of[index].append(run_key)
        self._executor = executor or ThreadPoolExecutor(
            max_workers=len(jobs), thread_name_prefix="repro-replica"
        )
        self._owns_executor = executor is None
        self._relaunch = relaunch
        self._clock = clock
        self._pending: dict[Pair, ReplicaResult] = {}
        self._lock = threading.Lock()
        serving = any(job.requests is not None for job in jobs)
        self._requests = (
            RequestQueue(concurrency or len(jobs), self._send_request) if serving else None
        )
        _LIVE_POOLS.add(self)

    @property
    def jobs(self) -> dict[int, WorkerJob]:
        """The current process of each worker (a restarted one replaces the dead one)."""
        return {index: slot.job for index, slot in self._slots.items()}

    def start(self) -> None:
        for slot in self._slots.values():
            slot.future = self._executor.submit(slot.job.run)

    def result(
        self, nodeid: str, run: int | str, on_wait: Callable[[], None] | None = None
    ) -> ReplicaResult:
        """Block until run ``run`` (a replica index or run id) has finished test ``nodeid``,
        or failed it by dying, hanging or not collecting it; ``on_wait`` is called while
        waiting (progress)."""
        key = (nodeid, str(run))
        index = self.run_jobs[str(run)]
        if self._requests is not None and not self._requests.asked(index, nodeid):
            with self._lock:
                self.request(nodeid)
        delay = 0.001
        while True:
            with self._lock:
                found = self._poll(index, key)
            if found is not None:
                return found
            if on_wait is not None:
                on_wait()
            time.sleep(delay)
            delay = min(2 * delay, self.POLL_SECONDS)

    def request(self, nodeid: str) -> None:
        """Serving workers: ask every worker that holds ``nodeid`` to run it (in worker
        order, as many at once as the pool's concurrency allows)."""
        assert self._requests is not None, "only serving workers take requests"
        holders = [i for i, slot in self._slots.items() if nodeid in slot.job.nodeids]
        self._requests.ask((index, nodeid) for index in holders)

    def _send_request(self, index: int, nodeid: str) -> None:
        sender = self._slots[index].sender
        assert sender is not None
        sender.send([nodeid])

    def _finished(self, index: int, nodeid: str) -> None:
        if self._requests is None:
            return
        self._requests.finished(index, nodeid)
        slot = self._slots[index]
        asked = self._requests.asked
        if (
            slot.sender is not None
            and self._requests.idle(index)
            and all(asked(index, held) for held in slot.job.nodeids)
        ):
            slot.sender.stop()  # it has run all it holds: let it end beside the others' work

    def _poll(self, index: int, key: Pair) -> ReplicaResult | None:
        if self._requests is not None:  # serving: what others finish frees the turn this waits for
            for other, nodeid in sorted(self._requests.in_flight):
                for run in self._runs_of[other]:
                    other_key = (nodeid, run)
                    if other_key != key and other_key not in self._pending:
                        found = self._poll_slot(other, other_key)
                        if found is not None:
                            self._pending[other_key] = found
        return self._poll_slot(index, key)

    def _poll_slot(self, index: int, key: Pair) -> ReplicaResult | None:
        slot = self._slots[index]
        self._drain(slot)
        if key in self._pending:
            return self._pending.pop(key)
        assert slot.future is not None, "start() the pool first"
        if not slot.future.done():
            # it goes on with what it collected (a serving worker waits even with nothing)
            if key[0] in slot.missing and (slot.collected or slot.sender is not None):
                return self._not_collected(slot, key)
            self._enforce_timeout(slot)
            return None
        self._drain(slot)  # lines written just before the exit
        if key in self._pending:
            return self._pending.pop(key)
        if key[0] in slot.missing:
            return self._not_collected(slot, key)
        if slot.running is not None:
            self._fail_running_test(index, slot)
            restarted = self._restart(index, slot)
            if key in self._pending:
                return self._pending.pop(key)
            if restarted:
                return None
        return self._crashed(slot, key)

    def _drain(self, slot: _Slot) -> None:
        for document in slot.reader.poll():
            kind = document.get(EVENT)
            if kind == STEP:
                if slot.running is not None:
                    slot.running.step = int(document["step"])
            elif kind == START:
                slot.running = Running.from_event(document)
            elif kind == COLLECTED:
                slot.missing = set(document.get("missing", []))
                slot.collected = int(document.get("count", 0))
            elif kind is None:
                result = ReplicaResult.from_json(document)
                self._pending[(result.nodeid, result.key)] = result
                slot.done.add((result.nodeid, result.key))
                slot.running = None
                slot.crashes_in_a_row = 0
                self._finished(slot.job.spec.index, result.nodeid)

    def _enforce_timeout(self, slot: _Slot) -> None:
        """The parent's backstop: kill a worker whose own watchdog did not end an overrun."""
        running = slot.running
        if running is None or running.timeout is None or slot.killed:
            return
        if self._clock() - running.started > running.timeout + self.KILL_GRACE_S:
            slot.killed = "timeout"
            slot.job.kill()

    def _fail_running_test(self, index: int, slot: _Slot) -> None:
        """The worker died (or was killed) in a test: that test, and only it, fails."""
        running = slot.running
        assert running is not None and slot.future is not None
        slot.running = None
        slot.crashes_in_a_row += 1
        job = slot.job
        label = f"replica {job.spec.index}"
        report = job.timeout_report()
        if slot.killed == "timeout" or report:
            where = (
                f"at step {running.step} (last recorded)"
                if running.step is not None
                else "before its first recorded step"
            )
            limit = f"{running.timeout:g}" if running.timeout is not None else "?"
            error = (
                f"timed out after {limit} s in {label} {where} ({job.spec.describe()}); the "
                f"process was stopped and the remaining tests run in a fresh one. Raise the "
                f"limit with --repro-timeout=SECONDS (ini repro_timeout) or "
                f"@pytest.mark.repro(timeout=SECONDS).\n"
                + (
                    f"Where it was (most recent call first):\n{stack_top(report)}"
                    if report
                    else f"Last lines of its output:\n{job.output_tail()}"
                )
            )
        else:
            returncode = _returncode(slot.future)
            how = describe_exit(returncode) if returncode is not None else "could not be run"
            step = f", after recording step {running.step}" if running.step is not None else ""
            error = (
                f"{label} process {how} before finishing this test ({job.spec.describe()}){step};"
                f" the remaining tests run in a fresh process.\n"
                f"Last lines of its output:\n{job.output_tail()}"
            )
        key = (running.nodeid, running.run)
        self._finished(index, running.nodeid)
        self._pending[key] = ReplicaResult(
            running.nodeid,
            index,
            "crashed",
            error=error,
            run_id=running.run if running.run != str(index) else "",
        )
        slot.done.add(key)

    def _restart(self, index: int, slot: _Slot) -> bool:
        """A fresh worker for the pairs the dead one had not finished (False: none started)."""
        remaining = slot.job.pairs() - slot.done
        if not remaining or self._relaunch is None or slot.job.cancelled:
            return False
        if _returncode(slot.future) == EXIT_NO_SPACE:
            slot.gave_up = "it could not write its results: no space left on the device"
            return False
        if slot.crashes_in_a_row >= self.MAX_CRASHES_IN_A_ROW:
            slot.gave_up = (
                f"it crashed in {slot.crashes_in_a_row} tests in a row, so it was not "
                f"restarted again"
            )
            return False
        job = self._relaunch(slot.job, set(slot.done))
        restarted = _Slot.of(job, done=slot.done, crashes_in_a_row=slot.crashes_in_a_row)
        if slot.sender is not None:
            slot.sender.close()
        if restarted.sender is not None and self._requests is not None:
            restarted.sender.send(self._requests.outstanding(index))
        restarted.future = self._executor.submit(job.run)
        self._slots[index] = restarted
        return True

    def _crashed(self, slot: _Slot, key: Pair) -> ReplicaResult:
        """The worker is gone and will not run ``key``: say why, with its last words."""
        nodeid, run = key
        job = slot.job
        self._finished(job.spec.index, nodeid)
        assert slot.future is not None
        exc = slot.future.exception()
        how = f"could not start ({exc})" if exc else describe_exit(slot.future.result())
        why = f"; {slot.gave_up}" if slot.gave_up else ""
        return ReplicaResult(
            nodeid,
            job.spec.index,
            "crashed",
            error=f"replica {job.spec.index} process {how} before finishing this test "
            f"({job.spec.describe()}){why}.\nLast lines of its output:\n{job.output_tail()}",
            run_id=run if run != str(job.spec.index) else "",
        )

    def _not_collected(self, slot: _Slot, key: Pair) -> ReplicaResult:
        nodeid, run = key
        job = slot.job
        slot.done.add(key)
        self._finished(job.spec.index, nodeid)
        what = (
            "it collected no test at all"
            if not slot.collected
            else f"it collected {slot.collected} of the tests asked for, not this one"
        )
        return ReplicaResult(
            nodeid,
            job.spec.index,
            "crashed",
            error=f"replica {job.spec.index} did not collect this test ({job.spec.describe()}):"
            f" {what}. The test id differs in a fresh process (parametrize ids built from "
            f"object reprs or set order?) or its module failed to import there.\n"
            f"Last lines of its output:\n{job.output_tail()}",
            run_id=run if run != str(job.spec.index) else "",
        )

    def stop(self) -> None:
        """The session asks for nothing more: serving workers finish their sessions now
        (teardown, exit) without the parent waiting, so that their exit overlaps what it still
        does (its summary, its reports). :meth:`close` waits for them."""
        for slot in self._slots.values():
            if slot.sender is not None:
                slot.sender.stop()

    def close(self) -> None:
        try:
            busy = {index for index, _ in self._requests.in_flight} if self._requests else set()
            self.stop()
            _await_serving(list(self._slots.values()), busy)
        finally:  # interrupted while waiting: the workers still go (and cleanup still sees them)
            for slot in self._slots.values():
                slot.job.terminate()
            _LIVE_POOLS.discard(self)
        if self._owns_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)


#: How long serving workers get to tear their fixtures down and exit when the pool closes.
STOP_GRACE_S = 10.0


def _await_serving(slots: Sequence[_Slot], busy: set[int]) -> None:
    """Wait for serving workers, told to stop, to finish their sessions (fixture teardown,
    spill flushed). Idle ones get a grace period; one still in a test (``busy``: the session
    was interrupted, or stopped at its first failure) is terminated by the caller at once."""
    serving = [slot for slot in slots if slot.sender is not None]
    deadline = time.monotonic() + STOP_GRACE_S
    for slot in serving:
        if slot.future is not None and slot.job.spec.index not in busy:
            with contextlib.suppress(Exception):
                slot.future.result(timeout=max(0.0, deadline - time.monotonic()))
        slot.sender.close()  # type: ignore[union-attr]


def _returncode(future: Future[int] | None) -> int | None:
    if future is None or not future.done() or future.exception() is not None:
        return None
    return future.result()


def python_executable() -> str:
    return sys.executable
