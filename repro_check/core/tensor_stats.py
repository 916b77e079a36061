"""Statistics of recorded floating tensors (:class:`TensorStats`), computed in float64.

What a comparison across environments needs where bitwise equality cannot be expected: min,
max, mean, L2 norm, NaN/inf counts and a fixed sample of elements, for every recorded step and
key whatever the spill budget. They are computed for many tensors at once: on the host by one
numpy reduction per statistic over a buffer holding all of them (:func:`host_stats`), on a
device by segmented torch reductions that never leave it (:func:`segment_accumulators`), and
for one large tensor a chunk at a time (:func:`large_stats`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.atomic import decode_float, encode_float

if TYPE_CHECKING:
    import torch

#: Elements kept in :attr:`TensorStats.sample`.
SAMPLE_SIZE = 8
#: Elements converted to float64 at a time for the statistics of a large tensor (below torch's
#: parallel grain size: see large_stats).
STATS_CHUNK = 2**15


def _same(x: Any) -> Any:
    """NaN as a value equal to itself (stats of the same bits must compare equal)."""
    return "nan" if x != x else x


@dataclass(frozen=True, slots=True, eq=False)
class TensorStats:
    """Statistics of a floating tensor's values, computed in float64.

    A complex tensor is summarised through its real view: real and imaginary parts count as
    separate elements. ``min``, ``max``, ``mean`` and ``norm`` (L2) are over the finite
    elements; with none, ``min``/``max``/``mean`` are NaN and ``norm`` is 0.0. ``mean`` and
    ``norm`` are inf only where the float64 sum (of squares) overflows: float64 values beyond
    ~1e154. ``nan``, ``posinf``
    and ``neginf`` count the non-finite elements. ``sample`` holds the values (NaN and inf
    included) at ``sample_index``, flat indices into the real view that depend on the number
    of elements alone (:func:`sample_indices`): every element up to :data:`SAMPLE_SIZE`, else
    that many evenly spaced, the first and the last included. Equal bits give equal stats; the
    same values summed on another device or thread count may differ in the last bits.
    """

    min: float
    max: float
    mean: float
    norm: float
    nan: int
    posinf: int
    neginf: int
    sample: tuple[float, ...]
    sample_index: tuple[int, ...]

    def _key(self) -> tuple[Any, ...]:
        *numbers, sample, index = self._row()
        return (*map(_same, numbers), tuple(map(_same, sample)), index)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorStats):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _row(self) -> tuple[Any, ...]:
        return (
            self.min,
            self.max,
            self.mean,
            self.norm,
            self.nan,
            self.posinf,
            self.neginf,
            self.sample,
            self.sample_index,
        )

    def to_json(self) -> list[Any]:
        """``[min, max, mean, norm, nan, posinf, neginf, [sample...], [sample_index...]]``."""
        return stats_json(self._row())

    @classmethod
    def from_json(cls, data: Any) -> TensorStats:
        if not isinstance(data, list) or len(data) != 9:
            raise ValueError(f"statistics must be a list of 9 items, got {data!r}")
        low, high, mean, norm, nan, posinf, neginf, sample, index = data
        counts = (nan, posinf, neginf)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise ValueError(f"statistics: NaN/inf counts must be integers >= 0, got {counts}")
        if not (isinstance(sample, list) and isinstance(index, list)) or len(sample) != len(index):
            raise ValueError("statistics: sample and sample_index must be lists of one length")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in index):
            raise ValueError(f"statistics: sample_index must hold integers, got {index}")
        return cls(
            decode_float(low),
            decode_float(high),
            decode_float(mean),
            decode_float(norm),
            nan,
            posinf,
            neginf,
            tuple(decode_float(x) for x in sample),
            tuple(index),
        )


def stats_json(row: tuple[Any, ...]) -> list[Any]:
    low, high, mean, norm, nan, posinf, neginf, sample, index = row
    return [
        encode_float(low),
        encode_float(high),
        encode_float(mean),
        encode_float(norm),
        nan,
        posinf,
        neginf,
        [encode_float(x) for x in sample],
        list(index),
    ]


def frozen_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for a frozen slots dataclass that skips its ``__init__``
    (which pays ``object.__setattr__`` per field: records build hundreds of these per step).
    It checks nothing: callers pass every field, in order. Generated, as dataclasses generate
    ``__init__``, so that each field costs one slot store."""
    names = list(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    scope.update({f"set{i}": getattr(cls, name).__set__ for i, name in enumerate(names)})
    args = ", ".join(f"v{i}" for i in range(len(names)))
    body = "".join(f"    set{i}(obj, v{i})\n" for i in range(len(names)))
    exec(f"def make({args}):\n    obj = new(cls)\n{body}    return obj\n", scope)  # noqa: S102
    return scope["make"]


new_stats = frozen_constructor(TensorStats)
#: TensorStats' fields as a plain tuple, in order: what records hold (see Fingerprint).
StatsRow = tuple[float, float, float, float, int, int, int, tuple[float, ...], tuple[int, ...]]
EMPTY_STATS: StatsRow = (math.nan, math.nan, math.nan, 0.0, 0, 0, 0, (), ())
NAN, POSINF, NEGINF = 4, 5, 6  # where the counts sit in a StatsRow


@functools.lru_cache(maxsize=4096)
def sample_indices(numel: int) -> tuple[int, ...]:
    """The flat indices :attr:`TensorStats.sample` holds for a tensor of ``numel`` elements."""
    if numel <= SAMPLE_SIZE:
        return tuple(range(numel))
    return tuple(i * (numel - 1) // (SAMPLE_SIZE - 1) for i in range(SAMPLE_SIZE))


def stats_from(acc: Sequence[float], sample: tuple[float, ...], numel: int) -> StatsRow:
    """Stats from accumulators ``[sum, sum of squares, min, max, finite count, NaN,
    +inf, -inf]`` over the finite elements (min/max are +-inf when there is none)."""
    total, squares, low, high, count, nan, posinf, neginf = acc
    if count:
        mean = total / count
    else:
        low = high = mean = math.nan
    counts = int(nan), int(posinf), int(neginf)
    return (low, high, mean, math.sqrt(squares), *counts, sample, sample_indices(numel))


def combine(a: list[float], b: Sequence[float]) -> list[float]:
    """Accumulators of two pieces of one tensor."""
    return [
        a[0] + b[0],
        a[1] + b[1],
        min(a[2], b[2]),
        max(a[3], b[3]),
        a[4] + b[4],
        a[5] + b[5],
        a[6] + b[6],
        a[7] + b[7],
    ]


NO_ELEMENTS = [0.0, 0.0, math.inf, -math.inf, 0, 0, 0, 0]


@functools.lru_cache(maxsize=256)
def _blocks(lengths: tuple[int, ...], block: int) -> tuple[list[int], list[int]]:
    """Split segments into blocks of at most ``block`` elements: (block lengths, blocks per
    segment). torch.segment_reduce runs one thread per segment on CUDA; blocks keep it wide."""
    sizes: list[int] = []
    per_segment = []
    for n in lengths:
        full, rest = divmod(n, block)
        sizes.extend([block] * full)
        if rest:
            sizes.append(rest)
        per_segment.append(full + (1 if rest else 0))
    return sizes, per_segment


def _segmented(data: torch.Tensor, reduce: str, lengths: tuple[int, ...]) -> torch.Tensor:
    """``reduce`` ('sum', 'min', 'max') of each segment of each row of a 2-D tensor, in a
    fixed order (deterministic on every device). Every segment has at least one element."""
    import torch

    sizes, per_segment = _blocks(lengths, 1024)
    rows = data.shape[0]
    # unsafe: the lengths add up by construction, and checking them costs a device sync
    first = _row_lengths(tuple(sizes), rows, data.device)
    partial = torch.segment_reduce(data, reduce, lengths=first, axis=1, unsafe=True)
    if len(sizes) == len(lengths):
        return partial
    second = _row_lengths(tuple(per_segment), rows, data.device)
    return torch.segment_reduce(partial, reduce, lengths=second, axis=1, unsafe=True)


@functools.lru_cache(maxsize=32)
def _row_lengths(lengths: tuple[int, ...], rows: int, device: torch.device) -> torch.Tensor:
    """Segment lengths for every row, on the device: made once per record layout."""
    import torch

    return torch.tensor(lengths, device=device).expand(rows, -1).contiguous()


def segment_accumulators(values: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    """``[nseg, 8]`` accumulators (see :func:`stats_from`) of the segments of a float64 1-D
    tensor, NaN and inf handled, on the tensor's device without a round trip."""
    import torch

    finite = torch.isfinite(values)
    kept = torch.where(finite, values, 0.0)
    counted = torch.stack(
        [
            kept,
            kept * kept,
            finite.to(torch.float64),
            torch.isnan(values).to(torch.float64),
            torch.isposinf(values).to(torch.float64),
            torch.isneginf(values).to(torch.float64),
        ]
    )
    sums = _segmented(counted, "sum", lengths)
    low = _segmented(torch.where(finite, values, math.inf)[None], "min", lengths)[0]
    high = _segmented(torch.where(finite, values, -math.inf)[None], "max", lengths)[0]
    return torch.stack([sums[0], sums[1], low, high, sums[2], sums[3], sums[4], sums[5]], dim=1)


@dataclass(frozen=True)
class _Layout:
    """Where the segments of a concatenated buffer lie, and which elements they sample."""

    nonempty: list[int]  # positions of the segments with elements
    starts: np.ndarray  # their first elements
    counts: np.ndarray  # their lengths (float64, for the means)
    gather: np.ndarray  # the elements every sample reads, segment after segment
    sample_bounds: list[slice]  # each nonempty segment's slice of gather
    sample_index: list[tuple[int, ...]]  # each nonempty segment's sample_indices


@functools.lru_cache(maxsize=256)
def _layout(lengths: tuple[int, ...]) -> _Layout:
    nonempty, starts, gather, bounds = [], [], [], []
    offset = 0
    for position, n in enumerate(lengths):
        if n:
            nonempty.append(position)
            starts.append(offset)
            bounds.append(slice(len(gather), len(gather) + min(n, SAMPLE_SIZE)))
            gather.extend(offset + i for i in sample_indices(n))
        offset += n
    return _Layout(
        nonempty,
        np.array(starts, dtype=np.intp),
        np.array([lengths[i] for i in nonempty], dtype=np.float64),
        np.array(gather, dtype=np.intp),
        bounds,
        [sample_indices(lengths[i]) for i in nonempty],
    )


def host_stats(values: np.ndarray, lengths: tuple[int, ...]) -> tuple[list[StatsRow], list[int]]:
    """Stats of consecutive segments of a float64 array, one numpy reduction per statistic for
    all of them, and the positions of the segments that may hold NaN or inf (only those take
    a second, masked pass; the others' NaN/inf counts are 0)."""
    layout = _layout(lengths)
    if not layout.nonempty:
        return [EMPTY_STATS] * len(lengths), []
    starts = layout.starts
    table = np.empty((4, len(starts)))  # one tolist() for the four statistics
    with np.errstate(all="ignore"):
        sums = np.add.reduceat(values, starts)
        np.minimum.reduceat(values, starts, out=table[0])
        np.maximum.reduceat(values, starts, out=table[1])
        np.divide(sums, layout.counts, out=table[2])
        np.sqrt(np.add.reduceat(values * values, starts), out=table[3])
    lows, highs, means, norms = table.tolist()
    samples = values.take(layout.gather).tolist()
    picked = list(map(tuple, map(samples.__getitem__, layout.sample_bounds)))  # no frames
    zeros = [0] * len(lows)
    rows = list(
        zip(lows, highs, means, norms, zeros, zeros, zeros, picked, layout.sample_index)  # noqa: B905
    )
    flagged: list[int] = []
    if not math.isfinite(sum(means)):  # a finite mean (sum): no NaN and no inf in the segment
        flagged = np.flatnonzero(~np.isfinite(sums)).tolist()
        for k in flagged:
            start, n = int(starts[k]), lengths[layout.nonempty[k]]
            rows[k] = stats_from(_slow_accumulators(values[start : start + n]), picked[k], n)
    if len(rows) == len(lengths):
        return rows, flagged  # type: ignore[return-value]
    out: list[StatsRow] = [EMPTY_STATS] * len(lengths)
    for position, row in zip(layout.nonempty, rows, strict=True):
        out[position] = row
    return out, [layout.nonempty[k] for k in flagged]


def _slow_accumulators(values: np.ndarray) -> list[float]:
    import torch

    return segment_accumulators(torch.from_numpy(values), (len(values),))[0].tolist()


def large_stats(real: torch.Tensor) -> StatsRow:
    """Stats of one large flat floating tensor (CPU), converted to float64 a chunk at a time so
    that no full-size temporary is made; chunks holding NaN or inf take a masked pass.

    Single-threaded on purpose: this runs beside the hash on a background thread, where a
    parallel region (torch's OpenMP above its grain size, a multi-threaded BLAS dot) would
    compete with the training's own threads; on a loaded machine such spin-waiting teams were
    measured 50x slower. Chunks stay under torch's parallel grain size (32768 elements)."""
    import torch

    numel = real.numel()
    buffer = np.empty(min(numel, STATS_CHUNK))
    staging = torch.from_numpy(buffer)
    acc = list(NO_ELEMENTS)
    for start in range(0, numel, STATS_CHUNK):
        chunk = real[start : start + STATS_CHUNK]
        n = chunk.numel()
        staging[:n].copy_(chunk)
        values = buffer[:n]
        total = float(values.sum())
        if math.isfinite(total):
            squares = float(np.einsum("i,i->", values, values))  # numpy's own loop, not BLAS
            part = [total, squares, float(values.min()), float(values.max()), n, 0, 0, 0]
        else:
            part = _slow_accumulators(values)
        acc = combine(acc, part)
    index = sample_indices(numel)
    sample = real[torch.tensor(index)].to(torch.float64).tolist()
    return stats_from(acc, tuple(sample), numel)


def real_flat(t: torch.Tensor) -> torch.Tensor:
    """The elements the statistics read: a flat view, complex as its real view."""
    import torch

    t = t.detach().resolve_conj().resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.reshape(-1)


def has_stats(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


def scalar_stats(x: float) -> StatsRow:
    """The stats of a 0-d float64 tensor holding ``x`` (what the batched path computes)."""
    if math.isfinite(x):
        return (x, x, x, math.sqrt(x * x), 0, 0, 0, (x,), (0,))
    counts = int(x != x), int(x == math.inf), int(x == -math.inf)
    return (math.nan, math.nan, math.nan, 0.0, *counts, (x,), (0,))


def concatenated(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The flat concatenation of same-dtype tensors' values (a fresh copy, resolved views)."""
    import torch

    if len(tensors) == 1:
        return torch.cat([tensors[0].reshape(-1)])
    return torch._utils._flatten_dense_tensors(tensors)
