"""repro_check.core.record / spill: keys, fingerprints, type errors, spill de-duplication, JSON."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import xxhash

from repro_check.core import fingerprint
from repro_check.core import spill as spill_module
from repro_check.core.compare import compare_runs
from repro_check.core.context import RunContext
from repro_check.core.fingerprint import fingerprint_tensor
from repro_check.core.leaves import optimizer_state
from repro_check.core.record import (
    Recorder,
    RNGState,
    RunRecord,
    _flatten_optimizer,
    as_tensor,
    check_recordable,
    flatten_leaves,
    flatten_state,
)
from repro_check.core.seeding import SeedPlan
from repro_check.core.spill import SpillWriter, read_spilled

MB = 2**20


def keys_of(name, value):
    return [key for key, _ in flatten_state(name, value)]


def one_step(state, spill=None):
    recorder = Recorder(spill)
    return recorder.record(0, state).entries


def trained_adam():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model(torch.randn(8, 3)).pow(2).mean()
    loss.backward()
    optimizer.step()
    return model, optimizer, loss


# ------------------------------------------------------------------------- keys


def test_module_keys_are_parameters_and_buffers():
    model, _, _ = trained_adam()
    assert keys_of("model", model) == [
        "model.0.weight",
        "model.0.bias",
        "model.1.weight",
        "model.1.bias",
        "model.1.running_mean",
        "model.1.running_var",
        "model.1.num_batches_tracked",
    ]
    entries = one_step({"model": model})
    assert entries["model.1.running_var"].fingerprint == fingerprint_tensor(model[1].running_var)
    assert entries["model.1.num_batches_tracked"].fingerprint.dtype == "int64"
    assert all(entry.value is None for entry in entries.values())  # not metrics


def test_optimizer_keys():
    model, optimizer, _ = trained_adam()
    keys = keys_of("optimizer", optimizer)
    for index in range(4):  # four parameters
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert f"optimizer.state.{index}.{name}" in keys
    for name in ("lr", "eps", "weight_decay", "amsgrad", "betas.0", "betas.1"):
        assert f"optimizer.param_groups.0.{name}" in keys
    assert not any("params" in key for key in keys)
    entries = one_step({"optimizer": optimizer})
    exp_avg = optimizer.state[model[0].weight]["exp_avg"]
    assert entries["optimizer.state.0.exp_avg"].fingerprint == fingerprint_tensor(exp_avg)
    assert entries["optimizer.param_groups.0.lr"].fingerprint == fingerprint_tensor(
        torch.tensor(1e-3, dtype=torch.float64)
    )


def test_optimizer_fingerprints_follow_the_learning_rate():
    _, optimizer, _ = trained_adam()
    before = one_step({"optimizer": optimizer})
    optimizer.param_groups[0]["lr"] = 5e-4
    after = one_step({"optimizer": optimizer})
    changed = [k for k in before if not before[k].fingerprint.same_bits(after[k].fingerprint)]
    assert changed == ["optimizer.param_groups.0.lr"]


def test_sgd_momentum_buffer_key():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    keys = keys_of("opt", optimizer)
    assert "opt.state.0.momentum_buffer" in keys and "opt.state.1.momentum_buffer" in keys
    assert "opt.param_groups.0.momentum" in keys


def test_lr_scheduler_keys_and_values():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    keys = keys_of("scheduler", scheduler)
    for key in (
        "scheduler.last_epoch",
        "scheduler.step_size",
        "scheduler.gamma",
        "scheduler.base_lrs.0",
        "scheduler._last_lr.0",
    ):
        assert key in keys
    before = one_step({"scheduler": scheduler})
    optimizer.step()
    scheduler.step()
    after = one_step({"scheduler": scheduler})
    assert not before["scheduler.last_epoch"].fingerprint.same_bits(
        after["scheduler.last_epoch"].fingerprint
    )
    assert before["scheduler.gamma"].fingerprint.same_bits(after["scheduler.gamma"].fingerprint)


def test_scalars_become_metrics_with_values():
    entries = one_step(
        {
            "loss": torch.tensor(0.25),
            "accuracy": 0.75,
            "epoch": 3,
            "converged": False,
            "np_loss": np.float32(1.5),
            "np_count": np.int64(7),
        }
    )
    assert list(entries) == [
        "metric.loss",
        "metric.accuracy",
        "metric.epoch",
        "metric.converged",
        "metric.np_loss",
        "metric.np_count",
    ]
    assert entries["metric.loss"].value == 0.25
    assert entries["metric.accuracy"].value == 0.75
    assert entries["metric.epoch"].value == 3.0
    assert entries["metric.converged"].value == 0.0
    assert entries["metric.np_loss"].value == 1.5
    assert entries["metric.np_count"].value == 7.0
    assert entries["metric.loss"].fingerprint.dtype == "float32"
    assert entries["metric.accuracy"].fingerprint.dtype == "float64"
    assert entries["metric.epoch"].fingerprint.dtype == "int64"
    assert entries["metric.converged"].fingerprint.dtype == "bool"


def test_nested_dicts_and_lists():
    state = {"a": torch.ones(2), "b": [1.5, torch.zeros(3), {"c": 2}], "d": (True,)}
    assert keys_of("stats", state) == [
        "stats.a",
        "stats.b.0",
        "stats.b.1",
        "stats.b.2.c",
        "stats.d.0",
    ]
    entries = one_step({"stats": state})
    assert entries["stats.b.1"].fingerprint.shape == (3,)
    assert entries["stats.b.0"].value is None  # nested numbers are state, not metrics


def test_tensors_that_are_not_scalars_keep_their_name():
    entries = one_step({"logits": torch.ones(2, 3)})
    assert list(entries) == ["logits"]
    assert entries["logits"].value is None


def test_numpy_arrays_including_non_contiguous():
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    entries = one_step({"arr": array, "cols": array[:, ::2], "fortran": np.asfortranarray(array)})
    assert entries["arr"].fingerprint == fingerprint_tensor(torch.arange(12).reshape(3, 4))
    assert entries["cols"].fingerprint == fingerprint_tensor(torch.from_numpy(array[:, ::2].copy()))
    assert entries["cols"].fingerprint.shape == (3, 2)
    assert entries["fortran"].fingerprint == entries["arr"].fingerprint


def test_zero_dim_numpy_array_keeps_its_shape():
    entries = one_step({"zero_d": np.array(2.5)})
    assert entries["metric.zero_d"].fingerprint.shape == ()
    assert entries["metric.zero_d"].value == 2.5


def test_rng_state_keys_and_which_one_moves():
    state_keys = ["rng.python", "rng.numpy", "rng.torch"]
    assert keys_of("rng", RNGState())[:3] == state_keys
    before = one_step({"rng": RNGState()})
    random.random()
    after_python = one_step({"rng": RNGState()})
    np.random.rand()
    after_numpy = one_step({"rng": RNGState()})
    torch.rand(1)
    after_torch = one_step({"rng": RNGState()})

    def moved(a, b):
        return [k for k in state_keys if not a[k].fingerprint.same_bits(b[k].fingerprint)]

    assert moved(before, after_python) == ["rng.python"]
    assert moved(after_python, after_numpy) == ["rng.numpy"]
    assert moved(after_numpy, after_torch) == ["rng.torch"]
    assert moved(before, one_step({"rng": RNGState()})) == state_keys


def test_rng_state_of_the_context_is_recordable():
    context = RunContext(SeedPlan(1), recorder=Recorder(None))
    context.record(0, rng=context.rng_state())
    assert "rng.torch" in context.close().steps[0].entries


def test_torch_generator():
    generator = torch.Generator().manual_seed(3)
    before = one_step({"gen": generator})
    assert list(before) == ["gen"] and before["gen"].fingerprint.dtype == "uint8"
    assert (
        before["gen"].fingerprint
        == one_step({"gen": torch.Generator().manual_seed(3)})["gen"].fingerprint
    )
    torch.rand(1, generator=generator)
    assert not one_step({"gen": generator})["gen"].fingerprint.same_bits(before["gen"].fingerprint)


# ------------------------------------------------------------------------- errors


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ("hello", "builtins.str"),
        (object(), "builtins.object"),
        (None, "builtins.NoneType"),
        (Opaque(), "Opaque"),
    ],
    ids=["str", "object", "None", "custom"],
)
@pytest.mark.parametrize("path", ["recorder", "check_recordable"])
def test_unsupported_value_names_key_and_type(path, value, type_name):
    with pytest.raises(TypeError) as excinfo:
        if path == "recorder":
            Recorder(None).record(0, {"name": value})
        else:
            check_recordable(0, {"name": value})
    message = str(excinfo.value)
    assert "'name'" in message
    assert type_name in message
    assert "record accepts" in message


def test_python_complex_scalar_is_recorded_as_complex128_metric():
    entry = one_step({"z": 1 + 2j})["metric.z"]
    assert entry.fingerprint.dtype == "complex128"
    assert entry.fingerprint.digest != one_step({"z": 1 - 2j})["metric.z"].fingerprint.digest


def test_unsupported_nested_value_names_the_dotted_key_in_the_recorder():
    with pytest.raises(TypeError, match=r"'stats\.inner\.1'.*builtins\.str"):
        Recorder(None).record(0, {"stats": {"inner": [1.0, "x"]}})


def test_check_recordable_looks_inside_containers():
    with pytest.raises(TypeError, match=r"'stats\.inner\.1'"):
        check_recordable(0, {"stats": {"inner": [1.0, "x"]}})


def test_numpy_bool_scalar_is_a_metric():
    entries = one_step({"done": np.bool_(True)})
    assert entries["metric.done"].value == 1.0


@pytest.mark.filterwarnings("ignore:Casting complex values")
def test_numpy_complex_scalars_differing_in_imaginary_part_differ():
    a = one_step({"z": np.complex128(1 + 2j)})["metric.z"].fingerprint
    b = one_step({"z": np.complex128(1 - 5j)})["metric.z"].fingerprint
    assert not a.same_bits(b)


@pytest.mark.parametrize("step", ["0", 1.0, True, None])
def test_step_must_be_an_int(step):
    with pytest.raises(TypeError, match="step must be an int"):
        Recorder(None).record(step, {"x": torch.ones(1)})
    with pytest.raises(TypeError, match="step must be an int"):
        check_recordable(step, {"x": torch.ones(1)})


def test_numpy_integer_step_is_accepted():
    recorder = Recorder(None)
    recorder.record(np.int64(4), {"x": torch.ones(1)})
    assert recorder.run.steps[0].step == 4 and type(recorder.run.steps[0].step) is int


def test_duplicate_key_in_one_step():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"'model\.weight' recorded twice"):
        Recorder(None).record(0, {"model": model, "model.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="recorded twice"):
        Recorder(None).record(0, {"a": RNGState(), "b": RNGState()})


def test_check_recordable_accepts_what_the_recorder_accepts():
    model, optimizer, loss = trained_adam()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    state = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "loss": loss,
        "rng": RNGState(),
        "gen": torch.Generator(),
        "arr": np.ones(2),
        "n": 3,
    }
    check_recordable(0, state)  # no error
    assert len(Recorder(None).record(0, state).entries) > 10


# ------------------------------------------------------------------------- spill


def test_spill_writes_identical_bytes_once(tmp_path):
    writer = SpillWriter(tmp_path / "spill.bin", 64 * MB)
    recorder = Recorder(writer)
    frozen = torch.arange(100, dtype=torch.float32)
    a = recorder.record(0, {"frozen": frozen, "moving": torch.zeros(10)}).entries
    b = recorder.record(1, {"frozen": frozen.clone(), "moving": torch.ones(10)}).entries
    c = recorder.record(2, {"frozen": frozen, "as_int": frozen.view(torch.int32)}).entries
    run = recorder.close()
    assert a["frozen"].spill == b["frozen"].spill == c["frozen"].spill
    assert a["moving"].spill != b["moving"].spill
    # same bytes under another dtype are another tensor: stored again
    assert c["as_int"].spill is not None and c["as_int"].spill != c["frozen"].spill
    assert writer.written == 400 + 40 + 40 + 400
    assert (tmp_path / "spill.bin").stat().st_size == writer.written
    assert run.bytes_fingerprinted == 400 * 3 + 40 * 2 + 400
    back = read_spilled(b["moving"].spill, "float32", (10,))
    assert torch.equal(back, torch.ones(10))
    assert torch.equal(read_spilled(c["as_int"].spill, "int32", (100,)), frozen.view(torch.int32))
    assert not run.spill_exhausted


def test_spill_budget(tmp_path):
    writer = SpillWriter(tmp_path / "spill.bin", 100)
    recorder = Recorder(writer)
    entries = recorder.record(0, {"small": torch.zeros(10), "big": torch.zeros(100)}).entries
    assert entries["small"].spill is not None
    assert entries["big"].spill is None
    assert writer.exhausted and recorder.run.spill_exhausted
    later = recorder.record(1, {"small2": torch.ones(2)}).entries
    assert later["small2"].spill is None  # past the budget nothing more is written


def test_spill_of_non_contiguous_and_special_tensors_reads_back_bitwise(tmp_path):
    writer = SpillWriter(tmp_path / "spill.bin", 64 * MB)
    recorder = Recorder(writer)
    base = torch.tensor([[0.0, -0.0, float("nan")], [float("inf"), 1e-45, -2.0]])
    state = {"t": base.t(), "half": base.to(torch.bfloat16), "flags": base.isnan()}
    entries = recorder.record(0, state).entries
    recorder.close()
    for key, tensor in state.items():
        fp = entries[key].fingerprint
        back = read_spilled(entries[key].spill, fp.dtype, fp.shape)
        assert fingerprint_tensor(back) == fp
        assert back.view(torch.uint8).tolist() == tensor.contiguous().view(torch.uint8).tolist()


# ------------------------------------------------------------------------- JSON


def test_run_record_json_roundtrip(tmp_path):
    model, optimizer, loss = trained_adam()
    recorder = Recorder(SpillWriter(tmp_path / "spill.bin", 64 * MB))
    recorder.record(0, {"model": model, "optimizer": optimizer, "loss": loss})
    recorder.record(1, {"loss": float("nan"), "best": float("inf"), "rng": RNGState()})
    run = recorder.close()
    text = json.dumps(run.to_json(), allow_nan=False)
    back = RunRecord.from_json(json.loads(text))
    assert [s.step for s in back.steps] == [0, 1]
    assert back.keys == run.keys
    assert back.bytes_fingerprinted == run.bytes_fingerprinted
    assert back.spill_path == run.spill_path and not back.spill_exhausted
    assert compare_runs(run, back).identical
    for original, restored in zip(run.steps, back.steps, strict=True):
        assert list(original.entries) == list(restored.entries)
        for key, entry in original.entries.items():
            other = restored.entries[key]
            assert other.fingerprint == entry.fingerprint
            assert other.spill == entry.spill
            if entry.value is None:
                assert other.value is None
            elif math.isnan(entry.value):
                assert math.isnan(other.value)
            else:
                assert other.value == entry.value
    assert math.isinf(back.steps[1].entries["metric.best"].value)
    spilled = back.steps[0].entries["model.0.weight"]
    assert torch.equal(read_spilled(spilled.spill, "float32", (4, 3)), model[0].weight.detach())


def test_run_record_json_without_spill():
    recorder = Recorder(None)
    recorder.record(0, {"x": torch.ones(2)})
    back = RunRecord.from_json(json.loads(json.dumps(recorder.close().to_json())))
    assert back.spill_path is None
    assert back.steps[0].entries["x"].spill is None


# ------------------------------------------------------------------------- statistics


def test_every_step_and_key_keeps_statistics_whatever_the_spill_budget(tmp_path):
    """A baseline written after the spill budget ran out must still support a tolerance
    comparison: statistics do not depend on spilling."""
    model, optimizer, loss = trained_adam()
    for budget in (0, 10 * MB):
        recorder = Recorder(SpillWriter(tmp_path / f"spill-{budget}.bin", budget))
        for step in range(3):
            recorder.record(step, {"model": model, "optimizer": optimizer, "loss": loss})
        run = recorder.close()
        assert run.spill_exhausted == (budget == 0)
        for record in run.steps:
            for key, entry in record.entries.items():
                floating = entry.fingerprint.dtype.startswith(("float", "complex"))
                assert (entry.fingerprint.stats is not None) == floating, key
    weight = run.steps[0].entries["model.0.weight"].fingerprint.stats
    values = model[0].weight.detach().double().reshape(-1)
    assert weight.norm == pytest.approx(float(values.norm()), rel=1e-12)
    assert weight.sample == tuple(values[list(weight.sample_index)].tolist())
    assert weight.sample_index == (0, 1, 3, 4, 6, 7, 9, 11)


def test_statistics_survive_the_json_of_a_run(tmp_path):
    recorder = Recorder(None)
    recorder.record(0, {"w": torch.tensor([1.0, float("nan"), -float("inf")]), "lr": 0.1})
    run = recorder.close()
    back = RunRecord.from_json(json.loads(json.dumps(run.to_json(), allow_nan=False)))
    for key in ("w", "metric.lr"):
        assert (
            back.steps[0].entries[key].fingerprint.stats
            == run.steps[0].entries[key].fingerprint.stats
        )
    stats = back.steps[0].entries["w"].fingerprint.stats
    assert (stats.nan, stats.posinf, stats.neginf, stats.min) == (1, 0, 1, 1.0)


def test_metric_values_of_every_kind():
    entries = one_step(
        {
            "half": torch.tensor(0.1, dtype=torch.float16),
            "z": torch.tensor(1.5 - 2j),
            "n": torch.tensor(3),
            "nan": float("nan"),
        }
    )
    assert entries["metric.half"].value == float(torch.tensor(0.1, dtype=torch.float16))
    assert entries["metric.z"].value == 1.5  # the real part
    assert entries["metric.n"].value == 3.0
    assert math.isnan(entries["metric.nan"].value)


def test_reference_suite_digests_are_those_of_the_raw_bytes():
    """Batched fingerprints keep every digest bitwise what it was: xxh3 of each tensor's raw
    bytes (the committed baselines store these), on the reference suites' models."""
    from suites.training import LSTMClassifier, SmallCNN, TinyTransformer

    torch.manual_seed(0)
    for model, batch in (
        (TinyTransformer(), torch.randint(0, 8, (4, 12))),
        (SmallCNN(), torch.randn(4, 1, 16, 16)),
        (LSTMClassifier(), torch.randint(0, 8, (4, 12))),
    ):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(batch).sum().backward()
        optimizer.step()
        state = {"model": model, "optimizer": optimizer, "rng": RNGState(), "lr": 1e-3}
        entries = one_step(state)
        leaves = dict(flatten_leaves(state))
        assert list(entries) == list(leaves)
        for key, entry in entries.items():
            leaf = leaves[key]
            tensor = as_tensor(leaf)  # numbers: the 0-d tensor record always made of them
            raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            assert entry.fingerprint.digest == xxhash.xxh3_64_hexdigest(raw), key


# ------------------------------------------------------------------------- spill writes


@pytest.mark.parametrize(
    ("numel", "large"),
    [(64, False), (2**17, False), (64, True)],
    ids=["copy-written-at-once", "copy-written-in-the-background", "in-place"],
)
def test_spilled_bytes_are_those_at_record_time(tmp_path, monkeypatch, numel, large):
    """Private copies are written at once or in the background, a live tensor's own memory at
    once: changing the tensor right after record never changes what was spilled."""
    if large:
        monkeypatch.setattr(fingerprint, "LARGE_BYTES", 16)
    writer = SpillWriter(tmp_path / "spill.bin", 64 * MB)
    recorder = Recorder(writer)
    weight = torch.arange(numel, dtype=torch.float32)
    entries = [recorder.record(step, {"w": weight}).entries["w"] for step in range(3)]
    for _ in range(3):
        weight.add_(1.0)  # the next steps' values
        entries.append(recorder.record(len(entries), {"w": weight}).entries["w"])
    weight.zero_()
    recorder.close()
    assert entries[0].spill == entries[1].spill == entries[2].spill  # unchanged: stored once
    for step, entry in enumerate(entries):
        expected = torch.arange(numel, dtype=torch.float32) + max(0, step - 2)
        assert torch.equal(read_spilled(entry.spill, "float32", (numel,)), expected)
    assert (tmp_path / "spill.bin").stat().st_size == writer.written == 4 * 4 * numel


@pytest.mark.parametrize("numel", [4, 2**17], ids=["written-at-once", "in-the-background"])
def test_spill_write_error_names_the_file(tmp_path, monkeypatch, numel):
    def broken(fd, writes):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spill_module, "_write_at", broken)
    recorder = Recorder(SpillWriter(tmp_path / "spill.bin", 64 * MB))
    with pytest.raises(OSError, match=r"spill\.bin: No space left on device.*--repro-spill-mb"):
        recorder.record(0, {"x": torch.ones(numel)})  # small: written here
        recorder.close()  # large: the background write's error surfaces here


def test_spill_appends_after_earlier_contents(tmp_path):
    path = tmp_path / "spill.bin"
    path.write_bytes(b"0123456789")
    writer = SpillWriter(path, 64 * MB)
    ref = writer.write(("d", "uint8", (3,)), np.frombuffer(b"abc", dtype=np.uint8))
    writer.close()
    assert ref.offset == 10 and path.read_bytes() == b"0123456789abc"


# ------------------------------------------------------------------------- flattening fast paths


def state_dict_leaves(name, module):
    return [(f"{name}.{k}", v) for k, v in module.state_dict(keep_vars=True).items()]


class ExtraState(torch.nn.Linear):
    def get_extra_state(self):
        return {"calls": torch.tensor(3)}

    def set_extra_state(self, state):
        pass


def odd_modules():
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.BatchNorm1d(4))
    plain[1].register_buffer("scratch", torch.ones(2), persistent=False)
    plain[1].register_buffer("unset", None)
    shared = torch.nn.Linear(2, 2)
    twice = torch.nn.ModuleDict({"a": shared, "b": shared, "c": ExtraState(2, 2)})
    pre_hooked = torch.nn.Sequential(torch.nn.Linear(2, 2))
    pre_hooked[0].register_state_dict_pre_hook(lambda module, prefix, keep_vars: None)
    post_hooked = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))

    def drop_bias(module, state, prefix, local_metadata):
        del state[prefix + "bias"]

    post_hooked[1]._register_state_dict_hook(drop_bias)
    clash = torch.nn.Linear(2, 2)
    clash._buffers["bias"] = torch.zeros(2)  # behind register_buffer's back
    dotted = torch.nn.Sequential(torch.nn.Linear(2, 2))
    dotted._parameters["0.weight"] = torch.nn.Parameter(torch.ones(1))  # state_dict keeps one
    return {
        "plain": plain,
        "shared-and-extra-state": twice,
        "pre-hook": pre_hooked,
        "post-hook": post_hooked,
        "param-and-buffer-one-name": clash,
        "dotted-name": dotted,
        "transformer": torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(8, 2, 16), 2, enable_nested_tensor=False
        ),
        "lstm": torch.nn.LSTM(3, 4, num_layers=2),
    }


@pytest.mark.parametrize("kind", list(odd_modules()))
def test_module_leaves_are_those_of_state_dict(kind):
    """record() walks module trees itself: the same keys, order and objects as state_dict."""
    module = odd_modules()[kind]
    expected = state_dict_leaves("m", module)
    leaves = flatten_leaves({"m": module}, live=True)
    if kind == "dotted-name":  # the walk repeats a key; record() then flattens as state_dict
        assert [k for k, _ in leaves] != [k for k, _ in expected]
        assert list(one_step({"m": module})) == [k for k, _ in expected]
        return
    assert [k for k, _ in leaves] == [k for k, _ in expected]
    for (_, value), (_, same) in zip(leaves, expected, strict=True):
        assert value is same or not isinstance(same, torch.Tensor)  # extra state: made anew


def test_module_leaves_see_a_class_changed_after_a_walk():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2))
    flatten_leaves({"m": module}, live=True)

    class Custom(torch.nn.Linear):
        def _save_to_state_dict(self, destination, prefix, keep_vars):
            destination[prefix + "only"] = self.weight

    module[0].__class__ = Custom
    assert [k for k, _ in flatten_leaves({"m": module}, live=True)] == ["m.0.only"]


def test_optimizer_leaves_are_those_of_state_dict():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(
        [{"params": list(model[1].parameters()), "lr": 0.1}, {"params": [model[0].weight]}]
    )
    model(torch.randn(5, 3)).sum().backward()
    model[1].bias.grad = None  # no state for it
    optimizer.step()
    optimizer.add_param_group({"params": [model[0].bias], "betas": (0.5, 0.6)})
    optimizer.step()  # the late group's state comes after the others'

    def keys(opt):
        return [k for k, _ in flatten_leaves({"o": opt}, live=True)]

    assert keys(optimizer) == state_dict_keys("o", optimizer)
    assert "o.state.3.exp_avg" in keys(optimizer) and "o.state.1.exp_avg" not in keys(optimizer)
    state, expected = optimizer_state(optimizer), optimizer.state_dict()
    assert list(state["state"]) == list(expected["state"])
    assert all(state["state"][k] is v for k, v in expected["state"].items())
    optimizer.register_state_dict_post_hook(lambda opt, state: state["state"].clear())
    assert not [k for k in keys(optimizer) if ".state." in k]  # hooks: state_dict itself


def state_dict_keys(name, optimizer):
    out = []
    _flatten_optimizer(out, name, optimizer.state_dict())
    return [k for k, _ in out]


def test_recorded_keys_follow_every_layout_change(tmp_path):
    """Nothing about a module's or optimizer's layout is kept between steps: each step's keys
    and fingerprints are those of state_dict at that step."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    recorder = Recorder(SpillWriter(tmp_path / "spill.bin", 64 * MB))

    def step_and_record(step, change):
        change()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        entries = recorder.record(step, {"model": model, "optimizer": optimizer}).entries
        expected = state_dict_leaves("model", model)
        assert list(entries) == [k for k, _ in expected] + state_dict_keys("optimizer", optimizer)
        for key, value in expected:
            if isinstance(value, torch.Tensor):
                assert entries[key].fingerprint == fingerprint_tensor(value), key
        return entries

    def re_register():  # the same names, another order: bias before weight
        weight = model[0].weight
        del model[0].weight
        model[0].weight = weight

    def replace_module():
        model[0] = torch.nn.Linear(3, 2)
        optimizer.add_param_group({"params": list(model[0].parameters())})

    changes = [
        lambda: None,  # the optimizer's state appears after this first step
        lambda: model.register_buffer("counter", torch.zeros(())),
        lambda: model.add_module("late", torch.nn.Linear(2, 2)),
        re_register,
        lambda: delattr(model, "counter"),
        lambda: model.register_buffer("quiet", torch.ones(1), persistent=False),
        replace_module,
    ]
    for step, change in enumerate(changes):
        entries = step_and_record(step, change)
    assert "model.0.bias" in entries and "model.late.weight" in entries
    recorder.close()


def test_reserve_many_is_reserve_key_by_key(tmp_path):
    """Repeated keys (in one call and across calls) and a budget running out mid-record."""
    keys = [
        ("a", "f", (1,)),
        ("b", "f", (2,)),
        ("a", "f", (1,)),
        ("c", "f", (9,)),
        ("b", "f", (2,)),
    ]
    sizes = [4, 8, 4, 36, 8]

    def places(refs):
        return [None if ref is None else (ref.offset, ref.nbytes) for ref in refs]

    for budget in (100, 40, 12, 3):
        one = SpillWriter(tmp_path / f"one-{budget}.bin", budget)
        many = SpillWriter(tmp_path / f"many-{budget}.bin", budget)
        for _ in range(2):  # the second time, every key is known (unless exhausted)
            expected = []
            for key, n in zip(keys, sizes, strict=True):  # what record() did key by key
                expected.append(one.reserve(key, n) if not one.exhausted else (None, False))
            refs, fresh = many.reserve_many(keys, sizes)
            assert places(refs) == places([ref for ref, _ in expected])
            assert fresh == [i for i, (_, new) in enumerate(expected) if new]
            assert (many.written, many.exhausted) == (one.written, one.exhausted)


def test_small_records_are_written_together(tmp_path, monkeypatch):
    """Private copies of small records wait for one hand-over to the writer thread (or for
    flush); the file then holds every record's bytes at its place."""
    handed = []
    monkeypatch.setattr(spill_module, "HANDOFF_BYTES", 3000)
    monkeypatch.setattr(
        spill_module, "_write_sorted", lambda fd, w: handed.append(len(w)) or orig(fd, w)
    )
    orig = spill_module._write_at
    recorder = Recorder(SpillWriter(tmp_path / "spill.bin", 64 * MB))
    weight = torch.zeros(100)
    entries = []
    for step in range(10):
        weight += 1
        state = {"w": weight, "b": weight[:7] * 2, "n": torch.arange(3) + step}
        entries.append(recorder.record(step, state).entries)
    recorder.close()
    assert 2 <= len(handed) < 10  # a few hand-overs, not one per record
    for step, found in enumerate(entries):
        assert torch.equal(
            read_spilled(found["w"].spill, "float32", (100,)), torch.full((100,), step + 1.0)
        )
        assert torch.equal(
            read_spilled(found["b"].spill, "float32", (7,)), torch.full((7,), 2 * step + 2.0)
        )
        assert torch.equal(read_spilled(found["n"].spill, "int64", (3,)), torch.arange(3) + step)
