"""Serving replicas: worker processes that run tests on request rather than from a fixed list.

Under pytest-xdist, the controller hands tests to each xdist worker one batch at a time, so an
xdist worker cannot give its replicas the list of tests up front. Starting replicas for every
test would pay ``import torch`` and collection per test and replica; instead each xdist worker
starts its replicas once, over every marked test, and they *serve*: each waits for test ids
appended to its request file (one per line; an empty line means stop) and runs them in that
order, keeping module and session fixtures between tests as a normal session does.

The parent decides how many replicas work at once (:class:`RequestQueue`): a serving process
exists for every replica from the start, idle until asked, so that the number of busy
processes -- not the number of started ones -- is what shares the cores.
"""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

#: How often an idle serving worker looks for a new request where requests come through a
#: plain file (no named pipes: Windows); through a named pipe it sleeps until one comes.
POLL_S = 0.005


def make_request_file(path: Path) -> Path:
    """Create a serving worker's request file: a named pipe where the system has them (an
    idle worker then blocks in ``read`` and takes no CPU from the one that trains: polling
    wake-ups were measured to slow a two-thread training step down), else a plain file."""
    if hasattr(os, "mkfifo"):
        os.mkfifo(path, 0o600)
    else:
        path.touch()
    return path


class RequestSender:
    """The parent's end of one serving worker's request file, open for the pool's lifetime:
    a pipe keeps what was written only while one end is open, and the worker may not have
    opened its end yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # O_RDWR: opening a pipe's write end alone blocks until a reader comes (Linux allows
        # both ends); non-blocking: a dead worker's full pipe must not hang the parent.
        if stat.S_ISFIFO(os.stat(path).st_mode):
            self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def send(self, nodeids: Iterable[str]) -> None:
        """Ask for ``nodeids`` (after what was asked before): one ``write`` of whole lines,
        so the worker never reads half a test id."""
        self._write("".join(f"{nodeid}\n" for nodeid in nodeids).encode())

    def stop(self) -> None:
        """The empty line: the worker finishes its session (fixtures torn down) and exits."""
        self._write(b"\n")

    def _write(self, data: bytes) -> None:
        if not data or self._fd < 0:
            return
        try:
            written = os.write(self._fd, data)
        except (BlockingIOError, BrokenPipeError):
            return  # full: the worker is gone (its death is noticed) or stuck (its time limit)
        if written != len(data):  # only past PIPE_BUF (4 KiB): a test id that long
            raise OSError(
                f"could not hand {data[:80]!r}... to the replica through {self.path}: only "
                f"{written} of {len(data)} bytes fit in the pipe"
            )

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def follow_requests(path: str | Path, poll_s: float = POLL_S) -> Iterator[str]:
    """Inside a serving worker: each requested test id, as the parent writes it, until the
    empty line or the parent closing the pipe. (The worker dies with its parent, so a parent
    that never stops it leaves no orphan: :func:`repro_check.orchestration.guards.watch_parent`.)"""
    pending = b""
    fd = os.open(path, os.O_RDONLY)
    piped = stat.S_ISFIFO(os.fstat(fd).st_mode)
    try:
        while True:
            chunk = os.read(fd, 65536)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if not line:
                    return
                yield line.decode("utf-8")
            if not chunk:
                if piped:
                    return  # every writer closed: the parent is done with this worker
                time.sleep(poll_s)
    finally:
        os.close(fd)


class RequestQueue:
    """Which serving replica runs which test when: at most ``concurrency`` (replica, test)
    pairs are in flight; the rest wait, in the order asked."""

    def __init__(self, concurrency: int, send: Callable[[int, str], None]) -> None:
        self.concurrency = max(1, concurrency)
        self._send = send
        self._waiting: deque[tuple[int, str]] = deque()
        self._asked: set[tuple[int, str]] = set()
        #: Sent and not finished (the parent has not read a result for it yet).
        self.in_flight: set[tuple[int, str]] = set()

    def ask(self, pairs: Iterable[tuple[int, str]]) -> None:
        """Queue (replica index, test id) pairs not asked before, then send what fits."""
        for pair in pairs:
            if pair not in self._asked:
                self._asked.add(pair)
                self._waiting.append(pair)
        self.dispatch()

    def asked(self, index: int, nodeid: str) -> bool:
        return (index, nodeid) in self._asked

    def finished(self, index: int, nodeid: str) -> None:
        """The parent has its result (also when it answered without the worker: a crash, a
        test the worker did not collect): never send it after that."""
        self.in_flight.discard((index, nodeid))
        if (index, nodeid) in self._waiting:
            self._waiting.remove((index, nodeid))
        self.dispatch()

    def idle(self, index: int) -> bool:
        """Nothing sent to replica ``index`` is unfinished and nothing waits to be sent."""
        return all(i != index for i, _ in self.in_flight) and all(
            i != index for i, _ in self._waiting
        )

    def dispatch(self) -> None:
        while self._waiting and len(self.in_flight) < self.concurrency:
            pair = self._waiting.popleft()
            self.in_flight.add(pair)
            self._send(*pair)

    def outstanding(self, index: int) -> list[str]:
        """The tests sent to replica ``index`` and not finished: what a restarted process must
        be asked again."""
        return [nodeid for i, nodeid in self.in_flight if i == index]
