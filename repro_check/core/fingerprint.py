"""Tensor fingerprints: a fast non-cryptographic hash of the raw bytes, plus dtype and shape.

Two fingerprints are equal exactly when the tensors have the same dtype, the same shape and the
same bytes (bitwise: ``-0.0 != 0.0``, NaN payloads count). xxh3 runs near memory bandwidth, so
fingerprinting every recorded tensor costs about as much as one copy of it (DESIGN.md).
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What repro-check keeps of a recorded tensor (the tensor itself is dropped or spilled)."""

    digest: str  # xxh3_64 of the raw bytes, 16 hex digits
    dtype: str  # "float32", "int64", ... (torch dtype name without the "torch." prefix)
    shape: tuple[int, ...]
    nan: int = 0  # number of NaN elements (floating and complex dtypes only)
    inf: int = 0  # number of +-inf elements

    @property
    def numel(self) -> int:
        n = 1
        for side in self.shape:
            n *= side
        return n

    def same_bits(self, other: Fingerprint) -> bool:
        return (self.digest, self.dtype, self.shape) == (other.digest, other.dtype, other.shape)

    def to_json(self) -> list[Any]:
        return [self.digest, self.dtype, list(self.shape), self.nan, self.inf]

    @classmethod
    def from_json(cls, data: list[Any]) -> Fingerprint:
        digest, dtype, shape, nan, inf = data
        return cls(str(digest), str(dtype), tuple(int(s) for s in shape), int(nan), int(inf))


@functools.lru_cache(maxsize=64)
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def raw_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's elements as a flat uint8 numpy view (a copy only when it must be one).

    Non-contiguous tensors are made contiguous, GPU tensors are copied to the host, quantized
    tensors give their integer representation, and conjugate/negative views are resolved first so
    the bytes are those of the values the tensor represents.
    """
    import torch

    t = tensor.detach()
    if (
        t.device.type == "cpu"
        and t.layout == torch.strided
        and t.is_contiguous()
        and not (t.is_quantized or t.is_conj() or t.is_neg())
    ):  # the fast path: no copy, no resolve
        return _flat_bytes(t)
    if t.is_quantized:
        t = t.int_repr()
    if t.layout != torch.strided:
        raise TypeError(f"cannot fingerprint a {t.layout} tensor; convert it with .to_dense()")
    if t.device.type != "cpu":
        t = t.cpu()
    return _flat_bytes(t.resolve_conj().resolve_neg().contiguous())


def _flat_bytes(t: torch.Tensor) -> np.ndarray:
    """A contiguous tensor's bytes. Tensors of 0 or 1 elements count as contiguous whatever
    their strides, and ``view(uint8)`` refuses a stride other than 1: copy those (tiny)."""
    import torch

    flat = t.reshape(-1)
    if t.numel() <= 1 and flat.stride() != (1,):
        flat = flat.clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8).numpy()


def nonfinite_counts(tensor: torch.Tensor) -> tuple[int, int]:
    """(NaN count, inf count).

    A finite sum proves there is no NaN or inf; ``sum`` reads at memory speed without allocating,
    where ``isfinite(t).all()`` is ~15x slower. Only when the sum is not finite (NaN/inf present,
    or finite values overflowed) are the elements counted one by one.
    """
    import torch

    t = tensor.detach()
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0, 0
    total = t.sum().item()
    if math.isfinite(abs(total)):
        return 0, 0
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


def fingerprint_bytes(data: Any) -> str:
    """xxh3_64 of anything supporting the buffer protocol, as 16 hex digits."""
    return xxhash.xxh3_64_hexdigest(data)


def fingerprint_tensor(tensor: torch.Tensor, *, count_nonfinite: bool = True) -> Fingerprint:
    """Fingerprint a tensor of any dtype, shape (0-d and empty included) and layout of strides."""
    return fingerprint_with_bytes(tensor, count_nonfinite=count_nonfinite)[0]


def fingerprint_with_bytes(
    tensor: torch.Tensor, *, count_nonfinite: bool = True
) -> tuple[Fingerprint, np.ndarray]:
    """The fingerprint and the raw bytes it was computed from (to spill without a second pass)."""
    data = raw_bytes(tensor)
    if count_nonfinite and data.nbytes >= OVERLAP_BYTES:
        # Large tensors: the NaN/inf check (torch releases the GIL) runs beside the hash.
        pending = _background().submit(nonfinite_counts, tensor)
        digest = fingerprint_bytes(data)
        nan, inf = pending.result()
    else:
        digest = fingerprint_bytes(data)
        nan, inf = nonfinite_counts(tensor) if count_nonfinite else (0, 0)
    fingerprint = Fingerprint(
        digest=digest,
        dtype=dtype_name(tensor.dtype),
        shape=tuple(tensor.shape),
        nan=nan,
        inf=inf,
    )
    return fingerprint, data


#: Above this size the NaN/inf check overlaps the hash (below, a thread hop costs more).
OVERLAP_BYTES = 4 * 2**20


@functools.lru_cache(maxsize=1)
def _background() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="repro-nonfinite")
