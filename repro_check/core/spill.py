"""Spill files: the raw bytes of recorded tensors, for element-level diffs after the fact.

A replica keeps only fingerprints in memory; the bytes behind them go to one file per replica
(no pickle, no per-tensor files), so that when two replicas disagree the comparison can read
back exactly the two tensors it needs. A tensor whose bytes were already spilled is not written
again (frozen weights, buffers, unchanged state). A byte budget bounds the file; past it,
replicas keep fingerprints only and diffs say that element-level detail is unavailable.

Writing is off the training step's path: a record reserves each new tensor's place in the file
at once (so its :class:`SpillRef` is known), and bytes that are a private copy are written by
a background thread, those of many small records handed over together, adjacent places in one
system call. :meth:`SpillWriter.flush` waits for them; bytes that are a live tensor's own
memory are written before ``put`` returns.
"""

from __future__ import annotations

import collections
import functools
import operator
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.fingerprint import frozen_constructor

if TYPE_CHECKING:
    import torch

#: Bytes queued for the background writer before a record waits for it (bounds the memory that
#: queued copies hold when the disk is slower than training).
MAX_PENDING_BYTES = 128 * 2**20
#: Private copies are handed to the background writer once the buffers they keep alive reach
#: this size (or at flush): one hand-over, and one system call, for many small records, where
#: a hand-over per record cost more of the training thread than writing itself.
HANDOFF_BYTES = 2**20
_IOV_MAX = 512  # buffers per pwritev call (the system limit is 1024 on Linux)
_BUFFER, _START, _ALIASED = (operator.itemgetter(i) for i in range(3))

SpillKey = tuple[str, str, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class SpillRef:
    path: str
    offset: int
    nbytes: int


_new_ref = frozen_constructor(SpillRef)


class SpillWriter:
    """Raw tensor store with a byte budget and de-duplication by digest."""

    def __init__(self, path: str | os.PathLike[str], budget_bytes: int) -> None:
        self.path = str(path)
        self.budget_bytes = budget_bytes
        self.written = 0  # bytes reserved (and, once flushed, written) by this writer
        self.exhausted = False
        self._by_digest: dict[SpillKey, SpillRef] = {}
        self._file: Any = None
        self._end = 0  # where the next tensor goes
        self._pending: collections.deque[tuple[Future[None], int]] = collections.deque()
        self._pending_bytes = 0
        #: Private copies not yet handed over: (place, buffer, offset in the buffer).
        self._queued: list[tuple[SpillRef, Any, int]] = []
        self._queued_bytes = 0  # the memory they keep alive (whole buffers, not just slices)

    def reserve(self, key: SpillKey, nbytes: int) -> tuple[SpillRef | None, bool]:
        """Where the tensor ``key`` (digest, dtype, shape) is stored, and whether the caller
        must now :meth:`put` its bytes there; ``(None, False)`` past the budget."""
        known = self._by_digest.get(key)
        if known is not None:
            return known, False
        if self.written + nbytes > self.budget_bytes:
            self.exhausted = True
            return None, False
        if self._file is None:
            self._open()
        ref = _new_ref(self.path, self._end, nbytes)
        self._end += nbytes
        self.written += nbytes
        self._by_digest[key] = ref
        return ref, True

    def reserve_many(
        self, keys: Sequence[SpillKey], sizes: Sequence[int]
    ) -> tuple[list[SpillRef | None], list[int]]:
        """:meth:`reserve` for each key in order (one record's), none once the budget is
        exhausted: every key's place (None past the budget) and the positions whose bytes the
        caller must now :meth:`put`."""
        count = len(keys)
        known = self._by_digest
        refs: list[SpillRef | None] = [None] * count
        fresh: list[int] = []
        if self.exhausted:
            return refs, fresh
        refs = list(map(known.get, keys))  # what was stored before: all of it, often
        if None not in refs:
            return refs, fresh
        end, written = self._end, self.written
        for position in range(refs.index(None), count):
            if refs[position] is not None:
                continue
            key = keys[position]
            ref = known.get(key)  # the same bytes twice in one record: reserved just now
            if ref is None:
                nbytes = sizes[position]
                if written + nbytes > self.budget_bytes:
                    self.exhausted = True
                    refs[position:] = [None] * (count - position)
                    break
                if self._file is None:
                    self._open()
                    end = self._end
                ref = known[key] = _new_ref(self.path, end, nbytes)
                end += nbytes
                written += nbytes
                fresh.append(position)
            refs[position] = ref
        self._end, self.written = end, written
        return refs, fresh

    def put(self, writes: list[tuple[SpillRef, Any, bool]]) -> None:
        """Write reserved places: ``(ref, bytes, aliased)``. Bytes that alias a live tensor
        are written now; private copies on the background thread, gathered across records
        (:data:`HANDOFF_BYTES`)."""
        self.put_spans([w[0] for w in writes], [(data, 0, aliased) for _, data, aliased in writes])

    def put_spans(self, refs: list[SpillRef], spans: list[tuple[Any, int, bool]]) -> None:
        """:meth:`put` for bytes that lie at ``(buffer, offset, aliased)`` (one record's small
        tensors share one buffer), sliced where they are written: not a step per tensor on
        the training thread."""
        if any(map(_ALIASED, spans)):
            now = [(r, b, o) for r, (b, o, aliased) in zip(refs, spans, strict=True) if aliased]
            try:
                _write_at(self._file.fileno(), now)
            except OSError as exc:
                raise self._write_error(exc) from None
            refs = [r for r, (_, _, aliased) in zip(refs, spans, strict=True) if not aliased]
            spans = [span for span in spans if not span[2]]
        if not refs:
            return
        later = list(zip(refs, map(_BUFFER, spans), map(_START, spans), strict=True))
        if not hasattr(os, "pwritev"):  # no background writes: see _write_run
            try:
                _write_at(self._file.fileno(), later)
            except OSError as exc:
                raise self._write_error(exc) from None
            return
        self._queued += later
        owners = dict(zip(map(id, map(_BUFFER, spans)), map(_BUFFER, spans), strict=True))
        self._queued_bytes += sum(memoryview(owner).nbytes for owner in owners.values())
        if self._queued_bytes >= HANDOFF_BYTES:
            self._hand_over()

    def _hand_over(self) -> None:
        later, nbytes = self._queued, self._queued_bytes
        self._queued, self._queued_bytes = [], 0
        while self._pending and self._pending_bytes + nbytes > MAX_PENDING_BYTES:
            self._wait_oldest()
        self._pending.append((_writer().submit(_write_sorted, self._file.fileno(), later), nbytes))
        self._pending_bytes += nbytes

    def write(self, key: SpillKey, data: np.ndarray) -> SpillRef | None:
        """Store ``data`` (a flat uint8 array) unless stored before; None past the budget."""
        ref, fresh = self.reserve(key, data.nbytes)
        if fresh:
            self.put([(ref, data, True)])  # type: ignore[list-item]
        return ref

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o666)
        self._file = open(fd, "wb", buffering=0)  # noqa: SIM115 - kept open across records
        self._end = max(self._end, os.fstat(fd).st_size)  # never over earlier contents

    def _wait_oldest(self) -> None:
        future, nbytes = self._pending.popleft()
        self._pending_bytes -= nbytes
        try:
            future.result()
        except OSError as exc:
            raise self._write_error(exc) from None

    def _write_error(self, exc: OSError) -> OSError:
        return OSError(
            exc.errno,
            f"could not write the spill file {self.path}: {exc.strerror}; free disk space "
            f"or lower the spill budget (--repro-spill-mb)",
        )

    def flush(self) -> None:
        """Wait until every reserved byte is in the file (raises the first write error)."""
        if self._queued:
            self._hand_over()
        while self._pending:
            self._wait_oldest()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def _offset(write: tuple[SpillRef, Any, int]) -> int:
    return write[0].offset


def _write_sorted(fd: int, writes: list[tuple[SpillRef, Any, int]]) -> None:
    """:func:`_write_at` in file order: the places of successive records join up."""
    writes.sort(key=_offset)
    _write_at(fd, writes)


def _write_at(fd: int, writes: list[tuple[SpillRef, Any, int]]) -> None:
    """Write each ``(place, buffer, offset in it)`` at its place: runs of adjacent places in
    one call each."""
    run: list[memoryview] = []
    start = end = 0
    for ref, buffer, offset in writes:
        view = memoryview(buffer).cast("B")[offset : offset + ref.nbytes]
        if run and (ref.offset != end or len(run) == _IOV_MAX):
            _write_run(fd, run, start)
            run = []
        if not run:
            start = end = ref.offset
        run.append(view)
        end += ref.nbytes
    if run:
        _write_run(fd, run, start)


def _write_run(fd: int, views: list[memoryview], offset: int) -> None:
    total = sum(len(v) for v in views)
    if hasattr(os, "pwritev"):
        done = os.pwritev(fd, views, offset)
    else:  # no positional writes (Windows): every write is synchronous, so seeking is safe
        os.lseek(fd, offset, os.SEEK_SET)
        done = os.write(fd, b"".join(views))
    if done < total:  # a short write: finish the rest
        rest = b"".join(views)[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done) if hasattr(os, "pwrite") else os.write(fd, rest)
            done += n
            rest = rest[n:]


@functools.lru_cache(maxsize=1)
def _writer() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="repro-spill")


def read_spilled(ref: SpillRef, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Read one spilled tensor back (a fresh CPU tensor)."""
    import torch

    if ref.nbytes == 0:  # an empty tensor (torch.empty(0, 5)): nothing was written
        return torch.empty(shape, dtype=getattr(torch, dtype))
    raw = np.fromfile(ref.path, dtype=np.uint8, count=ref.nbytes, offset=ref.offset)
    if raw.nbytes != ref.nbytes:
        raise OSError(f"spill file {ref.path} is truncated at offset {ref.offset}")
    flat = torch.from_numpy(raw.copy())
    return flat.view(getattr(torch, dtype)).reshape(shape)
