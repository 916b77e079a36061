"""Content hashes of the tensors the tracer sees: xxh3-64 of the raw bytes (row-major).

The bytes are those :func:`repro_check.core.fingerprint.raw_bytes` gives (the recorder's
fingerprint), so a traced output and a recorded tensor with equal bytes hash alike. On top of
it the tracer must survive anything a dispatcher can hand it: sparse tensors (indices and
values), quantized ones (their integers), meta tensors and subclasses without storage (hash 0,
labelled), never crashing the run.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from typing import TYPE_CHECKING, Any

import xxhash

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUFFER_TYPES",
    "DTYPE_NAMES",
    "EMPTY_HASH",
    "MIX_PACK",
    "content_hash",
    "data_ptr",
    "dtype_name",
    "fast_dtypes",
    "memory_hash",
    "mix",
]

DTYPE_NAMES: dict[Any, str] = {}  # dtype -> name, as dtype_name() gives it


def dtype_name(dtype: Any) -> str:
    """``torch.float32`` -> ``"float32"`` (interned, cached)."""
    name = DTYPE_NAMES.get(dtype)
    if name is None:
        name = DTYPE_NAMES[dtype] = sys.intern(str(dtype).replace("torch.", ""))
    return name


_FAST: dict[Any, str] = {}


def fast_dtypes() -> dict[Any, str]:
    """dtypes whose contiguous CPU tensors hash through a zero-copy numpy view, with names
    (complex takes the slow path: conjugate/negative bits must be resolved first)."""
    if not _FAST:
        import torch

        for d in (
            torch.float32,
            torch.float64,
            torch.float16,
            torch.int64,
            torch.int32,
            torch.int16,
            torch.int8,
            torch.uint8,
            torch.bool,
        ):
            _FAST[d] = dtype_name(d)
    return _FAST


EMPTY_HASH = xxhash.xxh3_64_intdigest(b"")
#: byte length -> ctypes array type of that length (the tracer reads it inline: a Python call
#: per output costs as much as the lookup)
BUFFER_TYPES: dict[int, Any] = {}


def memory_hash(address: int, nbytes: int) -> int:
    """xxh3-64 of ``nbytes`` bytes at ``address`` (a live contiguous CPU tensor's data).

    The same digest as hashing ``tensor.numpy()``, without building a numpy array (1.2 us of
    the ~2 us a small tensor costs): a ctypes view over the memory, typed per length."""
    if nbytes == 0:
        return EMPTY_HASH
    buffer = BUFFER_TYPES.get(nbytes)
    if buffer is None:
        if len(BUFFER_TYPES) > 4096:  # many distinct sizes (variable-length batches): start over
            BUFFER_TYPES.clear()
        buffer = BUFFER_TYPES[nbytes] = ctypes.c_char * nbytes
    return xxhash.xxh3_64_intdigest(buffer.from_address(address))


MIX_PACK = struct.Struct("<4Q").pack  # what mix() hashes (the tracer inlines it)


def mix(base: int, op: int, args: int, position: int) -> int:
    """xxh3-64 of four 64-bit integers: the signature of a view is its input's hash mixed with
    the op, its arguments and the output's position. The same on every machine and Python
    version (traces are compared across machines), unlike ``hash()``."""
    return xxhash.xxh3_64_intdigest(MIX_PACK(base, op, args, position))


def data_ptr(t: torch.Tensor) -> int:
    """The tensor's data address, or -1 (no storage: meta tensors, some subclasses)."""
    try:
        return t.data_ptr()
    except Exception:
        return -1


def content_hash(t: torch.Tensor) -> tuple[int, str | None]:
    """xxh3-64 of the tensor's bytes, and a class/layout label when it is not a plain tensor."""
    import torch

    from repro_check.core.fingerprint import raw_bytes

    label = None if type(t) in (torch.Tensor, torch.nn.Parameter) else type(t).__name__
    try:
        if t.layout != torch.strided:
            layout = str(t.layout).replace("torch.", "")
            if t.layout == torch.sparse_coo:
                t = t.detach().coalesce()
                h = xxhash.xxh3_64()
                for part in (t._indices(), t._values()):
                    h.update(raw_bytes(part))
                return h.intdigest(), layout
            return 0, layout
        if t.device.type == "meta":
            return 0, label or "meta"
        label = label or ("quantized" if t.is_quantized else None)
        return xxhash.xxh3_64_intdigest(raw_bytes(t)), label
    except Exception:  # subclass without storage, functional tensor, ...: don't crash the run
        return 0, label or "unreadable"
