"""repro_check.core.compare: tensor_diff finds the exact element; compare_runs the exact step/key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repro_check.core.compare import (
    GROWTH_ROWS,
    Comparison,
    compare_runs,
    find_mismatch,
    fp64_multiplier,
    judge_against_fp64,
    tensor_diff,
    within_tolerance,
)
from repro_check.core.record import Recorder, RunRecord
from repro_check.core.spill import SpillWriter
from repro_check.strategies import FLOAT_DTYPES, tensors

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MB = 2**20


# ------------------------------------------------------------------------- tensor_diff


@PROPS
@given(
    data=st.data(),
    x=tensors(dtypes=FLOAT_DTYPES, min_side=1, allow_nan=False, allow_infinity=False),
    towards_plus=st.booleans(),
)
def test_one_nextafter_step_is_found_exactly(data, x, towards_plus):
    x = x.clone(memory_format=torch.contiguous_format)  # see test_tiny_odd_strided_views
    index = tuple(
        data.draw(st.integers(0, side - 1), label=f"i{d}") for d, side in enumerate(x.shape)
    )
    y = x.clone()
    target = torch.tensor(math.inf if towards_plus else -math.inf, dtype=x.dtype)
    y[index] = torch.nextafter(x[index], target)
    diff = tensor_diff(x, y)
    assert diff.numel == x.numel()
    assert diff.mismatched == 1
    assert diff.max_abs_index == index
    assert diff.max_abs > 0
    assert diff.reference_value == float(x[index])
    assert diff.other_value == float(y[index])
    assert diff.max_rel_index == index
    assert diff.mismatched_percent == pytest.approx(100.0 / x.numel())
    assert diff.nan_mismatched == 0
    # and it is symmetric in what it finds
    back = tensor_diff(y, x)
    assert (back.mismatched, back.max_abs_index, back.max_abs) == (1, index, diff.max_abs)


@PROPS
@given(x=tensors(min_side=0, allow_nan=False))
def test_a_tensor_has_no_difference_with_its_copy(x):
    if x.numel() == 0:
        return  # see test_empty_tensors_have_no_difference (xfail: a bug)
    x = x.clone(memory_format=torch.contiguous_format)  # see test_tiny_odd_strided_views
    diff = tensor_diff(x, x.clone())
    assert diff.mismatched == 0
    assert diff.max_abs == 0.0
    assert diff.max_rel == 0.0


def test_mismatch_count_and_percent():
    a = torch.zeros(10)
    b = a.clone()
    b[[2, 5, 7]] = torch.tensor([1.0, -3.0, 0.5])
    diff = tensor_diff(a, b)
    assert diff.mismatched == 3
    assert diff.mismatched_percent == pytest.approx(30.0)
    assert diff.max_abs == 3.0 and diff.max_abs_index == (5,)
    assert (diff.reference_value, diff.other_value) == (0.0, -3.0)
    text = diff.describe()
    assert "Mismatched elements: 3 / 10 (30.0%)" in text
    assert "Greatest absolute difference: 3 at index (5) (0.0 vs -3.0)" in text
    assert json.dumps(diff.to_json(), allow_nan=False)  # JSON-safe, inf included


def test_greatest_absolute_and_relative_differences_are_located_separately():
    a = torch.tensor([[1.0, 100.0], [5.0, 5.0]], dtype=torch.float64)
    b = torch.tensor([[1.1, 102.0], [5.0, 5.0]], dtype=torch.float64)
    diff = tensor_diff(a, b)
    assert diff.mismatched == 2
    assert diff.max_abs_index == (0, 1) and diff.max_abs == pytest.approx(2.0)
    assert diff.max_rel_index == (0, 0) and diff.max_rel == pytest.approx(0.1)
    assert "Greatest relative difference: 0.1 at index (0, 0)" in diff.describe()


def test_relative_difference_against_zero_is_infinite():
    diff = tensor_diff(torch.tensor([0.0, 1.0]), torch.tensor([1e-30, 1.0]))
    assert diff.max_rel == math.inf and diff.max_rel_index == (0,)
    assert diff.to_json()["max_rel"] == "inf"


def test_nan_against_a_number():
    a = torch.tensor([1.0, float("nan"), 3.0])
    b = torch.tensor([1.0, 2.0, 3.0])
    diff = tensor_diff(a, b)
    assert diff.mismatched == 1
    assert diff.nan_mismatched == 1
    assert diff.max_abs == math.inf and diff.max_abs_index == (1,)
    assert math.isnan(diff.reference_value) and diff.other_value == 2.0
    assert "NaN on one side only: 1 elements" in diff.describe()


def test_identical_nans_do_not_differ_but_nan_payloads_do():
    a = torch.tensor([float("nan"), 1.0])
    assert tensor_diff(a, a.clone()).mismatched == 0
    other_payload = a.clone()
    other_payload.view(torch.int32)[0] = 0x7FC00001  # another NaN
    diff = tensor_diff(a, other_payload)
    assert diff.mismatched == 1  # the bits differ...
    assert diff.nan_mismatched == 0 and diff.max_abs == 0.0  # ...the values are both NaN


def test_negative_zero_is_a_bitwise_mismatch_of_size_zero():
    diff = tensor_diff(torch.tensor([0.0, 1.0]), torch.tensor([-0.0, 1.0]))
    assert diff.mismatched == 1
    assert diff.max_abs == 0.0


@pytest.mark.parametrize(
    ("a", "b", "index"),
    [
        (
            torch.tensor([1, 2, 3], dtype=torch.int8),
            torch.tensor([1, 5, 3], dtype=torch.int8),
            (1,),
        ),
        (torch.tensor([[True, False]]), torch.tensor([[True, True]]), (0, 1)),
        (torch.tensor(7, dtype=torch.int64), torch.tensor(9, dtype=torch.int64), ()),
        (
            torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
            torch.tensor([1.0, 2.5], dtype=torch.bfloat16),
            (1,),
        ),
    ],
    ids=["int8", "bool", "0-d int64", "bfloat16"],
)
def test_integer_bool_and_0d_tensors(a, b, index):
    diff = tensor_diff(a, b)
    assert diff.mismatched == 1
    assert diff.max_abs_index == index


def test_dtype_or_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="equal dtype and shape"):
        tensor_diff(torch.zeros(3), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="equal dtype and shape"):
        tensor_diff(torch.zeros(3), torch.zeros(1, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool], ids=str)
def test_empty_tensors_have_no_difference(dtype):
    diff = tensor_diff(torch.empty(0, 3, dtype=dtype), torch.empty(0, 3, dtype=dtype))
    assert (diff.numel, diff.mismatched) == (0, 0)


def test_tiny_odd_strided_views():
    column = torch.arange(8.0).reshape(2, 4)[:1, 1]  # one element, stride 4
    diff = tensor_diff(column, column + 1)
    assert (diff.mismatched, diff.max_abs_index) == (1, (0,))


def test_complex_difference_is_the_modulus_of_the_difference():
    a = torch.tensor([1 + 1j, 2 + 0j], dtype=torch.complex64)
    b = torch.tensor([1 - 1j, 2 + 0j], dtype=torch.complex64)
    diff = tensor_diff(a, b)
    assert diff.mismatched == 1
    assert diff.max_abs == pytest.approx(2.0)


# ------------------------------------------------------------------------- compare_runs


def train_run(
    tmp_path: Path,
    name: str,
    *,
    steps: int = 6,
    budget: int = 64 * MB,
    perturb: tuple[int, str, tuple[int, ...]] | None = None,
    delta: float | None = None,
    spill: bool = True,
) -> RunRecord:
    """A real training run (Linear + SGD with momentum) recorded with a spill file.

    ``perturb=(step, parameter, index)`` moves one element of one parameter by one ulp right
    after that step's optimizer update, before recording -- a planted divergence (by ``delta``
    instead of one ulp when given).
    """
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(1)
    writer = SpillWriter(tmp_path / f"{name}.bin", budget) if spill else None
    recorder = Recorder(writer)
    for step in range(steps):
        x = torch.randn(16, 5, generator=data)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if perturb is not None and perturb[0] == step:
            parameter = dict(model.named_parameters())[perturb[1]]
            with torch.no_grad():
                element = parameter[perturb[2]]
                moved = torch.nextafter(element, element + 1) if delta is None else element + delta
                parameter[perturb[2]] = moved
        recorder.record(step, {"model": model, "optimizer": optimizer, "loss": loss})
    return recorder.close()


def test_identical_runs(tmp_path):
    a, b = train_run(tmp_path, "a"), train_run(tmp_path, "b")
    comparison = compare_runs(a, b)
    assert isinstance(comparison, Comparison)
    assert comparison.identical
    assert comparison.structural is None and comparison.divergence is None


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    step=st.integers(0, 5),
    parameter=st.sampled_from(["weight", "bias"]),
    data=st.data(),
)
def test_divergence_is_reported_at_the_exact_step_and_key(tmp_path_factory, step, parameter, data):
    tmp = tmp_path_factory.mktemp("runs")
    index = (data.draw(st.integers(0, 2)),) + (
        (data.draw(st.integers(0, 4)),) if parameter == "weight" else ()
    )
    reference = train_run(tmp, "ref")
    other = train_run(tmp, "other", perturb=(step, parameter, index))
    comparison = compare_runs(reference, other)
    assert not comparison.identical and comparison.structural is None
    d = comparison.divergence
    assert d is not None
    assert d.step == step
    assert d.key == f"model.{parameter}"
    assert d.keys_differing[0] == f"model.{parameter}"
    assert d.shape == ((3, 5) if parameter == "weight" else (3,))
    assert d.dtype == "float32"
    # element-level detail from the spill files: exactly the planted element, by one ulp
    assert d.detail is not None and d.detail_unavailable is None
    assert d.detail.mismatched == 1
    assert d.detail.max_abs_index == index
    assert 0 < d.detail.max_abs < 1e-6
    assert d.growth[0].step == step
    assert json.dumps(d.to_json(), allow_nan=False)


def test_detail_unavailable_without_spill_budget(tmp_path):
    reference = train_run(tmp_path, "ref", budget=0)
    other = train_run(tmp_path, "other", budget=0, perturb=(2, "bias", (1,)))
    assert reference.spill_exhausted and other.spill_exhausted
    d = compare_runs(reference, other).divergence
    assert d is not None and (d.step, d.key) == (2, "model.bias")
    assert d.detail is None
    assert "--repro-spill-mb" in d.detail_unavailable
    assert all(row.max_abs is None for row in d.growth)


def test_detail_unavailable_when_nothing_was_spilled(tmp_path):
    reference = train_run(tmp_path, "ref", spill=False)
    other = train_run(tmp_path, "other", spill=False, perturb=(1, "weight", (0, 0)))
    d = compare_runs(reference, other).divergence
    assert d is not None and d.detail is None
    assert "not spilled" in d.detail_unavailable


def test_budget_exhausted_midway_keeps_early_detail_only(tmp_path):
    # Linear(5, 3) + momentum: well under 1 KB per step; 600 bytes run out during step 1 or 2
    reference = train_run(tmp_path, "ref", budget=600)
    other = train_run(tmp_path, "other", budget=600, perturb=(0, "weight", (2, 4)))
    assert reference.spill_exhausted
    d = compare_runs(reference, other).divergence
    assert d is not None and d.step == 0
    assert d.detail is not None and d.detail.max_abs_index == (2, 4)


def test_exhausted_shared_spill_still_points_at_the_budget_flag(tmp_path):
    writers = {name: SpillWriter(tmp_path / f"{name}.bin", 100) for name in ("ref", "other")}
    runs = {}
    for name, writer in writers.items():
        # an earlier test in the same replica session used up the budget
        first = Recorder(writer)
        first.record(0, {"big": torch.zeros(1000)})
        assert writer.exhausted
        second = Recorder(writer)
        second.record(0, {"x": torch.tensor([1.0, 2.0 if name == "ref" else 3.0])})
        runs[name] = second.run
    d = compare_runs(runs["ref"], runs["other"]).divergence
    assert d is not None and d.detail is None
    assert "--repro-spill-mb" in d.detail_unavailable


# ------------------------------------------------------------------------- structure


def record(steps: list[tuple[int, dict]]) -> RunRecord:
    recorder = Recorder(None)
    for step, state in steps:
        recorder.record(step, state)
    return recorder.close()


def test_different_number_of_steps():
    a = record([(0, {"x": torch.ones(2)}), (1, {"x": torch.ones(2)})])
    b = record([(0, {"x": torch.ones(2)})])
    s = compare_runs(a, b).structural
    assert s is not None and s.kind == "steps"
    assert "2 vs 1 records" in s.message
    assert "step 1 vs (none)" in s.message


def test_different_step_numbers():
    a = record([(0, {"x": torch.ones(2)}), (1, {"x": torch.ones(2)})])
    b = record([(0, {"x": torch.ones(2)}), (2, {"x": torch.ones(2)})])
    s = compare_runs(a, b).structural
    assert s is not None and s.kind == "steps" and s.step == 1
    assert "step 1 vs step 2" in s.message


def test_steps_mismatch_carries_the_step_number():
    # regression: the step used to be the display string "step 1"
    a = record([(0, {"x": torch.ones(2)}), (1, {"x": torch.ones(2)})])
    b = record([(0, {"x": torch.ones(2)})])
    s = compare_runs(a, b).structural
    assert s is not None and s.kind == "steps"
    assert s.step == 1
    assert s.to_json()["step"] == 1


def test_different_key_sets_name_the_keys():
    a = record([(0, {"x": torch.ones(2), "y": torch.ones(2)})])
    b = record([(0, {"x": torch.ones(2), "z": torch.ones(2)})])
    s = compare_runs(a, b).structural
    assert s is not None and s.kind == "keys" and s.step == 0
    assert "only in the reference: y" in s.message
    assert "only in the other replica: z" in s.message
    assert s.key == "y"


def test_same_keys_in_another_order():
    a = record([(0, {"x": torch.ones(2), "y": torch.ones(2)})])
    b = record([(0, {"y": torch.ones(2), "x": torch.ones(2)})])
    s = compare_runs(a, b).structural
    assert s is not None and s.kind == "keys"
    assert "different order" in s.message


def test_dtype_change_is_structural():
    a = record([(0, {"x": torch.ones(2)})])
    b = record([(0, {"x": torch.ones(2, dtype=torch.float64)})])
    s = compare_runs(a, b).structural
    assert s is not None and (s.kind, s.step, s.key) == ("dtype", 0, "x")
    assert "float32 vs float64" in s.message


def test_shape_change_is_structural():
    a = record([(0, {"x": torch.ones(2)}), (1, {"x": torch.ones(2)})])
    b = record([(0, {"x": torch.ones(2)}), (1, {"x": torch.ones(1, 2)})])
    s = compare_runs(a, b).structural
    assert s is not None and (s.kind, s.step, s.key) == ("shape", 1, "x")
    assert s.to_json()["kind"] == "shape"


def test_structure_is_checked_before_values():
    a = record([(0, {"x": torch.ones(2)}), (1, {"x": torch.ones(2)})])
    b = record([(0, {"x": torch.zeros(2)}), (1, {"x": torch.ones(3)})])
    comparison = compare_runs(a, b)
    assert comparison.structural is not None and comparison.structural.kind == "shape"
    assert comparison.divergence is None


# ------------------------------------------------------------------------- growth table


def test_growth_table_rows(tmp_path):
    steps = 20
    reference = train_run(tmp_path, "ref", steps=steps)
    other = train_run(tmp_path, "other", steps=steps, perturb=(2, "weight", (1, 1)), delta=0.05)
    d = compare_runs(reference, other).divergence
    assert d is not None and (d.step, d.key) == (2, "model.weight")
    rows = d.growth
    assert 1 < len(rows) <= GROWTH_ROWS
    assert [r.step for r in rows[:3]] == [2, 3, 4]  # the first rows, then spread to the end
    assert rows[-1].step == steps - 1
    assert [r.step for r in rows] == sorted({r.step for r in rows})
    assert all(r.keys_total == len(reference.steps[0].entries) for r in rows)
    assert rows[0].keys_differing == 1  # only the planted weight at the planted step
    assert rows[1].keys_differing > 1  # then it spreads (bias, momentum, loss, ...)
    assert rows[0].max_abs is not None and rows[0].max_abs > 0
    assert rows[0].metrics["metric.loss"][0] == rows[0].metrics["metric.loss"][1]  # before
    assert rows[-1].metrics["metric.loss"][0] != rows[-1].metrics["metric.loss"][1]  # after
    assert json.dumps([r.to_json() for r in rows], allow_nan=False)


def test_short_divergence_lists_every_remaining_step(tmp_path):
    reference = train_run(tmp_path, "ref", steps=5)
    other = train_run(tmp_path, "other", steps=5, perturb=(1, "bias", (0,)))
    d = compare_runs(reference, other).divergence
    assert d is not None
    assert [r.step for r in d.growth] == [1, 2, 3, 4]


# ------------------------------------------------------------------------- the one formatter


def test_find_mismatch_speaks_assert_close_words_with_tolerances():
    reference = np.zeros(100)
    other = reference.copy()
    other[[3, 40, 77]] = [1e-3, -2.0, 5e-6]
    found = find_mismatch(reference, other, atol=1e-5, rtol=1e-3, shape=(10, 10))
    assert (found.mismatched, found.numel) == (2, 100)  # 5e-6 is within atol
    assert found.max_abs_index == (4, 0) and found.max_abs == 2.0
    assert found.lines() == [
        "Mismatched elements: 2 / 100 (2.0%)",
        "Greatest absolute difference: 2 at index (4, 0) (0.0 vs -2.0) (up to 1e-05 allowed)",
        "Greatest relative difference: inf at index (0, 3) (up to 0.001 allowed)",
    ]


def test_find_mismatch_is_bitwise_without_tolerances_and_names_labels():
    found = find_mismatch([1.0, 2.0, 3.0], [1.0, 2.5, 3.0], labels=["in min", "in max", "in norm"])
    assert found.mismatched == 1
    assert "Greatest absolute difference: 0.5 in max (2.0 vs 2.5)" in found.lines()
    assert not any("allowed" in line for line in found.lines())  # equality: no tolerance shown


def test_find_mismatch_nan_policy():
    a = np.array([np.nan, 1.0, np.inf, -np.inf])
    same_values = find_mismatch(a, a.copy(), atol=0.1)
    assert same_values.mismatched == 0 and same_values.max_abs == 0.0  # NaN == NaN, inf == inf
    moved = find_mismatch(a, np.array([1.0, 1.0, np.inf, np.inf]), atol=0.1)
    assert moved.mismatched == 2 and moved.nan_mismatched == 1
    assert moved.max_abs == math.inf
    assert "NaN on one side only: 1 elements" in moved.lines()


def test_within_tolerance_reports_in_the_same_words(tmp_path):
    reference = train_run(tmp_path, "ref", steps=3)
    other = train_run(tmp_path, "other", steps=3, perturb=(1, "weight", (2, 3)), delta=0.5)
    check = within_tolerance(reference, other, 1e-4, 0.0)
    assert not check.within and (check.worst_step, check.worst_key) == (1, "model.weight")
    assert check.message.startswith("step 1, model.weight is not close (atol=0.0001, rtol=0): ")
    assert "Mismatched elements: 1 / 15 (6.7%)" in check.message
    assert "Greatest absolute difference: 0.5 at index (2, 3)" in check.message
    assert check.mismatch is not None and check.mismatch.max_abs_index == (2, 3)
    assert within_tolerance(reference, other, 1.0, 0.0).within


# ------------------------------------------------------------------------- the float64 rule


def float32_products(seed: int, scale: float, rows: int = 128, inner: int = 1024):
    """y = A @ x in float64 (the record) and in float32 by three orders of reduction: BLAS, and
    blocked sums over 8- and 256-element chunks, as other threads/ISAs/devices would run it."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, inner, generator=g, dtype=torch.float64) * scale
    x = torch.randn(inner, generator=g, dtype=torch.float64)
    a32, x32 = a.float(), x.float()
    orders = {
        "blas": a32 @ x32,
        "chunk8": (a32.view(rows, -1, 8) * x32.view(-1, 8)).sum(-1).sum(-1),
        "lanes256": (a32.view(rows, 256, -1) * x32.view(256, -1)).sum(-2).sum(-1),
    }
    return (a @ x).numpy(), {k: v.double().numpy() for k, v in orders.items()}


SCALES = [1e-6, 1.0, 1e6]


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"scale={s:g}")
@pytest.mark.parametrize("rows", [5, 128, 4096])
def test_reduction_order_noise_passes_at_any_scale(scale, rows):
    for seed in range(3):
        fp64, orders = float32_products(seed, scale, rows=rows)
        for ref in orders:
            for candidate in orders:
                judged = judge_against_fp64(orders[ref], orders[candidate], fp64)
                assert judged.agrees, (ref, candidate, judged.reason)
                assert judged.multiplier == fp64_multiplier(rows)


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"scale={s:g}")
def test_a_one_percent_scale_bug_fails_at_any_scale(scale):
    fp64, orders = float32_products(0, scale)
    judged = judge_against_fp64(orders["blas"], orders["chunk8"] * 1.01, fp64)
    assert not judged.agrees
    assert judged.candidate_error > 1000 * judged.ref_error
    assert "> allowed" in judged.reason


@pytest.mark.parametrize("gamma", SCALES, ids=lambda s: f"gamma={s:g}")
def test_a_wrong_epsilon_fails_while_float32_rounding_passes(gamma):
    """Layer norm of unit-variance rows, epsilon 1e-6 instead of 1e-5: a 4.5e-6 relative change,
    some 40 float32 roundings -- far below any fixed rtol a user would write, and still a bug."""
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def layer_norm(t: torch.Tensor, eps: float) -> np.ndarray:
        out = torch.nn.functional.layer_norm(t, (512,), eps=eps) * gamma
        return out.double().numpy()

    fp64 = layer_norm(x, 1e-5)
    ref32 = layer_norm(x.float(), 1e-5)
    manual = (x.float() - x.float().mean(-1, keepdim=True)) / torch.sqrt(
        x.float().var(-1, unbiased=False, keepdim=True) + 1e-5
    )
    other_order = (manual * gamma).double().numpy()  # the same maths, another kernel
    assert judge_against_fp64(ref32, other_order, fp64).agrees
    wrong = judge_against_fp64(ref32, layer_norm(x.float(), 1e-6), fp64)
    assert not wrong.agrees, wrong.reason


def test_the_rule_is_scale_free():
    fp64, orders = float32_products(2, 1.0)
    base = judge_against_fp64(orders["blas"], orders["chunk8"], fp64)
    for scale in (2.0**-20, 2.0**20):  # powers of two: the same roundings, exactly scaled
        scaled = judge_against_fp64(orders["blas"] * scale, orders["chunk8"] * scale, fp64 * scale)
        assert scaled.agrees == base.agrees
        assert scaled.candidate_error / scaled.allowed == pytest.approx(
            base.candidate_error / base.allowed
        )


def test_an_exact_reference_leaves_the_floor():
    fp64 = np.array([1.0, 0.5, 0.25, 3.0])
    one_rounding_away = fp64 * (1 + np.finfo(np.float32).eps)
    judged = judge_against_fp64(fp64.copy(), one_rounding_away, fp64)
    assert judged.ref_error == 0.0 and judged.floor > 0 and judged.agrees
    assert not judge_against_fp64(fp64.copy(), fp64 * 1.001, fp64).agrees


def test_nan_in_the_candidate_only_fails_and_nan_in_the_reference_is_skipped():
    fp64 = np.array([1.0, 2.0, 3.0, 4.0])
    ref32 = fp64 + 1e-7
    judged = judge_against_fp64(ref32, np.array([1.0, np.nan, 3.0, 4.0]), fp64)
    assert not judged.agrees and "NaN/inf where the float32 reference" in judged.reason
    unstable_ref = np.array([1.0, np.nan, 3.0, 4.0])
    judged = judge_against_fp64(unstable_ref, ref32, fp64)
    assert judged.agrees and judged.compared == 3


def test_multipliers_and_explicit_overrides():
    assert [fp64_multiplier(n) for n in (1, 10, 11, 999, 1000)] == [10, 10, 3, 3, 2]
    assert fp64_multiplier(5000, "bfloat16") == 3
    fp64 = np.linspace(1, 2, 50)
    ref32, candidate = fp64 + 1e-3, fp64 + 2.5e-3
    assert judge_against_fp64(ref32, candidate, fp64).agrees  # 2.5x <= 3x
    assert not judge_against_fp64(ref32, candidate, fp64, multiplier=2.0, floor=0.0).agrees
    with pytest.raises(ValueError, match="equally long"):
        judge_against_fp64([1.0], [1.0, 2.0], [1.0])
