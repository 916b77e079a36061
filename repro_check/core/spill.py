"""Spill files: the raw bytes of recorded tensors, for element-level diffs after the fact.

A replica keeps only fingerprints in memory; the bytes behind them go to one file per replica
(no pickle, no per-tensor files), so that when two replicas disagree the comparison can read
back exactly the two tensors it needs. A tensor whose bytes were already spilled is not written
again (frozen weights, buffers, unchanged state). A byte budget bounds the file; past it,
replicas keep fingerprints only and diffs say that element-level detail is unavailable.

Writing is off the training step's path: a record reserves each new tensor's place in the file
at once (so its :class:`SpillRef` is known), and bytes that are a private copy are written by
a background thread, all of one record in one system call. :meth:`SpillWriter.flush` waits for
them; bytes that are a live tensor's own memory are written before ``put`` returns.
"""

from __future__ import annotations

import collections
import functools
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
#: A record's private copies smaller than this are written at once: a write to the page cache
#: costs less than handing it to the background thread (and its share of the GIL).
SYNC_BYTES = 256 * 2**10
_IOV_MAX = 512  # buffers per pwritev call (the system limit is 1024 on Linux)

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
        refs: list[SpillRef | None] = [None] * len(keys)
        fresh: list[int] = []
        known = self._by_digest
        for position, key in enumerate(keys):
            if self.exhausted:
                break
            ref = known.get(key)
            if ref is None:
                ref, new = self.reserve(key, sizes[position])
                if new:
                    fresh.append(position)
            refs[position] = ref
        return refs, fresh

    def put(self, writes: list[tuple[SpillRef, Any, bool]]) -> None:
        """Write reserved places: ``(ref, bytes, aliased)``. Bytes that alias a live tensor
        are written now; private copies on the background thread."""
        now = [(ref, data) for ref, data, aliased in writes if aliased]
        later = [(ref, data) for ref, data, aliased in writes if not aliased]
        if not self._pending and sum(ref.nbytes for ref, _ in later) < SYNC_BYTES:
            now, later = now + later, []  # cheaper than handing them over to the thread
        fd = self._file.fileno() if writes else -1
        if later and not hasattr(os, "pwritev"):
            now, later = now + later, []
        if now:
            try:
                _write_at(fd, now)
            except OSError as exc:
                raise self._write_error(exc) from None
        if later:
            nbytes = sum(ref.nbytes for ref, _ in later)
            while self._pending and self._pending_bytes + nbytes > MAX_PENDING_BYTES:
                self._wait_oldest()
            self._pending.append((_writer().submit(_write_at, fd, later), nbytes))
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
        while self._pending:
            self._wait_oldest()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def _write_at(fd: int, writes: list[tuple[SpillRef, Any]]) -> None:
    """Write each buffer at its reserved offset: runs of adjacent places in one call each."""
    run: list[memoryview] = []
    start = end = 0
    for ref, data in writes:
        view = memoryview(data).cast("B")
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
