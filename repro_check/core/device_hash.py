"""The ``mix64`` digest: fingerprints of device tensors computed on the device.

Recorded CUDA tensors are fingerprinted where they are, all the tensors of a record in one pass
of torch ops, so that only digests and statistics cross to the host. Each element is widened
to a 64-bit word ``w_i`` (16-byte elements give two), mixed with its index in its tensor, and
the words of each tensor are summed mod 2**64::

    digest = fmix64(sum_i splitmix64(w_i ^ K1 * (i + 1)) + K2 * nbytes  mod 2**64)

written ``mix64:<16 hex digits>``. A sum of integers is exact in any order, so the digest is the
same however the device schedules the reduction, and a tensor larger than one pass is hashed in
pieces whose sums add up. The same code runs on CPU tensors, which is how it is tested against
an independent numpy reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from repro_check.core.tensor_stats import (
    NO_ELEMENTS,
    StatsRow,
    combine,
    concatenated,
    has_stats,
    sample_indices,
    segment_accumulators,
    stats_from,
)

if TYPE_CHECKING:
    import torch

DEVICE_ALGORITHM = "mix64"
DEVICE_PREFIX = DEVICE_ALGORITHM + ":"
#: Elements of one device pass: bounds its temporaries; larger tensors go in pieces.
DEVICE_PASS = 2**25
_MASK64 = 2**64 - 1


_K1 = 0x9E3779B97F4A7C15
_K2 = 0xD6E8FEB86659FD93
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    return x - 2**64 if x >= 2**63 else x


def _word_view(flat: torch.Tensor) -> torch.Tensor:
    """A flat tensor's elements as int64 words: elements of 1, 2 or 4 bytes sign-extended from
    their bits, 8-byte elements as they are, 16-byte ones as two words (little-endian)."""
    import torch

    size = flat.element_size()
    if size in (8, 16):
        return flat.view(torch.int64)
    return flat.view({1: torch.int8, 2: torch.int16, 4: torch.int32}[size]).to(torch.int64)


def _mix_words(words: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """splitmix64(w_i ^ K1 * (i + 1)) for every word, in int64 arithmetic (wraps mod 2**64;
    right shifts are made logical by masking)."""
    import torch

    z = torch.bitwise_xor(words, (index + 1).mul_(_signed(_K1)))
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
    values, value_lengths, value_pieces = [], [], []
    gather: list[int] = []
    sampled: list[tuple[int, int]] = []  # (tensor, how many of the gathered values are its)
    value_offset = 0
    for dtype, group in by_dtype.items():
        ordered += group
        flat = concatenated([_piece_view(tensors[p.tensor], p) for p in group])
        per_word = 2 if flat.element_size() == 16 else 1
        words.append(_word_view(flat))
        word_lengths += [(p.stop - p.start) * per_word for p in group]
        word_offsets += [p.start * per_word for p in group]
        if not (stats and has_stats(dtype)):
            continue
        real = torch.view_as_real(flat).reshape(-1) if dtype.is_complex else flat
        values.append(real.to(torch.float64))
        per_element = 2 if dtype.is_complex else 1
        for p in group:
            lo, hi = p.start * per_element, p.stop * per_element
            numel = tensors[p.tensor].numel() * per_element
            picked = [value_offset + j - lo for j in sample_indices(numel) if lo <= j < hi]
            gather += picked
            sampled.append((p.tensor, len(picked)))
            if hi > lo:
                value_lengths.append(hi - lo)
                value_pieces.append(p.tensor)
            value_offset += hi - lo
    parts = [_segment_word_sums(torch.cat(words), word_lengths, word_offsets, device)]
    if value_lengths:  # some floating elements (empty tensors have no stats to gather)
        flat_values = torch.cat(values)
        accumulators = segment_accumulators(flat_values, tuple(value_lengths))
        parts.append(accumulators.reshape(-1).view(torch.int64))
        index = torch.tensor(gather, dtype=torch.long, device=device)
        parts.append(flat_values[index].view(torch.int64))
    # The one transfer of the pass, as int64 so that every bit crosses unchanged.
    host = torch.cat(parts).cpu().numpy()
    count = len(word_lengths)
    for piece, word_sum in zip(ordered, host[:count].view(np.uint64).tolist(), strict=True):
        sums[piece.tensor] = (sums[piece.tensor] + word_sum) & _MASK64
    if not value_lengths:
        return
    floats = host[count:].view(np.float64)
    rows = floats[: 8 * len(value_lengths)].reshape(-1, 8).tolist()
    for tensor, row in zip(value_pieces, rows, strict=True):
        accs[tensor] = combine(accs[tensor], row)
    picked_values = floats[8 * len(value_lengths) :].tolist()
    position = 0
    for tensor, taken in sampled:
        samples[tensor] += picked_values[position : position + taken]
        position += taken


def _piece_view(tensor: torch.Tensor, piece: _Piece) -> torch.Tensor:
    flat = tensor.detach().reshape(-1)
    if piece.start == 0 and piece.stop == flat.numel():
        return flat
    return flat[piece.start : piece.stop]


def _segment_word_sums(
    words: torch.Tensor, lengths: list[int], offsets: list[int], device: torch.device
) -> torch.Tensor:
    """Sum (mod 2**64) of the mixed words of each segment; word i of a segment is mixed with
    its index in its tensor (``offsets`` says where in its tensor a segment starts)."""
    import torch

    total = words.numel()
    starts, position = [], 0
    for n in lengths:
        starts.append(position)
        position += n
    bounds = torch.tensor([*starts, total], dtype=torch.long, device=device)
    shift = torch.tensor(
        [s - o for s, o in zip(starts, offsets, strict=True)], dtype=torch.long, device=device
    )
    repeats = torch.tensor(lengths, dtype=torch.long, device=device)
    index = torch.arange(total, dtype=torch.long, device=device)
    index -= torch.repeat_interleave(shift, repeats, output_size=total)
    mixed = _mix_words(words, index)
    running = torch.cat([torch.zeros(1, dtype=torch.long, device=device), mixed.cumsum(0)])
    return running[bounds[1:]] - running[bounds[:-1]]
