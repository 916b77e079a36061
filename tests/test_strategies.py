"""repro_check.strategies: the strategies generate valid, varied objects; perturbations are exact."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, find, given, settings
from hypothesis import strategies as st

from repro_check.strategies import (
    ALL_DTYPES,
    FLOAT_DTYPES,
    MAX_SEED,
    TORCH_MAX_SEED,
    Perturbation,
    nudge,
    seeds,
    small_perturbations,
    source_seed_maps,
    tensors,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# find() without the shrink phase: the first example found is enough, and shrinking is slow
FIND = settings(
    max_examples=500, deadline=None, database=None, derandomize=True, phases=[Phase.generate]
)

_INT_VIEW = {
    torch.float16: (torch.int16, 0x7FFF),
    torch.bfloat16: (torch.int16, 0x7FFF),
    torch.float32: (torch.int32, 0x7FFFFFFF),
    torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF),
}


def ordinal(x: torch.Tensor) -> int:
    """Position of a 0-d float on the number line in ulps (+0 and -0 both map to 0)."""
    int_dtype, magnitude_mask = _INT_VIEW[x.dtype]
    bits = int(x.reshape(1).view(int_dtype)[0])
    return bits if bits >= 0 else -(bits & magnitude_mask)


def test_importing_strategies_does_not_import_torch():
    code = (
        "import sys, repro_check.strategies as s; s.seeds(); s.tensors(); "
        "s.small_perturbations((2,)); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------- seeds


@FAST
@given(seed=seeds())
def test_seeds_are_valid_torch_seeds(seed):
    assert 0 <= seed <= MAX_SEED
    assert torch.Generator().manual_seed(seed).initial_seed() == seed


def test_seed_range_boundaries_are_reached_and_accepted_by_torch():
    assert find(seeds(), lambda s: s == 0, settings=FIND) == 0
    high = find(seeds(max_value=TORCH_MAX_SEED), lambda s: s > MAX_SEED, settings=FIND)
    assert MAX_SEED < high <= TORCH_MAX_SEED
    for seed in (0, MAX_SEED, TORCH_MAX_SEED):
        assert torch.Generator().manual_seed(seed).initial_seed() == seed
    with pytest.raises(ValueError):
        seeds(max_value=TORCH_MAX_SEED + 1)
    with pytest.raises(ValueError):
        seeds(min_value=-1)


@FAST
@given(plan=source_seed_maps())
def test_source_seed_maps_default_sources(plan):
    assert list(plan) == ["init", "data", "augment", "dropout"]
    assert all(0 <= s <= MAX_SEED for s in plan.values())


@FAST
@given(plan=source_seed_maps(("a", "b", "c"), seed_strategy=st.integers(0, 3), distinct=True))
def test_source_seed_maps_distinct(plan):
    assert set(plan) == {"a", "b", "c"}
    assert len(set(plan.values())) == 3


def test_source_seed_maps_can_repeat_seeds_and_rejects_duplicates():
    plan = find(source_seed_maps(), lambda p: p["init"] == p["data"], settings=FIND)
    assert plan["init"] == plan["data"]
    with pytest.raises(ValueError):
        source_seed_maps(("init", "init"))


# ---------------------------------------------------------------------------------- tensors


@FAST
@given(x=tensors())
def test_tensors_are_valid(x):
    assert isinstance(x, torch.Tensor)
    assert x.device.type == "cpu"
    assert str(x.dtype).removeprefix("torch.") in ALL_DTYPES
    assert x.dim() <= 3 and all(0 <= s <= 5 for s in x.shape)
    x.clone().contiguous()  # memory is readable end to end


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_every_dtype_is_generated(dtype):
    x = find(tensors(), lambda t: str(t.dtype) == f"torch.{dtype}", settings=FIND)
    assert x.dtype == getattr(torch, dtype)


@pytest.mark.parametrize(
    "name,condition",
    [
        ("0-d", lambda t: t.dim() == 0),
        ("empty", lambda t: t.numel() == 0 and t.dim() > 0),
        ("non-contiguous", lambda t: not t.is_contiguous()),
        ("storage offset", lambda t: t.storage_offset() > 0),
        ("transposed", lambda t: t.dim() >= 2 and t.stride(-2) == 1 and t.shape[-1] > 1),
        ("strided", lambda t: t.dim() >= 1 and t.stride(-1) >= 2 and t.shape[-1] > 1),
        ("nan", lambda t: t.is_floating_point() and bool(torch.isnan(t).any())),
        ("-inf", lambda t: t.is_floating_point() and bool(torch.isneginf(t).any())),
        ("-0.0", lambda t: t.is_floating_point() and bool(torch.signbit(t[t == 0]).any())),
        (
            "subnormal",
            lambda t: (
                t.is_floating_point()
                and bool(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).any())
            ),
        ),
    ],
)
def test_edge_cases_are_generated(name, condition):
    x = find(tensors(), condition, settings=FIND)
    assert condition(x), name


def test_expanded_layout_on_request():
    x = find(
        tensors(layouts=["expanded"]), lambda t: 0 in t.stride() and t.numel() > 1, settings=FIND
    )
    assert not x.is_contiguous()


@FAST
@given(x=tensors(dtypes=[*FLOAT_DTYPES, "complex64"], allow_nan=False, allow_infinity=False))
def test_finite_only_when_asked(x):
    assert bool(torch.isfinite(x).all())


@FAST
@given(x=tensors(dtypes=["float32"], min_dims=2, max_dims=2, min_side=1, max_side=3))
def test_shape_bounds(x):
    assert x.dim() == 2 and all(1 <= s <= 3 for s in x.shape)


def test_tensors_argument_checks():
    for kwargs in (
        {"dtypes": ["float8"]},
        {"dtypes": []},
        {"layouts": ["diagonal"]},
        {"min_dims": 3, "max_dims": 1},
        {"min_side": -1},
    ):
        with pytest.raises(ValueError):
            tensors(**kwargs)
    assert tensors(dtypes=[torch.float32]) is not None


# ---------------------------------------------------------------------------------- ulps


@FAST
@given(data=st.data())
def test_perturbation_changes_exactly_one_element_by_the_requested_ulps(data):
    x = data.draw(
        tensors(dtypes=FLOAT_DTYPES, min_side=1, allow_nan=False, allow_infinity=False), label="x"
    )
    p = data.draw(small_perturbations(x.shape, x.dtype), label="perturbation")
    before = x.clone()
    y = p.apply(x)
    assume(bool(torch.isfinite(y[p.index])))  # within max_ulps of the largest finite value
    assert torch.equal(x, before)  # input untouched
    assert y.shape == x.shape and y.dtype == x.dtype
    int_dtype = _INT_VIEW[x.dtype][0]
    bits_x, bits_y = x.contiguous().view(int_dtype), y.contiguous().view(int_dtype)
    assert (bits_x != bits_y).nonzero().tolist() == [list(p.index)]  # bitwise: exactly one
    assert ordinal(y[p.index]) - ordinal(x[p.index]) == p.ulps


def test_nudge_known_values():
    one = torch.tensor([1.0, 2.0])
    assert nudge(one, (0,), 1)[0].item() == 1.0 + 2.0**-23
    assert nudge(one, (0,), -1)[0].item() == 1.0 - 2.0**-24
    assert nudge(one.double(), (1,), 2)[1].item() == 2.0 + 2 * 2.0**-51
    tiny = nudge(torch.zeros(()), (), -1)
    assert tiny.item() < 0 and ordinal(tiny) == -1
    assert torch.equal(Perturbation((1,), 0)(one), one)


def test_nudge_on_non_contiguous_view():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    view = base.t()[::2]
    y = Perturbation((1, 2), 3).apply(view)
    assert (y != view).sum() == 1 and y[1, 2] > view[1, 2]
    assert torch.equal(base, torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_perturbation_argument_checks():
    with pytest.raises(ValueError):
        small_perturbations((2, 0))
    with pytest.raises(ValueError):
        small_perturbations((2,), "int32")
    with pytest.raises(ValueError):
        small_perturbations((2,), max_ulps=0)
    with pytest.raises(ValueError):
        nudge(torch.tensor([1, 2]), (0,), 1)
    with pytest.raises(ValueError):
        nudge(torch.tensor([float("nan")]), (0,), 1)
    with pytest.raises(ValueError):
        nudge(torch.tensor([float("inf")]), (0,), 1)


def test_perturbation_of_0d_shape():
    p = find(small_perturbations(()), lambda p: p.ulps < 0, settings=FIND)
    assert p.index == () and -4 <= p.ulps <= -1
    x = torch.tensor(3.0)
    assert ordinal(p.apply(x)) - ordinal(x) == p.ulps
