"""repro_check.core.fingerprint: equal fingerprints exactly when dtype, shape and bytes are equal."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
import xxhash
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from repro_check.core import device_hash, fingerprint, tensor_stats
from repro_check.core.device_hash import device_digest
from repro_check.core.fingerprint import (
    Fingerprint,
    TensorStats,
    dtype_name,
    fingerprint_many,
    fingerprint_scalar,
    fingerprint_tensor,
    nonfinite_counts,
    raw_bytes,
)
from repro_check.core.tensor_stats import SAMPLE_SIZE, sample_indices
from repro_check.strategies import ALL_DTYPES, FLOAT_DTYPES, LAYOUTS, tensors

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_TORCH_DTYPES = [getattr(torch, name) for name in ALL_DTYPES]
FLOATING = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def oracle_bytes(t: torch.Tensor) -> bytes:
    """The bytes of the values ``t`` represents, computed without raw_bytes' uint8 view."""
    t = t.detach().resolve_conj().resolve_neg().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: same bits as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def from_bytes(data: bytes | bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
    return flat.view(dtype).reshape(shape)


def hits_stride_bug(t: torch.Tensor) -> bool:
    """At most one element, flattened with a stride other than 1 (``torch.randn(1, 4)[:, 0]``,
    ``torch.empty(0)[::2]``): raw_bytes() fails on these, see the xfail test below."""
    return t.numel() <= 1 and t.reshape(-1).stride(0) != 1


def fingerprintable(t: torch.Tensor) -> torch.Tensor:
    assume(not hits_stride_bug(t))
    return t


def same_content(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and oracle_bytes(a) == oracle_bytes(b)


# ------------------------------------------------------------------------- properties


@PROPS
@given(x=tensors(layouts=LAYOUTS))
def test_fingerprint_is_xxh3_of_the_represented_bytes(x):
    x = fingerprintable(x)
    fp = fingerprint_tensor(x)
    assert fp.digest == xxhash.xxh3_64_hexdigest(oracle_bytes(x))
    assert len(fp.digest) == 16 and int(fp.digest, 16) >= 0
    assert fp.dtype == str(x.dtype).removeprefix("torch.")
    assert fp.shape == tuple(x.shape)
    assert fp.numel == x.numel()
    assert raw_bytes(x).tobytes() == oracle_bytes(x)


@PROPS
@given(x=tensors(layouts=LAYOUTS))
def test_non_contiguous_view_and_contiguous_copy_fingerprint_equal(x):
    x = fingerprintable(x)
    copy = x.contiguous()
    clone = x.clone(memory_format=torch.preserve_format)
    assert fingerprint_tensor(x) == fingerprint_tensor(copy) == fingerprint_tensor(clone)
    assert fingerprint_tensor(x).same_bits(fingerprint_tensor(copy))


@PROPS
@given(
    x=tensors(min_side=0, max_side=2, max_dims=2, dtypes=("bool", "uint8", "int8", "float16")),
    y=tensors(min_side=0, max_side=2, max_dims=2, dtypes=("bool", "uint8", "int8", "float16")),
)
def test_fingerprints_equal_exactly_when_dtype_shape_and_bytes_equal(x, y):
    x, y = fingerprintable(x), fingerprintable(y)
    # tiny tensors of narrow dtypes, so that equal pairs are drawn often enough
    assert fingerprint_tensor(x).same_bits(fingerprint_tensor(y)) == same_content(x, y)
    assert (fingerprint_tensor(x) == fingerprint_tensor(y)) == same_content(x, y)


@PROPS
@given(data=st.data(), x=tensors(min_dims=0, min_side=1, layouts=LAYOUTS))
def test_flipping_one_bit_of_one_element_changes_the_fingerprint(data, x):
    x = fingerprintable(x)
    raw = bytearray(oracle_bytes(x))
    width = x.element_size()
    element = data.draw(st.integers(0, x.numel() - 1), label="element")
    byte = element * width + data.draw(st.integers(0, width - 1), label="byte")
    # a bool holds 0 or 1: only its lowest bit is a valid flip
    bit = 0 if x.dtype == torch.bool else data.draw(st.integers(0, 7), label="bit")
    raw[byte] ^= 1 << bit
    flipped = from_bytes(raw, x.dtype, tuple(x.shape))
    before, after = fingerprint_tensor(x), fingerprint_tensor(flipped)
    assert not before.same_bits(after)
    assert before.digest != after.digest
    assert (before.dtype, before.shape) == (after.dtype, after.shape)


@PROPS
@given(x=tensors(dtypes=("float32", "int32", "float64", "int64"), min_dims=1, min_side=1))
def test_same_bytes_with_another_dtype_or_shape_differ(x):
    reinterpret = {
        torch.float32: torch.int32,
        torch.int32: torch.float32,
        torch.float64: torch.int64,
        torch.int64: torch.float64,
    }[x.dtype]
    x = fingerprintable(x).contiguous()
    view = x.view(reinterpret)
    a, b = fingerprint_tensor(x), fingerprint_tensor(view)
    assert a.digest == b.digest  # the very same bytes...
    assert a != b and not a.same_bits(b)  # ...but another dtype
    flat = x.reshape(-1)
    c = fingerprint_tensor(flat)
    assert c.digest == a.digest
    if flat.shape != x.shape:
        assert a != c and not a.same_bits(c)
    extra_dim = x.unsqueeze(0)  # one more dimension: always another shape
    assert fingerprint_tensor(extra_dim).digest == a.digest
    assert not a.same_bits(fingerprint_tensor(extra_dim))


@PROPS
@given(x=tensors(dtypes=FLOAT_DTYPES + ("complex64",), layouts=LAYOUTS))
def test_nan_and_inf_counts(x):
    x = fingerprintable(x)
    fp = fingerprint_tensor(x)
    assert fp.nan == int(torch.isnan(x).sum())
    assert fp.inf == int(torch.isinf(x).sum())
    unchecked = fingerprint_tensor(x, count_nonfinite=False)
    assert (unchecked.nan, unchecked.inf) == (0, 0)
    assert unchecked.same_bits(fp)


# ------------------------------------------------------------------------- every dtype


@pytest.mark.parametrize("dtype", ALL_TORCH_DTYPES, ids=str)
def test_zero_dim_and_empty_tensors_of_every_dtype(dtype):
    scalar = torch.ones((), dtype=dtype)
    fp = fingerprint_tensor(scalar)
    assert fp.shape == () and fp.numel == 1 and fp.dtype == dtype_name(dtype)
    assert fp == fingerprint_tensor(scalar.clone())
    assert fp != fingerprint_tensor(torch.zeros((), dtype=dtype))
    assert not fp.same_bits(fingerprint_tensor(torch.ones((1,), dtype=dtype)))

    empty_a, empty_b = torch.empty(0, 3, dtype=dtype), torch.empty(3, 0, dtype=dtype)
    fa, fb = fingerprint_tensor(empty_a), fingerprint_tensor(empty_b)
    assert fa.numel == 0 and fa.digest == xxhash.xxh3_64_hexdigest(b"")
    assert fa.digest == fb.digest and not fa.same_bits(fb)  # same (no) bytes, other shape
    assert fa == fingerprint_tensor(torch.empty(0, 3, dtype=dtype))


@pytest.mark.parametrize("dtype", ALL_TORCH_DTYPES, ids=str)
def test_transposed_and_sliced_views_of_every_dtype(dtype):
    base = (torch.arange(24) % 7).to(dtype).reshape(4, 6)
    for view in (base.t(), base[:, ::2], base[1:, 2:], base.t()[::2]):
        assert fingerprint_tensor(view) == fingerprint_tensor(view.contiguous())
    assert fingerprint_tensor(base.t()) != fingerprint_tensor(base.t().contiguous().reshape(4, 6))


@pytest.mark.parametrize("dtype", FLOATING + [torch.complex64], ids=str)
def test_negative_zero_differs_from_zero(dtype):
    zero = torch.zeros(3, dtype=dtype)
    negative = zero.clone()
    negative[1] = -0.0 if not dtype.is_complex else complex(-0.0, 0.0)
    assert bool(torch.equal(zero, negative))  # numerically equal...
    assert fingerprint_tensor(zero) != fingerprint_tensor(negative)  # ...bitwise not


def test_nan_payloads_count():
    quiet = torch.tensor([struct.unpack("<f", struct.pack("<I", 0x7FC00000))[0]])
    payload = torch.tensor([1], dtype=torch.int32).view(torch.float32).clone()
    payload.view(torch.int32)[0] = 0x7FC00001
    assert torch.isnan(quiet).all() and torch.isnan(payload).all()
    a, b = fingerprint_tensor(quiet), fingerprint_tensor(payload)
    assert (a.nan, b.nan) == (1, 1)
    assert not a.same_bits(b)
    assert fingerprint_tensor(quiet.clone()) == a  # the same NaN bits: equal


def test_counts_nan_and_inf_exactly():
    x = torch.tensor([1.0, float("nan"), float("inf"), float("-inf"), float("nan"), 0.0])
    fp = fingerprint_tensor(x)
    assert (fp.nan, fp.inf) == (2, 2)
    assert nonfinite_counts(x) == (2, 2)
    assert nonfinite_counts(torch.arange(5)) == (0, 0)  # integers: never non-finite
    assert nonfinite_counts(torch.empty(0)) == (0, 0)
    z = torch.tensor([complex(float("nan"), 0.0), complex(0.0, float("inf")), 1j])
    fz = fingerprint_tensor(z)
    assert (fz.nan, fz.inf) == (1, 1)


def test_requires_grad_tensors_and_non_leaves():
    w = torch.randn(3, 4, requires_grad=True)
    y = (w * 2).t()  # a non-leaf, non-contiguous view with a grad_fn
    assert fingerprint_tensor(w) == fingerprint_tensor(w.detach().clone())
    assert fingerprint_tensor(y) == fingerprint_tensor((w.detach() * 2).t().contiguous())
    assert w.grad is None  # fingerprinting does not touch autograd
    param = torch.nn.Parameter(torch.ones(2))
    assert fingerprint_tensor(param) == fingerprint_tensor(torch.ones(2))


def test_conjugate_view_fingerprints_its_values():
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    conj = z.conj()
    assert conj.is_conj()
    assert fingerprint_tensor(conj) == fingerprint_tensor(conj.resolve_conj())
    assert fingerprint_tensor(conj) != fingerprint_tensor(z)
    assert fingerprint_tensor(conj) == fingerprint_tensor(
        torch.tensor([1 - 2j, 3 + 4j], dtype=torch.complex64)
    )


def test_expanded_stride_zero_tensor():
    row = torch.arange(3.0)
    expanded = row.expand(4, 3)
    assert expanded.stride()[0] == 0
    assert fingerprint_tensor(expanded) == fingerprint_tensor(row.repeat(4, 1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(8.0).reshape(2, 4)[:1, 1],  # a column of a one-row matrix
        lambda: torch.arange(3, dtype=torch.int64)[::3],
        lambda: torch.empty(0)[::2],
        lambda: torch.empty(1, dtype=torch.float16).expand(0),
    ],
    ids=["one-row-column", "one-element-slice", "empty-slice", "empty-expanded"],
)
def test_tiny_views_with_odd_strides_fingerprint_like_their_copies(make):
    view = make()
    assert hits_stride_bug(view)
    copy = view.clone(memory_format=torch.contiguous_format)
    assert fingerprint_tensor(view) == fingerprint_tensor(copy)


def test_sparse_tensor_is_refused_with_a_hint():
    sparse = torch.eye(3).to_sparse()
    with pytest.raises(TypeError, match="to_dense"):
        fingerprint_tensor(sparse)


# ------------------------------------------------------------------------- serialisation


@PROPS
@given(x=tensors(layouts=LAYOUTS))
def test_json_roundtrip(x):
    x = fingerprintable(x)
    fp = fingerprint_tensor(x)
    text = json.dumps(fp.to_json(), allow_nan=False)
    back = Fingerprint.from_json(json.loads(text))
    assert back == fp
    assert back.same_bits(fp)
    assert isinstance(back.shape, tuple)
    assert hash(back) == hash(fp)


def test_fingerprint_json_shape():
    fp = fingerprint_tensor(torch.tensor([[1.0, float("nan")]]))
    stats = [1.0, 1.0, 1.0, 1.0, 1, 0, 0, [1.0, "nan"], [0, 1]]
    assert fp.to_json() == [fp.digest, "float32", [1, 2], 1, 0, stats]
    assert Fingerprint.from_json(fp.to_json()).stats == fp.stats
    # Files written before statistics existed hold five items: they still load, without stats.
    old = Fingerprint.from_json([fp.digest, "float32", [1, 2], 1, 0])
    assert old == fp and old.stats is None
    ints = fingerprint_tensor(torch.arange(3))
    assert ints.stats is None and len(ints.to_json()) == 5


@pytest.mark.parametrize(
    "bad",
    [
        ["d", "float32", [1], 0, 0, [1.0, 1.0, 1.0, 1.0, 0, 0, 0, [1.0]]],  # 8 items
        ["d", "float32", [1], 0, 0, [1.0, 1.0, 1.0, 1.0, -1, 0, 0, [1.0], [0]]],
        ["d", "float32", [1], 0, 0, [1.0, 1.0, 1.0, 1.0, 0, 0, 0, [1.0, 2.0], [0]]],
        ["d", "float32", [1], 0, 0, ["NaN?", 1.0, 1.0, 1.0, 0, 0, 0, [1.0], [0]]],
        ["d", "float32", [1], 0],
    ],
    ids=["short", "negative-count", "sample-length", "not-a-number", "four-items"],
)
def test_malformed_fingerprint_json_is_refused(bad):
    with pytest.raises(ValueError):
        Fingerprint.from_json(bad)


# ------------------------------------------------------------------------- statistics


def oracle_stats(x: torch.Tensor) -> dict:
    """What TensorStats must hold, computed element by element in float64 with exact sums."""
    t = x.detach().resolve_conj().resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    values = [float(v) for v in t.reshape(-1).to(torch.float64).tolist()]
    finite = [v for v in values if math.isfinite(v)]
    index = sample_indices(len(values))
    try:
        mean = math.fsum(finite) / len(finite) if finite else math.nan
        norm = math.sqrt(math.fsum(v * v for v in finite))
    except OverflowError:  # sums beyond float64 (documented: then they are inf): not checked
        mean = norm = None
    return {
        "min": min(finite) if finite else math.nan,
        "max": max(finite) if finite else math.nan,
        "mean": mean,
        "norm": norm,
        "counts": (
            sum(v != v for v in values),
            sum(v == math.inf for v in values),
            sum(v == -math.inf for v in values),
        ),
        "sample": [values[i] for i in index],
        "index": index,
    }


def same_float(a: float, b: float, rel: float = 0.0) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)


def check_stats(stats, x: torch.Tensor, rel: float = 1e-12) -> None:
    want = oracle_stats(x)
    assert same_float(stats.min, want["min"]) and same_float(stats.max, want["max"])
    if want["mean"] is not None:
        assert same_float(stats.mean, want["mean"], rel) or abs(stats.mean - want["mean"]) < 1e-12
        assert same_float(stats.norm, want["norm"], rel)
    assert (stats.nan, stats.posinf, stats.neginf) == want["counts"]
    assert stats.sample_index == want["index"]
    assert all(same_float(a, b) for a, b in zip(stats.sample, want["sample"], strict=True))


@PROPS
@given(x=tensors(dtypes=FLOAT_DTYPES + ("complex64",), layouts=LAYOUTS))
def test_statistics_of_floating_tensors(x):
    x = fingerprintable(x)
    fp = fingerprint_tensor(x)
    check_stats(fp.stats, x)
    real_nan = int(torch.isnan(torch.view_as_real(x) if x.is_complex() else x).sum())
    assert fp.stats.nan == real_nan  # counted on the real view: a complex element counts twice


@PROPS
@given(xs=st.lists(tensors(dtypes=FLOAT_DTYPES, layouts=LAYOUTS), min_size=1, max_size=6))
def test_a_batch_gives_each_tensor_what_it_gets_alone(xs):
    xs = [fingerprintable(x) for x in xs]
    together = fingerprint_many(xs).fingerprints
    for x, fp in zip(xs, together, strict=True):
        alone = fingerprint_tensor(x)
        assert fp == alone and fp.stats == alone.stats


def test_sample_indices():
    assert sample_indices(0) == ()
    assert sample_indices(3) == (0, 1, 2)
    assert sample_indices(SAMPLE_SIZE) == tuple(range(SAMPLE_SIZE))
    assert sample_indices(1000) == (0, 142, 285, 428, 570, 713, 856, 999)


def test_statistics_without_finite_elements_and_of_empty_tensors():
    stats = fingerprint_tensor(torch.tensor([float("nan"), float("inf"), -float("inf")])).stats
    assert math.isnan(stats.min) and math.isnan(stats.max) and math.isnan(stats.mean)
    assert stats.norm == 0.0 and (stats.nan, stats.posinf, stats.neginf) == (1, 1, 1)
    empty = fingerprint_tensor(torch.empty(0, 4)).stats
    assert (empty.sample, empty.sample_index, empty.norm) == ((), (), 0.0)
    assert math.isnan(empty.mean)


def test_statistics_are_computed_in_float64():
    # float32 accumulation would lose the 1.0 entirely; float64 keeps it
    x = torch.tensor([1e8, 1.0, -1e8] * 1000, dtype=torch.float32)
    assert fingerprint_tensor(x).stats.mean == pytest.approx(1.0 / 3, rel=1e-9)
    big = torch.tensor([3e38, 3e38], dtype=torch.float32)  # the float32 sum overflows
    stats = fingerprint_tensor(big).stats
    assert math.isfinite(stats.mean) and stats.nan == stats.posinf == 0


def test_stats_equality_treats_nan_as_equal_and_ignores_them_in_fingerprint_equality():
    x = torch.tensor([float("nan"), 2.0])
    a, b = fingerprint_tensor(x), fingerprint_tensor(x.clone())
    assert a.stats == b.stats and hash(a.stats) == hash(b.stats)
    assert Fingerprint(a.digest, a.dtype, a.shape, a.nan, a.inf) == a  # stats take no part
    assert a.stats != fingerprint_tensor(torch.tensor([float("nan"), 3.0])).stats
    assert isinstance(a.stats, TensorStats) and a.stats.sample == (a.stats.sample[0], 2.0)


def test_large_tensors_hashed_in_place_with_chunked_statistics(monkeypatch):
    """The path for large tensors (in place, float64 a chunk at a time, beside the hash),
    exercised on small ones by lowering its thresholds."""
    monkeypatch.setattr(fingerprint, "LARGE_BYTES", 64)
    monkeypatch.setattr(fingerprint, "OVERLAP_BYTES", 256)
    monkeypatch.setattr(tensor_stats, "STATS_CHUNK", 7)
    x = torch.randn(301, dtype=torch.float32)
    x[100], x[200], x[250] = float("nan"), float("inf"), -float("inf")
    for t in (x, x.to(torch.float16), x[::3], x.to(torch.complex64) * 1j, x.to(torch.bfloat16)):
        fp = fingerprint_tensor(t)
        assert fp.digest == xxhash.xxh3_64_hexdigest(oracle_bytes(t))
        check_stats(fp.stats, t, rel=1e-9)
        assert (fp.nan, fp.inf) == nonfinite_counts(t)


@pytest.mark.parametrize(
    "value", [0.0, -0.0, 1.5, -1e-200, 1e300, float("nan"), float("inf"), -float("inf")]
)
def test_python_floats_fingerprint_like_their_float64_tensors(value):
    fp, data = fingerprint_scalar(value)
    tensor = fingerprint_tensor(torch.tensor(value, dtype=torch.float64))
    assert fp == tensor and fp.stats == tensor.stats
    assert data == oracle_bytes(torch.tensor(value, dtype=torch.float64))


@pytest.mark.parametrize(
    ("value", "dtype"),
    [(True, torch.bool), (False, torch.bool), (7, torch.int64), (-(2**63), torch.int64)],
)
def test_python_bools_and_ints_fingerprint_like_their_tensors(value, dtype):
    fp, _ = fingerprint_scalar(value)
    assert fp == fingerprint_tensor(torch.tensor(value, dtype=dtype)) and fp.stats is None


def test_scalar_fingerprints_refuse_what_they_cannot_hold():
    with pytest.raises(OverflowError, match="int64"):
        fingerprint_scalar(2**63)
    assert fingerprint_scalar(1 + 2j) is None  # complex values take the tensor path
    assert fingerprint_scalar("text") is None


# ------------------------------------------------------------------------- device algorithm

_K1, _K2 = 0x9E3779B97F4A7C15, 0xD6E8FEB86659FD93


def mix64_oracle(t: torch.Tensor) -> str:
    """The mix64 digest by an independent route: numpy unsigned words, logical shifts."""
    data = oracle_bytes(t)
    words = np.frombuffer(data + bytes(-len(data) % 8), dtype="<u8")
    with np.errstate(over="ignore"):
        z = words ^ (np.arange(1, len(words) + 1, dtype=np.uint64) * np.uint64(_K1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        total = int(z.sum(dtype=np.uint64))
    return device_digest(total, len(data))


@PROPS
@given(x=tensors(dtypes=ALL_DTYPES + ("complex128",), layouts=LAYOUTS))
def test_device_algorithm_matches_an_independent_reference(x):
    x = fingerprintable(x)
    fp = fingerprint_many([x], algorithm="mix64").fingerprints[0]
    assert fp.digest == mix64_oracle(x)
    assert fp.algorithm == "mix64" and fp.digest.startswith("mix64:") and len(fp.digest) == 22
    assert (fp.dtype, fp.shape) == (dtype_name(x.dtype), tuple(x.shape))
    host = fingerprint_tensor(x)
    assert not fp.comparable(host) and not fp.same_bits(host)  # never equal to an xxh3 digest
    if host.stats is not None:
        # min, max, counts and samples exactly; sums in another order: to rounding
        check_stats(fp.stats, x, rel=1e-9)
        assert (fp.nan, fp.inf) == (host.nan, host.inf)


@PROPS
@given(data=st.data(), x=tensors(dtypes=ALL_DTYPES, min_dims=1, min_side=1))
def test_device_algorithm_sees_every_bit(data, x):
    raw = bytearray(oracle_bytes(x))
    byte = data.draw(st.integers(0, len(raw) - 1), label="byte")
    raw[byte] ^= 1 << (0 if x.dtype == torch.bool else data.draw(st.integers(0, 7), label="bit"))
    flipped = from_bytes(raw, x.dtype, tuple(x.shape))
    before, after = fingerprint_many([x, flipped], algorithm="mix64").fingerprints
    assert before.digest != after.digest


def test_device_digest_depends_on_position_and_length():
    a = torch.tensor([1, 2], dtype=torch.int64)
    swapped = torch.tensor([2, 1], dtype=torch.int64)
    padded = torch.tensor([1, 2, 0], dtype=torch.int64)
    digests = {
        fp.digest for fp in fingerprint_many([a, swapped, padded], algorithm="mix64").fingerprints
    }
    assert len(digests) == 3


def test_device_algorithm_in_pieces_gives_the_same_fingerprints(monkeypatch):
    """Tensors larger than a device pass are hashed in pieces whose sums add up."""
    xs = [
        torch.randn(50),
        torch.arange(37, dtype=torch.int16),
        torch.randn(9, dtype=torch.complex128),
    ]
    xs[0][7] = float("nan")
    whole = fingerprint_many(xs, algorithm="mix64").fingerprints
    monkeypatch.setattr(device_hash, "DEVICE_PASS", 8)
    pieces = fingerprint_many(xs, algorithm="mix64").fingerprints
    for a, b, x in zip(whole, pieces, xs, strict=True):
        assert a == b and a.digest == mix64_oracle(x)
        if a.stats is not None:
            assert (a.stats.min, a.stats.max) == (b.stats.min, b.stats.max)
            assert all(map(same_float, a.stats.sample, b.stats.sample))
            assert (a.stats.nan, a.stats.posinf) == (b.stats.nan, b.stats.posinf)
            assert a.stats.mean == pytest.approx(b.stats.mean, rel=1e-12)


def test_host_bytes_of_a_batch():
    xs = [torch.arange(6, dtype=torch.int32).reshape(2, 3).t(), torch.ones(3, dtype=torch.float16)]
    for algorithm in (None, "mix64"):
        batch = fingerprint_many(xs, algorithm=algorithm)
        for x, (data, _) in zip(xs, batch.host_bytes([0, 1]), strict=True):
            assert data.tobytes() == oracle_bytes(x)
