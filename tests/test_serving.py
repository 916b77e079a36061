"""Serving replicas: the request file and the queue that decides which replica runs which test
when, without starting pytest."""

from __future__ import annotations

import os
import threading
import time

import pytest

from repro_check.orchestration.serving import (
    RequestQueue,
    RequestSender,
    follow_requests,
    make_request_file,
)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


@pytest.fixture(params=["pipe", "file"])
def request_path(request, tmp_path):
    """A named pipe (POSIX) and the plain file used where there are none."""
    path = tmp_path / "requests"
    if request.param == "pipe":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no named pipes on this system")
        return make_request_file(path)
    path.touch()
    return path


def test_follow_requests_yields_each_test_as_sent_until_stop(request_path):
    sender = RequestSender(request_path)  # opened before the worker: nothing sent is lost
    sender.send(["t.py::a", "t.py::b[x y]"])
    seen: list[str] = []
    stream = follow_requests(request_path, poll_s=0.001)
    reader = threading.Thread(target=lambda: seen.extend(stream))
    reader.start()
    wait_for(lambda: len(seen) == 2)
    assert seen == ["t.py::a", "t.py::b[x y]"]  # while the worker still waits for more
    sender.send(["t.py::c"])
    sender.stop()
    sender.send(["t.py::after-stop"])
    reader.join(timeout=10)
    sender.close()
    assert not reader.is_alive()
    assert seen == ["t.py::a", "t.py::b[x y]", "t.py::c"]


def test_a_worker_never_reads_half_a_test_id(request_path):
    sender = RequestSender(request_path)
    sender._write("t.py::héllo".encode())  # no newline yet: not a request
    stream = follow_requests(request_path, poll_s=0.001)
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(next(stream)))
    reader.start()
    time.sleep(0.05)
    assert result == []
    sender._write(b"[1]\n")
    reader.join(timeout=10)
    sender.close()
    assert result == ["t.py::héllo[1]"]


def test_the_parent_closing_the_pipe_ends_the_worker_loop(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    path = make_request_file(tmp_path / "requests")
    sender = RequestSender(path)
    sender.send(["t.py::a"])
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follow_requests(path)))
    reader.start()
    wait_for(lambda: seen == ["t.py::a"])
    sender.close()  # no stop line: the parent is gone
    reader.join(timeout=10)
    assert not reader.is_alive() and seen == ["t.py::a"]


def test_sending_to_a_dead_workers_full_pipe_does_not_block(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    sender = RequestSender(make_request_file(tmp_path / "requests"))
    for _ in range(2000):  # ~200 KB: more than a pipe holds, and nobody reads
        sender.send(["t.py::" + "x" * 90])
    sender.stop()
    sender.close()


def test_queue_sends_at_most_concurrency_pairs_in_the_order_asked():
    sent: list[tuple[int, str]] = []
    queue = RequestQueue(1, lambda index, nodeid: sent.append((index, nodeid)))
    queue.ask([(0, "a"), (1, "a"), (2, "a")])
    assert sent == [(0, "a")]
    queue.ask([(0, "a")])  # asked before: not again
    assert sent == [(0, "a")]
    queue.finished(0, "a")
    assert sent == [(0, "a"), (1, "a")]
    queue.ask([(0, "b")])  # waits behind (2, "a")
    queue.finished(1, "a")
    assert sent == [(0, "a"), (1, "a"), (2, "a")]
    queue.finished(2, "a")
    assert sent == [(0, "a"), (1, "a"), (2, "a"), (0, "b")]
    assert queue.asked(0, "b") and not queue.asked(1, "b")


def test_queue_with_room_sends_everything_and_knows_what_a_restart_must_redo():
    sent: list[tuple[int, str]] = []
    queue = RequestQueue(2, lambda index, nodeid: sent.append((index, nodeid)))
    queue.ask([(0, "a"), (1, "a")])
    assert sent == [(0, "a"), (1, "a")]
    assert queue.outstanding(0) == ["a"] and queue.outstanding(1) == ["a"]
    queue.finished(0, "a")
    assert queue.outstanding(0) == []
    assert RequestQueue(0, lambda *_: None).concurrency == 1  # never zero
