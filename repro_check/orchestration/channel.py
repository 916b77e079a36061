"""The channel from a worker process to the parent: a file of JSON lines, appended.

Per test and run a worker appends a ``start`` event, a ``step`` event after each recorded step,
and the result (a :class:`~repro_check.orchestration.replicas.ReplicaResult`); once, after
collection, a ``collected`` event naming the test ids it was asked for but did not collect. The
events are what the parent needs when the process dies or hangs: which test was running, since
when, and the last step it recorded.

Each line is one ``os.write`` on an ``O_APPEND`` descriptor -- no buffer that a dying process
could lose half of -- and the reader keeps an incomplete last line until its newline arrives.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENT = "event"
START, STEP, COLLECTED = "start", "step", "collected"


class ChannelWriter:
    """The worker's end: appends one line per :meth:`write`, unbuffered."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._fd: int | None = None

    def write(self, document: dict[str, Any]) -> None:
        data = (json.dumps(document, allow_nan=True) + "\n").encode("utf-8")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def event(self, kind: str, **fields: Any) -> None:
        self.write({EVENT: kind, **fields})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def append_channel(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    """Append one line to a JSON-lines file (a single write, so a reader never sees half a
    line as whole)."""
    writer = ChannelWriter(path)
    try:
        writer.write(document)
    finally:
        writer.close()


class ChannelReader:
    """Incremental reader of a JSON-lines file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        #: Lines that were not JSON (a line torn by a process killed mid-write): skipped.
        self.skipped = 0

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
        documents = []
        for line in lines:
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except ValueError:
                self.skipped += 1
                continue
            if isinstance(document, dict):
                documents.append(document)
        return documents


@dataclass
class Running:
    """What a worker process is doing, as its channel says: the test and run it started, when
    (the worker's clock), with which time limit, and the last step it recorded."""

    nodeid: str
    run: str
    started: float
    timeout: float | None
    step: int | None = None

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Running:
        timeout = event.get("timeout")
        return cls(
            str(event["nodeid"]),
            str(event["run"]),
            float(event["time"]),
            None if timeout is None else float(timeout),
        )
