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
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

#: How often an idle serving worker looks for a new request (seconds).
POLL_S = 0.005


def append_requests(path: Path, nodeids: Iterable[str]) -> None:
    """Ask the serving worker behind ``path`` to run ``nodeids`` (after what it was asked
    before). One ``write`` of whole lines: the worker never reads half a test id."""
    data = "".join(f"{nodeid}\n" for nodeid in nodeids).encode()
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def stop_serving(path: Path) -> None:
    """The empty line: the worker finishes its session (fixtures torn down) and exits."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, b"\n")
    finally:
        os.close(fd)


def follow_requests(path: str | Path, poll_s: float = POLL_S) -> Iterator[str]:
    """Inside a serving worker: each requested test id, as the parent appends it, until the
    empty line. (The worker dies with its parent, so a parent that never stops it is no
    orphan-maker: see :func:`repro_check.orchestration.guards.watch_parent`.)"""
    pending = b""
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read()
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if not line:
                    return
                yield line.decode("utf-8")
            if not chunk:
                time.sleep(poll_s)


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
        self.in_flight.discard((index, nodeid))
        self.dispatch()

    def dispatch(self) -> None:
        while self._waiting and len(self.in_flight) < self.concurrency:
            pair = self._waiting.popleft()
            self.in_flight.add(pair)
            self._send(*pair)

    def outstanding(self, index: int) -> list[str]:
        """The tests sent to replica ``index`` and not finished: what a restarted process must
        be asked again."""
        return [nodeid for i, nodeid in self.in_flight if i == index]
