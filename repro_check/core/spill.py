"""Spill files: the raw bytes of recorded tensors, for element-level diffs after the fact.

A replica keeps only fingerprints in memory; the bytes behind them go to one append-only file
per replica (no pickle, no per-tensor files), so that when two replicas disagree the comparison
can read back exactly the two tensors it needs. A tensor whose bytes were already spilled is not
written again (frozen weights, buffers, unchanged state). A byte budget bounds the file; past it,
replicas keep fingerprints only and diffs say that element-level detail is unavailable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class SpillRef:
    path: str
    offset: int
    nbytes: int


class SpillWriter:
    """Append-only raw tensor store with a byte budget and de-duplication by digest."""

    def __init__(self, path: str | os.PathLike[str], budget_bytes: int) -> None:
        self.path = str(path)
        self.budget_bytes = budget_bytes
        self.written = 0
        self.exhausted = False
        self._by_digest: dict[tuple[str, str, tuple[int, ...]], SpillRef] = {}
        self._file = None

    def write(self, key: tuple[str, str, tuple[int, ...]], data: np.ndarray) -> SpillRef | None:
        """Store ``data`` (a flat uint8 array) unless stored before; None past the budget."""
        known = self._by_digest.get(key)
        if known is not None:
            return known
        if self.written + data.nbytes > self.budget_bytes:
            self.exhausted = True
            return None
        if self._file is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across records
        offset = self._file.tell()
        self._file.write(memoryview(data))
        self.written += data.nbytes
        ref = SpillRef(self.path, offset, data.nbytes)
        self._by_digest[key] = ref
        return ref

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_spilled(ref: SpillRef, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Read one spilled tensor back (a fresh CPU tensor)."""
    import torch

    raw = np.fromfile(ref.path, dtype=np.uint8, count=ref.nbytes, offset=ref.offset)
    if raw.nbytes != ref.nbytes:
        raise OSError(f"spill file {ref.path} is truncated at offset {ref.offset}")
    flat = torch.from_numpy(raw.copy())
    return flat.view(getattr(torch, dtype)).reshape(shape)
