"""Serving replicas (pytest-xdist): the request file and the queue that decides which replica
runs which test when, without starting pytest."""

from __future__ import annotations

import threading
import time

from repro_check.orchestration.serving import (
    RequestQueue,
    append_requests,
    follow_requests,
    stop_serving,
)


def test_follow_requests_yields_each_test_as_appended_until_stop(tmp_path):
    path = tmp_path / "requests.txt"
    path.touch()
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follow_requests(path, poll_s=0.001)))
    reader.start()
    append_requests(path, ["t.py::a", "t.py::b[x y]"])
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert seen == ["t.py::a", "t.py::b[x y]"]  # read while the file is still open
    append_requests(path, ["t.py::c"])
    stop_serving(path)
    append_requests(path, ["t.py::after-stop"])
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert seen == ["t.py::a", "t.py::b[x y]", "t.py::c"]


def test_follow_requests_never_yields_half_a_line(tmp_path):
    path = tmp_path / "requests.txt"
    path.write_bytes("t.py::héllo".encode())  # no newline yet: not a request
    stream = follow_requests(path, poll_s=0.001)
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(next(stream)))
    reader.start()
    time.sleep(0.05)
    assert result == []
    with open(path, "ab") as handle:
        handle.write(b"[1]\n")
    reader.join(timeout=10)
    assert result == ["t.py::héllo[1]"]


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
