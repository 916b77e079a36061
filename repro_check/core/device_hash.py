"""The ``mix64`` digest: fingerprints of device tensors computed on the device.

Recorded CUDA tensors are fingerprinted where they are, all the tensors of a record in one pass
of torch ops, so that only digests and statistics cross to the host. A tensor's bytes,
zero-padded to a multiple of 8, are read as little-endian 64-bit words ``w_i``; each word is
mixed with its index in its tensor, and the words of each tensor are summed mod 2**64::

    digest = fmix64(sum_i splitmix64(w_i ^ K1 * (i + 1)) + K2 * nbytes  mod 2**64)

written ``mix64:<16 hex digits>``. A sum of integers is exact in any order, so the digest is the
same however the device schedules the reduction, and a tensor larger than one pass is hashed in
pieces whose sums add up. The same code runs on CPU tensors, which is how it is tested against
an independent numpy reference.

Cost: about a dozen elementwise passes of torch ops over the words (one fused kernel would read
them once), plus a copy into one buffer for tensors that share a pass; constants that depend
only on the layout of a record (word keys, segment bounds) stay on the device between records.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.tensor_stats import (
    NO_ELEMENTS,
    StatsRow,
    combine,
    has_stats,
    sample_indices,
    segment_accumulators,
    stats_from,
)

if TYPE_CHECKING:
    import torch

DEVICE_ALGORITHM = "mix64"
DEVICE_PREFIX = DEVICE_ALGORITHM + ":"
#: Elements of one device pass: bounds its temporaries; larger tensors go in pieces (a
#: multiple of 8, so that every piece starts on a whole word).
DEVICE_PASS = 2**25
_MASK64 = 2**64 - 1


_K1 = 0x9E3779B97F4A7C15
_K2 = 0xD6E8FEB86659FD93
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    return x - 2**64 if x >= 2**63 else x


def _per_word(itemsize: int) -> int:
    """Elements per 64-bit word (a 16-byte element spans two words: 0 marks that)."""
    return 8 // itemsize if itemsize <= 8 else 0


def _words_of(elements: int, itemsize: int) -> int:
    """Words holding ``elements`` elements, zero-padded to a whole word."""
    per = _per_word(itemsize)
    return -(-elements // per) if per else elements * itemsize // 8


@functools.lru_cache(maxsize=64)
def _zeros(count: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    import torch

    return torch.zeros(count, dtype=dtype, device=device)


def _mix_words(words: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """splitmix64(w_i ^ key_i) for every word, in int64 arithmetic (wraps mod 2**64; right
    shifts are made logical by masking)."""
    import torch

    z = torch.bitwise_xor(words, keys)
    shifted = torch.empty_like(z)
    for shift, multiplier in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=shifted)
        z.bitwise_xor_(shifted.bitwise_and_((1 << (64 - shift)) - 1))
        if multiplier is not None:
            z.mul_(_signed(multiplier))
    return z


def _fmix64(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK64
    return x ^ (x >> 33)


def device_digest(word_sum: int, nbytes: int) -> str:
    """The ``mix64`` digest of a tensor from the sum of its mixed words (mod 2**64)."""
    return f"{DEVICE_PREFIX}{_fmix64((word_sum + _K2 * nbytes) & _MASK64):016x}"


@dataclass
class _Piece:
    """Elements [start, stop) of one tensor, hashed and summarised within one device pass."""

    tensor: int
    start: int
    stop: int


def device_fingerprints(
    tensors: Sequence[torch.Tensor], stats: bool
) -> list[tuple[str, StatsRow | None]]:
    """``(mix64 digest, stats row or None)`` of each tensor (all on one device), by torch ops
    on that device, all the tensors of a pass at once; each pass sends one small array to the
    host. Tensors larger than a pass go in pieces whose word sums and accumulators add up."""
    indices = range(len(tensors))
    sums = dict.fromkeys(indices, 0)
    accs = {i: list(NO_ELEMENTS) for i in indices}
    samples: dict[int, list[float]] = {i: [] for i in indices}
    pieces: list[_Piece] = []
    size = 0
    for i in indices:
        numel = tensors[i].numel()
        for start in range(0, max(numel, 1), DEVICE_PASS):
            stop = min(numel, start + DEVICE_PASS)
            if pieces and size + stop - start > DEVICE_PASS:
                _device_pass(tensors, pieces, stats, sums, accs, samples)
                pieces, size = [], 0
            pieces.append(_Piece(i, start, stop))
            size += stop - start
    if pieces:
        _device_pass(tensors, pieces, stats, sums, accs, samples)
    out: list[tuple[str, StatsRow | None]] = []
    for i in indices:
        tensor = tensors[i]
        row = None
        if stats and has_stats(tensor.dtype):
            per_element = 2 if tensor.is_complex() else 1
            row = stats_from(accs[i], tuple(samples[i]), tensor.numel() * per_element)
        out.append((device_digest(sums[i], tensor.numel() * tensor.element_size()), row))
    return out


def _device_pass(
    tensors: Sequence[torch.Tensor],
    pieces: list[_Piece],
    stats: bool,
    sums: dict[int, int],
    accs: dict[int, list[float]],
    samples: dict[int, list[float]],
) -> None:
    import torch

    device = tensors[pieces[0].tensor].device
    by_dtype: dict[torch.dtype, list[_Piece]] = {}
    for piece in pieces:
        by_dtype.setdefault(tensors[piece.tensor].dtype, []).append(piece)
    ordered: list[_Piece] = []
    words, word_lengths, word_offsets = [], [], []
    values, value_lengths = [], []
    value_owners: list[int | None] = []  # the tensor of each value segment; None: padding
    gather: list[int] = []
    sampled: list[tuple[int, int]] = []  # (tensor, how many of the gathered values are its)
    value_offset = 0
    for dtype, group in by_dtype.items():
        ordered += group
        itemsize = tensors[group[0].tensor].element_size()
        flat, pads = _padded(tensors, group, dtype, device)
        words.append(flat.view(torch.int64))
        word_lengths += [_words_of(p.stop - p.start, itemsize) for p in group]
        word_offsets += [_words_of(p.start, itemsize) for p in group]
        if not (stats and has_stats(dtype)):
            continue
        real = torch.view_as_real(flat).reshape(-1) if dtype.is_complex else flat
        values.append(real.to(torch.float64))
        per_element = 2 if dtype.is_complex else 1
        for p, pad in zip(group, pads, strict=True):
            lo, hi = p.start * per_element, p.stop * per_element
            numel = tensors[p.tensor].numel() * per_element
            picked = [value_offset + j - lo for j in sample_indices(numel) if lo <= j < hi]
            gather += picked
            sampled.append((p.tensor, len(picked)))
            for length, owner in ((hi - lo, p.tensor), (pad * per_element, None)):
                if length:
                    value_lengths.append(length)
                    value_owners.append(owner)
                    value_offset += length
    all_words = words[0] if len(words) == 1 else torch.cat(words)
    parts = [_segment_word_sums(all_words, tuple(word_lengths), tuple(word_offsets))]
    if value_lengths:  # some floating elements (empty tensors have no stats to gather)
        flat_values = values[0] if len(values) == 1 else torch.cat(values)
        accumulators = segment_accumulators(flat_values, tuple(value_lengths))
        parts.append(accumulators.reshape(-1).view(torch.int64))
        parts.append(flat_values[_on_device(tuple(gather), device)].view(torch.int64))
    # The one transfer of the pass, as int64 so that every bit crosses unchanged.
    host = torch.cat(parts).cpu().numpy()
    count = len(word_lengths)
    for piece, word_sum in zip(ordered, host[:count].view(np.uint64).tolist(), strict=True):
        sums[piece.tensor] = (sums[piece.tensor] + word_sum) & _MASK64
    if not value_lengths:
        return
    floats = host[count:].view(np.float64)
    rows = floats[: 8 * len(value_lengths)].reshape(-1, 8).tolist()
    for owner, row in zip(value_owners, rows, strict=True):
        if owner is not None:
            accs[owner] = combine(accs[owner], row)
    picked_values = floats[8 * len(value_lengths) :].tolist()
    position = 0
    for tensor, taken in sampled:
        samples[tensor] += picked_values[position : position + taken]
        position += taken


def _padded(
    tensors: Sequence[torch.Tensor], group: list[_Piece], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, list[int]]:
    """One flat buffer of the pieces' elements, each piece zero-padded to whole words, and the
    padding of each. A single piece already whole words is used in place, without a copy."""
    import torch

    per = _per_word(tensors[group[0].tensor].element_size())
    parts, pads = [], []
    for p in group:
        view = _piece_view(tensors[p.tensor], p)
        pad = (-(p.stop - p.start)) % per if per else 0
        parts.append(view)
        pads.append(pad)
        if pad:
            parts.append(_zeros(pad, dtype, device))
    only = parts[0]
    if len(parts) == 1 and only.is_contiguous() and only.storage_offset() % max(per, 1) == 0:
        return only, pads
    return torch.cat(parts), pads


def _piece_view(tensor: torch.Tensor, piece: _Piece) -> torch.Tensor:
    flat = tensor.detach().resolve_conj().resolve_neg().reshape(-1)
    if piece.start == 0 and piece.stop == flat.numel():
        return flat
    return flat[piece.start : piece.stop]


@functools.lru_cache(maxsize=32)
def _on_device(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A constant int64 tensor on the device, made once per record layout (the layout of a
    training run's records rarely changes; each copy to a device costs a synchronisation)."""
    import torch

    return torch.tensor(values, dtype=torch.long, device=device)


#: Word keys K1 * (i + 1) are kept on the device for layouts up to this many words.
_CACHED_KEYS = 2**20


def _word_keys(lengths: tuple[int, ...], offsets: tuple[int, ...], device: torch.device) -> Any:
    """K1 * (i + 1) for every word, i its index in its tensor."""
    import torch

    total = sum(lengths)
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    shift = _on_device(tuple(s - o - 1 for s, o in zip(starts, offsets, strict=True)), device)
    index = torch.arange(total, dtype=torch.long, device=device)
    index -= torch.repeat_interleave(shift, _on_device(lengths, device), output_size=total)
    return index.mul_(_signed(_K1))


_cached_word_keys = functools.lru_cache(maxsize=8)(_word_keys)


def _segment_word_sums(
    words: torch.Tensor, lengths: tuple[int, ...], offsets: tuple[int, ...]
) -> torch.Tensor:
    """Sum (mod 2**64) of the mixed words of each segment; word i of a segment is mixed with
    its index in its tensor (``offsets`` says where in its tensor a segment starts)."""
    import torch

    device = words.device
    # Large passes: not worth the device memory of keeping their keys.
    keys = (_cached_word_keys if words.numel() <= _CACHED_KEYS else _word_keys)(
        lengths, offsets, device
    )
    mixed = _mix_words(words, keys)
    running = torch.cat([_zeros(1, torch.long, device), mixed.cumsum(0)])
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    ends, starts = _on_device(tuple(bounds[1:]), device), _on_device(tuple(bounds[:-1]), device)
    return running[ends] - running[starts]
