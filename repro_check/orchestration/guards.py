"""The worker's half of fault isolation (the parent's half is :class:`.executor.ReplicaPool`).

Inside a replica process, :class:`WorkerGuard` writes the channel: a ``start`` event per test
and run, a ``step`` event after each recorded step, the results, and which asked-for tests were
not collected. It arms the test's time limit (``faulthandler`` prints every thread's stack to a
file and ends the process -- no Python code needs to run, so a test stuck in C code is stopped
too), makes the process exit when its parent is gone, and turns a full disk under the channel
into one clear line and a distinct exit status instead of a missing result.
"""

from __future__ import annotations

import faulthandler
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

from repro_check.core.paths import is_no_space, no_space_message
from repro_check.orchestration.channel import COLLECTED, START, STEP, ChannelWriter
from repro_check.orchestration.executor import EXIT_NO_SPACE
from repro_check.orchestration.processes import PARENT_PID_ENV

EXIT_ORPHANED = 70  # the parent died: nobody reads this worker's results any more


class WorkerGuard:
    def __init__(
        self,
        channel: str,
        timeouts: Mapping[str, float | None],
        timeout_file: str | None,
        say: Callable[[str], None],
    ) -> None:
        self.channel = ChannelWriter(channel)
        self.timeouts = dict(timeouts)
        self.timeout_file = timeout_file
        self.say = say
        self._timeout_handle: IO[str] | None = None

    # --- the channel
    def send(self, document: dict[str, Any]) -> None:
        """Write one line; a full disk ends the worker with a message saying so."""
        try:
            self.channel.write(document)
        except OSError as exc:
            if not is_no_space(exc):
                raise
            self.say(no_space_message(self.channel.path, "the results channel"))
            os._exit(EXIT_NO_SPACE)

    def collected(self, asked: Iterable[str], collected: Iterable[str]) -> None:
        names = set(collected)
        missing = sorted(set(asked) - names)
        self.send({"event": COLLECTED, "missing": missing, "count": len(set(asked) & names)})

    def step(self, step: int) -> None:
        self.send({"event": STEP, "step": int(step)})

    @contextmanager
    def test(self, nodeid: str, run: str) -> Iterator[None]:
        """One run of one test: announced, and stopped by the watchdog past its limit."""
        timeout = self.timeouts.get(nodeid)
        self.send(
            {"event": START, "nodeid": nodeid, "run": run, "time": time.time(), "timeout": timeout}
        )
        armed = timeout is not None and self._arm(timeout)
        try:
            yield
        finally:
            if armed:
                faulthandler.cancel_dump_traceback_later()

    def _arm(self, timeout: float) -> bool:
        if self.timeout_file is None:
            return False
        if self._timeout_handle is None:
            try:
                self._timeout_handle = open(self.timeout_file, "w")  # noqa: SIM115 - kept open
            except OSError:
                return False  # the parent's backstop still stops it
        faulthandler.dump_traceback_later(timeout, exit=True, file=self._timeout_handle)
        return True

    def close(self) -> None:
        self.channel.close()
        if self._timeout_handle is not None:
            self._timeout_handle.close()


class ProgressRecorder:
    """A recorder that tells the channel each step it recorded (what a timeout names)."""

    def __init__(self, inner: Any, guard: WorkerGuard) -> None:
        self.inner = inner
        self.guard = guard

    def record(self, step: int, state: Mapping[str, Any]) -> Any:
        recorded = self.inner.record(step, state)
        self.guard.step(step)
        return recorded

    def close(self) -> Any:
        return self.inner.close()


def watch_parent(interval: float = 1.0) -> None:
    """Exit when the process that started this worker is gone (its pid in PARENT_PID_ENV):
    the backstop where ``PR_SET_PDEATHSIG`` is not available."""
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected or not expected.isdigit():
        return
    parent = int(expected)
    if os.getppid() != parent:
        os._exit(EXIT_ORPHANED)

    def loop() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=loop, name="repro-parent-watch", daemon=True).start()


@contextmanager
def on_interpreter_exit(callback: Callable[[int], None]) -> Iterator[None]:
    """Call ``callback(status)`` before ``os._exit`` ends this process from inside the block
    (a test run in-process that exits the interpreter): the session can still write its report
    and say why it ends. Forked children (DataLoader workers) exit untouched."""
    real_exit = os._exit
    owner = os.getpid()

    def guarded_exit(status: int) -> None:
        if os.getpid() == owner:
            os._exit = real_exit  # once: a second exit from the callback is final
            try:
                callback(status)
            finally:
                real_exit(status)
        real_exit(status)

    os._exit = guarded_exit  # type: ignore[assignment]
    try:
        yield
    finally:
        if os._exit is guarded_exit:
            os._exit = real_exit
