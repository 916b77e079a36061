"""Tensor fingerprints: a digest of the raw bytes, the dtype, the shape and value statistics.

Two fingerprints are equal exactly when the tensors have the same dtype, the same shape and the
same bytes (bitwise: ``-0.0 != 0.0``, NaN payloads count). The digest names its algorithm:

* ``xxh3_64`` -- CPU tensors: xxh3 of the raw bytes, 16 hex digits. It runs near memory
  bandwidth, so fingerprinting costs about as much as one copy of the tensor (DESIGN.md).
* ``mix64`` -- CUDA tensors: computed on the device, one batched pass of torch ops over all
  the tensors of a record, so that only digests and statistics cross to the host
  (:mod:`repro_check.core.device_hash`). Written ``mix64:<16 hex digits>``, it never equals an
  xxh3 digest, so a GPU's bits are never compared with a CPU's by mistake
  (:meth:`Fingerprint.comparable`).

Floating tensors also get :class:`~repro_check.core.tensor_stats.TensorStats` (min, max, mean,
norm, NaN/inf counts and a fixed sample of elements, in float64): what a comparison across
environments needs where bitwise equality cannot be expected, kept for every recorded step
whatever the spill budget.

Records hold many small tensors, where per-tensor Python cost dominates, so
:func:`fingerprint_many` works per dtype rather than per tensor: the small tensors of one dtype
are copied into one buffer, hashed slice by slice, and summarised with one numpy reduction per
statistic over all of them. Large tensors are hashed in place, their statistics computed beside
the hash on a background thread.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import operator
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

from repro_check.core.device_hash import DEVICE_ALGORITHM, DEVICE_PREFIX, device_fingerprints
from repro_check.core.tensor_stats import (
    NAN,
    NEGINF,
    POSINF,
    StatsRow,
    TensorStats,
    concatenated,
    frozen_constructor,
    has_stats,
    host_stats,
    large_stats,
    new_stats,
    real_flat,
    scalar_stats,
    stats_json,
)

if TYPE_CHECKING:
    import torch

CPU_ALGORITHM = "xxh3_64"
#: Tensors at least this large are hashed in place, alone (below, they share one buffer).
LARGE_BYTES = 2**20
#: Small tensors of one dtype share buffers of at most this size.
BATCH_BYTES = 64 * 2**20
#: Above this size a tensor's statistics are computed beside its hash (below, a thread hop
#: costs more than it saves).
OVERLAP_BYTES = 4 * 2**20


@dataclass(frozen=True, slots=True, init=False)
class Fingerprint:
    """What repro-check keeps of a recorded tensor (the tensor itself is dropped or spilled).

    Equality and hash are bitwise identity: ``digest``, ``dtype``, ``shape`` and the NaN/inf
    counts (``inf`` counts both signs; a complex element counts once). ``stats`` is derived
    from the same bits and takes no part in it. Digests of different algorithms
    (:attr:`algorithm`: ``xxh3_64`` on CPU, ``mix64`` on CUDA) never compare equal: use
    :meth:`comparable` before reading a digest mismatch as a difference of bits, and compare
    ``stats`` across them.

    ``stats`` is a :class:`TensorStats` for floating and complex tensors (every recorded step
    and key has one, whatever the spill budget); None for integer and bool tensors, for
    fingerprints made with ``count_nonfinite=False`` and for those read from files written
    before statistics existed. Records keep it as a plain tuple of its fields and build the
    dataclass on access: a tuple of numbers is invisible to Python's cyclic garbage collector,
    whose full passes over a long run's fingerprints would otherwise cost more than the
    statistics themselves.
    """

    digest: str
    dtype: str  # "float32", "int64", ... (torch dtype name without the "torch." prefix)
    shape: tuple[int, ...]
    nan: int = 0  # number of NaN elements (floating and complex dtypes only)
    inf: int = 0  # number of +-inf elements
    _stats: Any = field(default=None, compare=False, repr=False)  # TensorStats, its fields

    def __init__(
        self,
        digest: str,
        dtype: str,
        shape: tuple[int, ...],
        nan: int = 0,
        inf: int = 0,
        stats: TensorStats | None = None,
    ) -> None:
        for name, value in zip(
            ("digest", "dtype", "shape", "nan", "inf", "_stats"),
            (digest, dtype, shape, nan, inf, stats),
            strict=True,
        ):
            object.__setattr__(self, name, value)

    @property
    def stats(self) -> TensorStats | None:
        stats = self._stats
        if stats is None or type(stats) is TensorStats:
            return stats
        return new_stats(*stats)

    @property
    def numel(self) -> int:
        n = 1
        for side in self.shape:
            n *= side
        return n

    @property
    def algorithm(self) -> str:
        """``xxh3_64`` or ``mix64``: fingerprints of different algorithms are not comparable."""
        return DEVICE_ALGORITHM if self.digest.startswith(DEVICE_PREFIX) else CPU_ALGORITHM

    def comparable(self, other: Fingerprint) -> bool:
        """Whether equal bits would give equal digests (the same digest algorithm)."""
        return self.algorithm == other.algorithm

    def same_bits(self, other: Fingerprint) -> bool:
        return (self.digest, self.dtype, self.shape) == (other.digest, other.dtype, other.shape)

    def to_json(self) -> list[Any]:
        """``[digest, dtype, shape, nan, inf]``, plus ``TensorStats.to_json()`` when present."""
        data: list[Any] = [self.digest, self.dtype, list(self.shape), self.nan, self.inf]
        stats = self._stats
        if stats is not None:
            data.append(stats_json(stats if type(stats) is tuple else stats._row()))
        return data

    @classmethod
    def from_json(cls, data: list[Any]) -> Fingerprint:
        if not isinstance(data, list) or len(data) not in (5, 6):
            raise ValueError(f"a fingerprint is a list of 5 or 6 items, got {data!r}")
        digest, dtype, shape, nan, inf = data[:5]
        stats = TensorStats.from_json(data[5]) if len(data) == 6 else None
        return cls(str(digest), str(dtype), tuple(int(s) for s in shape), int(nan), int(inf), stats)


_new_fingerprint = frozen_constructor(Fingerprint)


# ------------------------------------------------------------------------------ bytes


@functools.lru_cache(maxsize=64)
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def raw_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's elements as a flat uint8 numpy view (a copy only when it must be one).

    Non-contiguous tensors are made contiguous, GPU tensors are copied to the host, quantized
    tensors give their integer representation, and conjugate/negative views are resolved first so
    the bytes are those of the values the tensor represents.
    """
    return _host_bytes(tensor)[0]


def _host_bytes(tensor: torch.Tensor) -> tuple[np.ndarray, bool]:
    """``raw_bytes`` and whether they are the tensor's own memory (not a private copy)."""
    import torch

    t = tensor.detach()
    if (
        t.device.type == "cpu"
        and t.layout == torch.strided
        and t.is_contiguous()
        and not (t.is_quantized or t.is_conj() or t.is_neg())
    ):  # the fast path: no copy, no resolve
        return _flat_bytes(t), True
    if t.is_quantized:
        t = t.int_repr()
    if t.layout != torch.strided:
        raise TypeError(f"cannot fingerprint a {t.layout} tensor; convert it with .to_dense()")
    if t.device.type != "cpu":
        t = t.cpu()
    return _flat_bytes(t.resolve_conj().resolve_neg().contiguous()), False


def _flat_bytes(t: torch.Tensor) -> np.ndarray:
    """A contiguous tensor's bytes. Tensors of 0 or 1 elements count as contiguous whatever
    their strides, and ``view(uint8)`` refuses a stride other than 1: copy those (tiny)."""
    import torch

    flat = t.reshape(-1)
    if t.numel() <= 1 and flat.stride() != (1,):
        flat = flat.clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8).numpy()


def fingerprint_bytes(data: Any) -> str:
    """xxh3_64 of anything supporting the buffer protocol, as 16 hex digits."""
    return xxhash.xxh3_64_hexdigest(data)


def nonfinite_counts(tensor: torch.Tensor) -> tuple[int, int]:
    """(NaN count, inf count) of a tensor's elements (a complex element counts once)."""
    import torch

    t = tensor.detach()
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0, 0
    total = t.sum().item()  # finite: no NaN or inf, at memory speed and without allocating
    if math.isfinite(abs(total)):
        return 0, 0
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


# ------------------------------------------------------------------------------ scalars


_scalar_cache: dict[tuple[str, bytes], Fingerprint] = {}


def fingerprint_scalar(value: Any) -> tuple[Fingerprint, bytes] | None:
    """The fingerprint and bytes of a Python or numpy bool, integer or float: equal to those of
    the 0-d tensor ``record`` makes of it (bool, int64, float64), computed without torch and
    memoised (optimizer hyper-parameters repeat every step). None for other types."""
    if isinstance(value, (bool, np.bool_)):
        dtype, data = "bool", b"\x01" if value else b"\x00"
    elif isinstance(value, (int, np.integer)):
        try:
            dtype, data = "int64", struct.pack("=q", int(value))
        except struct.error:
            raise OverflowError(f"the integer {value} does not fit in int64") from None
    elif isinstance(value, (float, np.floating)):
        dtype, data = "float64", struct.pack("=d", float(value))
    else:
        return None
    known = _scalar_cache.get((dtype, data))
    if known is None:
        stats = scalar_stats(float(value)) if dtype == "float64" else None
        nan, inf = (stats[NAN], stats[POSINF] + stats[NEGINF]) if stats else (0, 0)
        known = _new_fingerprint(fingerprint_bytes(data), dtype, (), nan, inf, stats)
        if len(_scalar_cache) >= 4096:
            _scalar_cache.clear()
        _scalar_cache[(dtype, data)] = known
    return known, data


# ------------------------------------------------------------------------------ batches


class FingerprintBatch:
    """The fingerprints of several tensors, made in one pass, and their bytes on demand."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        import torch

        self.tensors = list(tensors)
        self.fingerprints: list[Fingerprint] = [None] * len(self.tensors)  # type: ignore[list-item]
        #: Where each tensor's host bytes start, when known: (a buffer, an offset into it); and
        #: whether they are the tensor's own memory (then they must be written before the
        #: tensor changes) rather than a private copy. Sliced only when asked for.
        self._bytes: list[tuple[np.ndarray, int] | None] = [None] * len(self.tensors)
        self._aliased: list[bool] = [False] * len(self.tensors)
        strided = torch.strided
        self.nbytes = [
            t.nbytes if t.layout is strided else t.numel() * t.element_size() for t in self.tensors
        ]

    def host_bytes(self, indices: Sequence[int]) -> list[tuple[np.ndarray, bool]]:
        """(bytes, aliased) of the chosen tensors; device tensors cross to the host here, one
        copy per dtype, and only the chosen ones."""
        nbytes = self.nbytes
        return [
            (raw[offset : offset + nbytes[i]], aliased)
            for (raw, offset, aliased), i in zip(self.host_spans(indices), indices, strict=True)
        ]

    def host_spans(self, indices: Sequence[int]) -> list[tuple[np.ndarray, int, bool]]:
        """Where the chosen tensors' host bytes lie, unsliced: (a buffer, an offset into it,
        aliased); tensors hashed together share a buffer, one after another (adjacent spans
        can be written as one)."""
        import torch

        missing: dict[torch.dtype, list[int]] = {}
        for i in indices:
            if self._bytes[i] is None:
                missing.setdefault(self.tensors[i].dtype, []).append(i)
        for group in missing.values():
            host = concatenated([self.tensors[i] for i in group]).cpu()
            raw = host.view(torch.uint8).numpy()
            offset = 0
            for i in group:
                self._bytes[i] = (raw, offset)
                offset += self.nbytes[i]
        located, aliased = self._bytes, self._aliased
        return [(*located[i], aliased[i]) for i in indices]  # type: ignore[misc]


def fingerprint_many(
    tensors: Sequence[torch.Tensor], *, count_nonfinite: bool = True, algorithm: str | None = None
) -> FingerprintBatch:
    """Fingerprint tensors of any dtype, shape, layout of strides and device in one pass.

    ``count_nonfinite=False`` skips NaN/inf counts and statistics. ``algorithm`` forces
    ``mix64`` on CPU tensors (the device algorithm, to check a GPU's digests on the host); by
    default CPU tensors get ``xxh3_64`` and CUDA tensors ``mix64``.
    """
    import torch

    if algorithm not in (None, CPU_ALGORITHM, DEVICE_ALGORITHM):
        raise ValueError(f"unknown fingerprint algorithm {algorithm!r}")
    batch = FingerprintBatch(tensors)
    on_host: dict[torch.dtype, list[int]] = {}
    alone: list[int] = []
    on_device: dict[torch.device, list[int]] = {}
    strided = torch.strided
    nbytes = batch.nbytes
    with torch.no_grad():
        for i, t in enumerate(batch.tensors):
            if t.layout is not strided or t.is_quantized:
                alone.append(i)
            elif t.is_cpu and algorithm != DEVICE_ALGORITHM:
                if nbytes[i] < LARGE_BYTES:
                    on_host.setdefault(t.dtype, []).append(i)
                else:
                    alone.append(i)
            elif t.is_cuda or t.is_cpu:
                on_device.setdefault(t.device, []).append(i)
            else:
                alone.append(i)
        for dtype, group in on_host.items():
            for part in _parts(group, nbytes, BATCH_BYTES):
                _fingerprint_host_group(batch, part, dtype, count_nonfinite)
        for i in alone:
            _fingerprint_alone(batch, i, count_nonfinite)
        for group in on_device.values():
            found = device_fingerprints([batch.tensors[i] for i in group], count_nonfinite)
            for i, (digest, row) in zip(group, found, strict=True):
                tensor = batch.tensors[i]
                name = dtype_name(tensor.dtype)
                batch.fingerprints[i] = _with_counts(digest, name, tensor, row)
    return batch


def _parts(group: list[int], nbytes: list[int], limit: int) -> list[list[int]]:
    if sum(map(nbytes.__getitem__, group)) <= limit:
        return [group]
    parts: list[list[int]] = [[]]
    size = 0
    for i in group:
        if parts[-1] and size + nbytes[i] > limit:
            parts.append([])
            size = 0
        parts[-1].append(i)
        size += nbytes[i]
    return parts


def _fingerprint_host_group(
    batch: FingerprintBatch, group: list[int], dtype: torch.dtype, count_nonfinite: bool
) -> None:
    """Small CPU tensors of one dtype: one copy into one buffer, xxh3 per slice, stats of all
    of them by one numpy reduction per statistic. Per-tensor steps are ``map`` over builtins
    (no Python frame per tensor): records hold hundreds of small tensors."""
    import torch

    members = list(map(batch.tensors.__getitem__, group))
    nbytes = list(map(batch.nbytes.__getitem__, group))
    buffer = concatenated(members)
    native = _numpy_views().get(dtype)  # numpy's own view of the buffer: cheaper than torch's
    array = buffer.numpy().view(native) if native is not None else None
    raw = array.view(np.uint8) if array is not None else buffer.view(torch.uint8).numpy()
    name = dtype_name(dtype)
    count = len(group)
    stats: list[StatsRow | None]
    if count_nonfinite and has_stats(dtype):
        if array is not None:  # float32 widens exactly, by the same instruction as in torch
            values = array if array.dtype == np.float64 else array.astype(np.float64)
            per_value = array.itemsize
        else:
            real = torch.view_as_real(buffer).reshape(-1) if dtype.is_complex else buffer
            values = (real if real.dtype == torch.float64 else real.to(torch.float64)).numpy()
            per_value = real.element_size()
        lengths = tuple(map(operator.floordiv, nbytes, itertools.repeat(per_value, count)))
        rows, flagged = host_stats(values, lengths)
        stats = rows  # type: ignore[assignment]
    else:
        stats, flagged = [None] * count, []
    ends = list(itertools.accumulate(nbytes))
    starts = [0, *ends[:-1]]
    view = memoryview(raw)
    digests = map(xxhash.xxh3_64_hexdigest, map(view.__getitem__, map(slice, starts, ends)))
    shapes = map(tuple, map(_SHAPE, members))
    zeros = itertools.repeat(0)
    made = map(_new_fingerprint, digests, itertools.repeat(name), shapes, zeros, zeros, stats)
    fingerprints = batch.fingerprints
    collections.deque(map(fingerprints.__setitem__, group, made), maxlen=0)
    collections.deque(map(batch._bytes.__setitem__, group, zip(itertools.repeat(raw), starts)), 0)
    for k in flagged:  # rare: segments that may hold NaN or inf
        i = group[k]
        fp = fingerprints[i]
        nan, inf = _nonfinite(members[k], stats[k])
        fingerprints[i] = _new_fingerprint(fp.digest, name, fp.shape, nan, inf, stats[k])


_SHAPE = operator.attrgetter("shape")


@functools.lru_cache(maxsize=1)
def _numpy_views() -> dict[torch.dtype, type]:
    """The numpy dtype that views a flat buffer of these dtypes (complex: its real parts); the
    others go through torch."""
    import torch

    return {
        torch.float32: np.float32,
        torch.float64: np.float64,
        torch.complex64: np.float32,
        torch.complex128: np.float64,
        torch.int64: np.int64,
        torch.int32: np.int32,
        torch.uint8: np.uint8,
        torch.bool: np.bool_,
    }


def _nonfinite(tensor: torch.Tensor, row: StatsRow | None) -> tuple[int, int]:
    """(NaN, inf) element counts: those of the stats, except that a complex element with two
    non-finite parts counts once."""
    if row is None or not (row[NAN] or row[POSINF] or row[NEGINF]):
        return 0, 0
    if tensor.is_complex():
        return nonfinite_counts(tensor)
    return row[NAN], row[POSINF] + row[NEGINF]


def _with_counts(digest: str, name: str, tensor: torch.Tensor, row: StatsRow | None) -> Fingerprint:
    nan, inf = _nonfinite(tensor, row)
    return _new_fingerprint(digest, name, tuple(tensor.shape), nan, inf, row)


def _fingerprint_alone(batch: FingerprintBatch, i: int, count_nonfinite: bool) -> None:
    """A large, quantized, sparse or non-CPU, non-CUDA tensor: hashed in place on the host,
    its statistics computed beside the hash when it is large enough for that to pay."""
    tensor = batch.tensors[i]
    data, aliased = _host_bytes(tensor)
    batch._bytes[i], batch._aliased[i] = (data, 0), aliased
    stats = None
    if count_nonfinite and has_stats(tensor.dtype):
        real = real_flat(tensor if tensor.is_cpu else tensor.cpu())
        if data.nbytes >= OVERLAP_BYTES:  # torch and numpy release the GIL: run beside xxh3
            pending = _background().submit(large_stats, real)
            digest = fingerprint_bytes(data)
            stats = pending.result()
        else:
            digest = fingerprint_bytes(data)
            stats = large_stats(real)
    else:
        digest = fingerprint_bytes(data)
    batch.fingerprints[i] = _with_counts(digest, dtype_name(tensor.dtype), tensor, stats)


@functools.lru_cache(maxsize=1)
def _background() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="repro-stats")


# ------------------------------------------------------------------------------ one tensor


def fingerprint_tensor(tensor: torch.Tensor, *, count_nonfinite: bool = True) -> Fingerprint:
    """Fingerprint a tensor of any dtype, shape (0-d and empty included) and layout of strides."""
    return fingerprint_many([tensor], count_nonfinite=count_nonfinite).fingerprints[0]


def fingerprint_with_bytes(
    tensor: torch.Tensor, *, count_nonfinite: bool = True
) -> tuple[Fingerprint, np.ndarray]:
    """The fingerprint and the raw bytes it was computed from (to spill without a second pass)."""
    batch = fingerprint_many([tensor], count_nonfinite=count_nonfinite)
    return batch.fingerprints[0], batch.host_bytes([0])[0][0]
