"""OpTracer / diff_traces on real runs (CPU, small models: the file runs in seconds)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro_check.core.atomic import StoredFileError
from repro_check.trace.diff import diff_traces
from repro_check.trace.io import read_trace, write_trace
from repro_check.trace.ops import load_table
from repro_check.trace.replay import compare_event_outputs, replay_divergence
from repro_check.trace.tracer import OpTracer

THIS_FILE = "test_optrace.py"


def marker_line(tag: str) -> int:
    """Line number of the line of this file that ends with ``# <tag>``."""
    lines = open(__file__).read().splitlines()
    return next(i + 1 for i, s in enumerate(lines) if s.endswith(f"# {tag}"))


def here() -> int:
    """Line number of the caller (marks the line a test expects to be blamed)."""
    return sys._getframe(1).f_lineno


@pytest.fixture(autouse=True)
def _two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(prev)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def cnn_steps(trace: bool, steps: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(8, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    tracer = OpTracer(model) if trace else None
    if tracer is not None:
        tracer.__enter__()
    try:
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        if tracer is not None:
            tracer.__exit__(None, None, None)
    return model, opt, tracer


def test_traced_training_is_bitwise_equal_to_untraced():
    m0, opt0, _ = cnn_steps(trace=False)
    m1, opt1, tr = cnn_steps(trace=True)
    for (k, a), (_, b) in zip(m0.state_dict().items(), m1.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    for s0, s1 in zip(opt0.state.values(), opt1.state.values(), strict=True):
        for k in s0:
            assert torch.equal(s0[k], s1[k]), k
    ops = {e.op for e in tr.events}
    # forward, backward and the optimizer step are all seen
    assert {"aten::convolution", "aten::convolution_backward"} <= ops
    assert any(e.is_backward for e in tr.events)
    assert any(op.startswith("aten::_foreach_") or op == "aten::_fused_adam_" for op in ops) or (
        "aten::addcdiv_" in ops
    )


def test_two_seeded_traced_runs_are_identical():
    _, _, a = cnn_steps(trace=True, steps=2)
    _, _, b = cnn_steps(trace=True, steps=2)
    d = diff_traces(a, b)
    assert d.kind == "identical", d.message
    assert d.events_compared == len(a.events) > 100


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)

    def forward(self, x):
        return torch.softmax(self.q(x), -1) * x


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = Attn()
        self.ff = nn.Linear(4, 4)

    def forward(self, x):
        return self.ff(self.self_attn(x)).relu()


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()

    def forward(self, x):
        return self.encoder(x).sum()


def test_module_paths_of_a_nested_model():
    model = Model()
    x = torch.randn(2, 4)
    with OpTracer(model) as tr:
        out = model(x)
        out.backward()
    paths = {e.module_path for e in tr.events}
    assert "encoder.layers.0.self_attn" in paths
    assert "encoder.layers.1.self_attn.q" in paths
    assert "encoder.layers.0.ff" in paths
    softmax = [e for e in tr.events if e.op == "aten::_softmax"]
    assert [e.module_path for e in softmax] == [
        "encoder.layers.0.self_attn",
        "encoder.layers.1.self_attn",
    ]
    assert any(e.module_path == "Model" for e in tr.events)  # root: its class name
    # backward ops inherit the module of the forward op behind them
    sm_back = [e for e in tr.events if e.op == "aten::_softmax_backward_data"]
    assert {e.module_path for e in sm_back} == {
        "encoder.layers.0.self_attn",
        "encoder.layers.1.self_attn",
    }
    # the stack is clean afterwards, and ops outside modules have no path
    with OpTracer(model) as tr2:
        torch.ones(2) + 1
    assert [e.module_path for e in tr2.events] == ["", ""]


def test_module_paths_without_root_fall_back_to_class_names():
    model = Model()
    with OpTracer() as tr:
        model(torch.randn(2, 4))
    paths = {e.module_path for e in tr.events}
    assert "Model.Encoder.Block.Attn.Linear" in paths


def test_source_lines_point_into_this_file():
    a = torch.randn(3, 3)
    with OpTracer() as tr:
        line = here() + 1
        b = torch.mm(a, a).relu_()
        c = F.softmax(b, dim=0)  # goes through torch/nn/functional.py: skipped
        del c
    mm, relu, softmax = tr.events
    assert mm.op == "aten::mm" and relu.op == "aten::relu_"
    assert mm.source.split(":")[0].endswith(THIS_FILE)
    assert mm.source.split(":")[1].split()[0] == str(line)
    assert mm.source.endswith("in test_source_lines_point_into_this_file")
    assert softmax.source.split(":")[1].split()[0] == str(line + 1)
    assert mm.call_index == 0 and softmax.op == "aten::_softmax"


def test_flags_keep_their_type():
    """Flag tuples are shared between events of one op: ``(False,)`` must not become an
    equal ``(0,)`` seen before (a shape, another op's int flag)."""
    with OpTracer() as tr:
        torch.zeros(0)  # shape (0,)
        torch.ones(1).expand(3)  # implicit=False
    (expand,) = [e for e in tr.events if e.op == "aten::expand"]
    assert expand.flags == (False,) and expand.flags[0] is False


def test_compiled_code_under_the_tracer_compiles_nothing_into_it():
    """torch keeps Dynamo out of a dispatch mode's hook by wrapping it; the tracer marks its
    code instead (no frames per op): a compiled function run under it is traced op by op and
    no graph captures the tracer."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    @torch.compile(backend=backend)
    def f(x):
        return (x.sin() + 1).cos()

    x = torch.ones(5)
    with OpTracer() as tr:
        y = f(x)
    assert torch.equal(y, (x.sin() + 1).cos())
    assert [e.op for e in tr.events] == ["aten::sin", "aten::add", "aten::cos"]
    assert not graphs
    torch._dynamo.reset()


def test_inference_mode_is_traced():
    """Inference tensors have no version counter: their views and in-place outputs are not
    trusted (re-hashed when read), and reading the counter must not crash the run."""
    lin = nn.Linear(4, 4)
    with torch.inference_mode(), OpTracer(lin) as tr:
        y = lin(torch.ones(2, 4)).t()  # a view of an inference tensor
        y.mul_(2)
        (y + 1).sum()
    ops = [e.op for e in tr.events]
    assert ops[-4:] == ["aten::t", "aten::mul_", "aten::add", "aten::sum"]


def test_call_index_counts_each_op():
    with OpTracer() as tr:
        x = torch.zeros(2)
        for _ in range(3):
            x = x + 1
    adds = [e for e in tr.events if e.op == "aten::add"]
    assert [e.call_index for e in adds] == [0, 1, 2]


def test_inplace_and_views_record_contents_after_the_op():
    with OpTracer() as tr:
        x = torch.zeros(4)
        v = x[1:3]  # a view
        v.add_(1.0)  # in-place on the view mutates x
        y = x * 2
    (_, slice_ev, add_ev, mul_ev) = tr.events
    assert slice_ev.op == "aten::slice"
    assert add_ev.op == "aten::add_" and len(add_ev.outputs) == 1
    # the mul reads x after the in-place update through the view: a traced view changed it,
    # so its content was never an op output; the tracer tells it apart from external data
    assert mul_ev.inputs[0].origin in ("traced", "modified")
    assert y.tolist() == [0.0, 2.0, 2.0, 0.0]
    # an op that mutates a list argument and returns nothing: the list is its output
    ps = [torch.zeros(2), torch.zeros(2)]
    with OpTracer() as tr:
        torch._foreach_add_(ps, 1.0)
    (ev,) = tr.events
    assert ev.op == "aten::_foreach_add_" and len(ev.outputs) == 2


def index_put_workload():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 64, (200_000,), generator=g)
    vals = torch.randn(200_000, 16, generator=g)
    acc = torch.zeros(64, 16)
    acc.index_put_((idx,), vals, accumulate=True)  # INDEX_PUT_LINE
    return (acc * 2).sum()


def nondeterministic_index_put():
    with OpTracer() as tr:
        index_put_workload()
    return tr


INDEX_PUT_LINE = marker_line("INDEX_PUT_LINE")


def test_nondeterministic_index_put_is_localised():
    a = nondeterministic_index_put()
    for _ in range(5):  # two runs differ every time on this CPU; retry a few times regardless
        d = diff_traces(a, nondeterministic_index_put())
        if d.kind != "identical":
            break
    assert d.kind == "nondeterministic-op", d.message
    ev = d.event_a
    assert ev.op == "aten::index_put_" and ev.call_index == 0 and ev.index == 3
    assert ev.source.split(":")[0].endswith(THIS_FILE)
    assert ev.source.split(":")[1].split()[0] == str(INDEX_PUT_LINE)
    assert ev.flag_dict()["accumulate"] is True
    (entry,) = [e for e in load_table().entries if e.id == "index-put-accumulate-cpu"]
    assert d.advice == entry.alternative  # the advice comes from the one op table
    assert "aten::index_put_" in d.message and "use_deterministic_algorithms" in d.message

    # replay twice with the outputs of that event captured, and measure the difference
    comps = replay_divergence(index_put_workload, d.index, attempts=5)
    assert comps is not None
    assert comps[0].n_different > 0 and 0 < comps[0].max_abs_diff < 1e-3


def test_deterministic_mode_makes_the_same_trace_identical():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        d = diff_traces(nondeterministic_index_put(), nondeterministic_index_put())
    finally:
        torch.use_deterministic_algorithms(prev)
    assert d.kind == "identical", d.message


def run_with_numpy_data():
    torch.manual_seed(0)
    lin = nn.Linear(8, 2)
    with OpTracer(lin) as tr:
        w = lin.weight * 1.0
        x = torch.from_numpy(np.random.default_rng().normal(size=(4, 8))).float()  # NUMPY_LINE
        lin(x).sum().backward()
    del w
    return tr


NUMPY_LINE = marker_line("NUMPY_LINE")


def test_unseeded_numpy_data_is_an_external_input():
    d = diff_traces(run_with_numpy_data(), run_with_numpy_data())
    assert d.kind == "external-input", d.message
    assert d.entered_at.split(":")[0].endswith(THIS_FILE)
    assert d.entered_at.split(":")[1].split()[0] == str(NUMPY_LINE)
    assert d.event_a.source == d.entered_at  # first use = where it entered
    assert "outside torch ops" in d.message and "not seen by the dispatcher" in d.message


def run_with_numpy_alias_write():
    with OpTracer() as tr:
        t = torch.zeros(3)
        t.numpy()[:] = np.random.default_rng().normal(size=3)  # bypasses the dispatcher
        (t + 1).sum()
    return tr


def test_write_outside_the_dispatcher_is_reported_as_modified():
    d = diff_traces(run_with_numpy_alias_write(), run_with_numpy_alias_write())
    assert d.kind == "external-input"
    assert d.details["origin"] == "modified"
    assert d.entered_event == 0  # produced by aten::zeros, then changed behind its back
    assert "outside the dispatcher" in d.message


def run_on_garbage(fill: float, custom_write: bool = False):
    junk = torch.full((4096,), fill)  # recycled memory: torch.empty below may return these bytes
    del junk
    with OpTracer() as tr:
        p = nn.Parameter(torch.empty(4096))  # uninitialised until the init below
        nn.init.uniform_(p, generator=torch.Generator().manual_seed(0))
        out = torch.empty(4096)
        if custom_write:  # a kernel the dispatcher does not see fills the buffer
            out.numpy()[:] = np.random.default_rng().normal(size=4096)
        else:
            torch.add(p.detach(), 1, out=out)
        (out * 2).sum()
    return tr


def test_uninitialised_memory_is_not_a_difference():
    a, b = run_on_garbage(1.0), run_on_garbage(2.0)
    d = diff_traces(a, b)
    assert d.kind == "identical", d.message
    # recycled memory often holds exactly what the init writes (an identical earlier run):
    # the tensor counts as initialised once a traced op wrote it, whatever the bytes
    for _ in range(5):
        c = run_on_garbage(1.0)
        d = diff_traces(a, c)
        assert d.kind == "identical", d.message
        assert c.events[3].inputs[0].cls is None  # detach reads the initialised parameter
    assert a.events[0].outputs[0].cls == "uninitialized"
    assert a.events[1].inputs[0].cls == "uninitialized"  # uniform_ reads nothing that matters
    d = diff_traces(run_on_garbage(1.0, True), run_on_garbage(1.0, True))
    assert d.kind == "external-input" and d.details["origin"] == "modified"
    assert d.event_a.op == "aten::mul"


def unseeded_torch_rng():
    with OpTracer() as tr:
        torch.randn(4).sum()
    return tr


def test_rng_state_difference_is_external():
    torch.manual_seed(1)
    a = unseeded_torch_rng()
    torch.manual_seed(2)
    b = unseeded_torch_rng()
    d = diff_traces(a, b)
    assert d.kind == "external-input" and d.input_position == -2
    assert "generator state" in d.message
    torch.manual_seed(3)
    a = unseeded_torch_rng()
    torch.manual_seed(3)
    assert diff_traces(a, unseeded_torch_rng()).kind == "identical"


def python_scalar_run(value: float):
    with OpTracer() as tr:
        torch.ones(3) * value
    return tr


def test_python_scalar_difference_is_external():
    d = diff_traces(python_scalar_run(random.random()), python_scalar_run(2.0))
    assert d.kind == "external-input" and d.input_position == -1
    assert "non-tensor arguments" in d.message


def branchy(flag: bool):
    x = torch.arange(6.0)
    with OpTracer() as tr:
        y = x * 2
        if flag:  # decided by Python/numpy data, not by a traced value
            z = y.relu()  # RELU_LINE
        else:
            z = y.tanh()  # TANH_LINE
        z.sum()
    return tr


def test_control_flow_divergence_is_structural():
    a = branchy(True)
    b = branchy(False)
    d = diff_traces(a, b)
    assert d.kind == "structural", d.message
    assert d.event_a.op == "aten::relu" and d.event_b.op == "aten::tanh"
    assert d.details["source_a"].endswith(f"{THIS_FILE}:{marker_line('RELU_LINE')} in branchy")
    assert d.details["source_b"].endswith(f"{THIS_FILE}:{marker_line('TANH_LINE')} in branchy")
    assert d.index == 1


def branch_on_tensor(data):
    with OpTracer() as tr:
        x = torch.tensor(data)
        if x.sum() > 0:
            x = x.relu()
        else:
            x = x.tanh()
        x.sum()
    return tr


def test_branch_on_external_data_reports_the_data_first_and_the_branch_later():
    d = diff_traces(branch_on_tensor([1.0, 2.0]), branch_on_tensor([-1.0, -2.0]))
    assert d.kind == "external-input"  # the root cause: the data entering
    assert d.first_structural is not None and d.first_structural > d.index
    assert "Control flow parts later" in d.message


def test_different_lengths_are_structural():
    def run(n):
        with OpTracer() as tr:
            x = torch.zeros(2)
            for _ in range(n):
                x = x + 1
        return tr

    d = diff_traces(run(3), run(4))
    assert d.kind == "structural" and d.index == 4


def test_max_events_truncates_and_keeps_running():
    with OpTracer(max_events=10) as tr:
        x = torch.zeros(3)
        for _ in range(50):
            x = x + 1
    assert tr.truncated and len(tr.events) == 10
    assert x.tolist() == [50.0, 50.0, 50.0]
    with OpTracer(max_events=10) as tr2:
        x = torch.zeros(3)
        for _ in range(50):
            x = x + 1
    d = diff_traces(tr, tr2)
    assert d.kind == "identical" and d.truncated and "truncated" in d.message


class PlainSub(torch.Tensor):
    pass


class WrapperSub(torch.Tensor):
    """A wrapper subclass that unwraps, runs, and re-wraps (like many real subclasses)."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype)

    def __init__(self, elem):
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def unwrap(x):
            return x.elem if isinstance(x, WrapperSub) else x

        def wrap(x):
            return WrapperSub(x) if isinstance(x, torch.Tensor) else x

        args = torch.utils._pytree.tree_map(unwrap, args)
        kwargs = torch.utils._pytree.tree_map(unwrap, kwargs or {})
        return torch.utils._pytree.tree_map(wrap, func(*args, **kwargs))


def test_tensor_subclasses_do_not_crash():
    p = torch.randn(3).as_subclass(PlainSub)
    w = WrapperSub(torch.randn(3))
    with OpTracer() as tr:
        r1 = p * 2
        r2 = w + 1
    assert isinstance(r1, PlainSub) and isinstance(r2, WrapperSub)
    assert torch.equal(r2.elem, w.elem + 1)
    classes = {s.cls for e in tr.events for s in e.inputs + e.outputs}
    assert "WrapperSub" in classes
    # sparse inputs are fingerprinted through their indices and values
    s = torch.randn(3, 3).to_sparse()
    with OpTracer() as tr:
        (s * 2).to_dense()
    assert any(sig.cls == "sparse_coo" and sig.hash != 0 for e in tr.events for sig in e.inputs)


def test_backward_ops_link_to_their_forward_call():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with OpTracer() as tr:
        y = F.interpolate(x, scale_factor=2, mode="bilinear")  # UPSAMPLE
        y.sum().backward()
    fwd = next(e for e in tr.events if e.op == "aten::upsample_bilinear2d")
    bwd = next(e for e in tr.events if e.op == "aten::upsample_bilinear2d_backward")
    assert fwd.requires_grad and not fwd.is_backward
    assert bwd.is_backward and bwd.autograd_node.startswith("UpsampleBilinear2DBackward")
    assert bwd.forward_index == fwd.index
    assert tr.forward_source(bwd) == fwd.source != bwd.source


def test_capture_and_compare_event_outputs():
    with OpTracer(capture_outputs_of={1}) as tr:
        a = torch.arange(4.0)
        a.add_(1)
    assert set(tr.captured) == {1}
    assert torch.equal(tr.captured[1][0], torch.arange(1.0, 5.0))
    x = torch.tensor([1.0, float("nan"), 3.0, 4.0])
    y = torch.tensor([1.0, float("nan"), 3.5, 2.0])
    c = compare_event_outputs(x, y)
    assert c.n_different == 2 and c.first_index == (2,) and c.max_abs_diff == 2.0
    assert compare_event_outputs(x, x.clone()).identical
    assert not compare_event_outputs(x, x[:2]).identical


def test_hooks_and_mode_are_removed_on_exit_even_after_an_error():
    from torch.nn.modules import module as nn_module

    before = (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks))
    lin = nn.Linear(2, 2)
    with pytest.raises(RuntimeError):
        with OpTracer(lin):
            lin(torch.randn(3, 3))  # shape error inside a module
    after = (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks))
    assert before == after
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    assert _get_current_dispatch_mode() is None


def traced(workload, **options):
    with OpTracer(**options) as tr:
        workload()
    return tr


def numpy_write_into_a_computed_tensor():
    t = torch.ones(3) * 2  # computed from a tensor: its fingerprint is trusted while unchanged
    t.numpy()[:] = np.random.default_rng().normal(size=3)  # no version-counter bump
    (t + 1).sum()


def test_trusted_inputs_have_a_documented_blind_spot_that_verify_inputs_closes():
    d = diff_traces(
        traced(numpy_write_into_a_computed_tensor), traced(numpy_write_into_a_computed_tensor)
    )
    assert d.kind == "nondeterministic-op" and d.event_a.op == "aten::add"  # blamed one op later
    verified = [traced(numpy_write_into_a_computed_tensor, verify_inputs=True) for _ in range(2)]
    d = diff_traces(*verified)
    assert d.kind == "external-input" and d.details["origin"] == "modified"
    assert d.event_a.op == "aten::add" and d.entered_event == 1  # produced by the mul
    d = diff_traces(
        traced(index_put_workload, verify_inputs=True),
        traced(index_put_workload, verify_inputs=True),
    )
    assert d.kind == "nondeterministic-op" and d.event_a.op == "aten::index_put_"


def test_trusting_producers_and_deriving_views_records_what_full_hashing_records():
    """The fast path changes how inputs are identified, never what is compared: the same op
    sequence, the same output fingerprints for every op that computes something, and traces
    that diff alike."""
    _, _, fast = cnn_steps(trace=True, steps=2)
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)

    def two_steps():
        for _ in range(2):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    full = traced(two_steps, verify_inputs=True)
    assert [e.qualname for e in fast.events] == [e.qualname for e in full.events]
    views = 0
    for a, b in zip(fast.events, full.events, strict=True):
        ns, name = a.op.split("::")
        if getattr(getattr(getattr(torch.ops, ns), name), a.overload).is_view:
            views += 1
            continue
        assert [s.key for s in a.outputs] == [s.key for s in b.outputs], a.describe()
    assert views > 20
    # a view's fingerprint is derived from its input's, not read from memory
    derived = [e for e in fast.events if e.op == "aten::t"]
    assert derived and all(e.inputs[0].hash != e.outputs[0].hash for e in derived)


def test_trace_files_round_trip_and_refuse_what_they_cannot_read(tmp_path):
    _, _, tr = cnn_steps(trace=True, steps=1)
    path = tmp_path / "trace.jsonl"
    write_trace(path, tr.events, truncated=False)
    events, truncated = read_trace(path)
    assert not truncated and len(events) == len(tr.events)
    for a, b in zip(tr.events, events, strict=True):
        assert (a.qualname, a.inputs, a.outputs, a.source, a.module_path) == (
            b.qualname,
            b.inputs,
            b.outputs,
            b.source,
            b.module_path,
        )
        # flags holding dtypes, layouts or enums come back as their repr
        assert json.loads(json.dumps(list(a.flags), default=repr)) == list(b.flags)
    assert diff_traces(tr, events).kind == "identical"
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file and a rename

    lines = path.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    assert header["schema"] == "repro-check/op-trace" and header["events"] == len(events)
    broken = {
        "corrupt.jsonl": (lines[:3] + ["{not json\n"] + lines[4:], r"corrupt.jsonl:4: corrupt"),
        "short.jsonl": (lines[:-5], "the header says"),
        "newer.jsonl": (
            [json.dumps(dict(header, schema_version=99)) + "\n"] + lines[1:],
            "upgrade repro-check",
        ),
        "other.jsonl": (['{"truncated": false}\n'] + lines[1:], "not a 'repro-check/op-trace'"),
    }
    for name, (content, message) in broken.items():
        (tmp_path / name).write_text("".join(content))
        with pytest.raises(StoredFileError, match=message):
            read_trace(tmp_path / name)
    with pytest.raises(StoredFileError, match="cannot read"):
        read_trace(tmp_path / "missing.jsonl")


def test_the_trace_package_reads_and_diffs_traces_without_importing_torch():
    code = (
        "import sys\n"
        "from repro_check.trace import diff_traces, load_table, read_trace\n"
        "from repro_check.trace.audit import audit\n"
        "import repro_check.orchestration.localize\n"
        "load_table()\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
