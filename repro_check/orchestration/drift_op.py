"""The first drift op: where a variant parts from the reference, op by op, and whether it should.

Both environments rerun the first drift step with every aten op traced
(:class:`repro_check.trace.OpTracer`); :func:`repro_check.trace.diff_traces` walks the two traces
and finds the first op whose inputs are bit for bit equal in both while its outputs differ. That
op is where the environments' arithmetic parts; every later difference is inherited from it.

Whether such drift is *expected* depends on the op and on what the variant changes:
reductions, matrix products and convolutions accumulate in an order that depends on threads,
instruction set, oneDNN and device; random kernels and transcendental functions are vectorised
per instruction set (Sleef vs libm), and fused multiply-adds round once where scalar code rounds
twice. Pointwise arithmetic, indexing and copies are exact in IEEE arithmetic: drift there means
the code computed something else (it read the thread count, the dtype or the device). A
difference in the ops run, or in their Python arguments, means the same: another code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from repro_check.orchestration.replicas import ReplicaResult
from repro_check.orchestration.variants import Variant

REDUCTIONS = frozenset(
    """sum mean var std var_mean std_mean norm linalg_vector_norm prod cumsum cumprod logsumexp
    _softmax _log_softmax softmax log_softmax _softmax_backward_data _log_softmax_backward_data
    native_layer_norm native_layer_norm_backward native_batch_norm native_batch_norm_backward
    _native_batch_norm_legit _native_batch_norm_legit_no_training _batch_norm_with_update
    batch_norm_backward native_group_norm native_group_norm_backward nll_loss_forward
    nll_loss_backward nll_loss2d_forward nll_loss2d_backward mse_loss mse_loss_backward
    binary_cross_entropy binary_cross_entropy_with_logits smooth_l1_loss l1_loss kl_div
    embedding_dense_backward embedding_bag _embedding_bag _embedding_bag_backward index_add
    index_add_ scatter_add scatter_add_ scatter_reduce scatter_reduce_ index_put index_put_
    _index_put_impl_ avg_pool2d avg_pool2d_backward adaptive_avg_pool2d _adaptive_avg_pool2d
    _adaptive_avg_pool2d_backward max_pool2d_with_indices_backward upsample_bilinear2d_backward
    upsample_nearest2d_backward _fused_adam_ _fused_adamw_ _fused_sgd_ _foreach_norm
    linalg_norm frobenius_norm dist cdist""".split()
)
MATMULS = frozenset(
    """mm addmm bmm baddbmm addbmm matmul linear addmv mv dot vdot einsum tensordot
    _addmm_activation _scaled_dot_product_flash_attention_for_cpu
    _scaled_dot_product_flash_attention_for_cpu_backward _scaled_dot_product_attention_math
    _scaled_dot_product_efficient_attention _scaled_dot_product_flash_attention
    scaled_dot_product_attention mkldnn_linear _transformer_encoder_layer_fwd _native_multi_head_attention
    _lstm_mkldnn mkldnn_rnn_layer mkldnn_rnn_layer_backward lstm gru rnn_tanh _thnn_fused_lstm_cell""".split()
)
CONVOLUTIONS = frozenset(
    """convolution _convolution convolution_backward conv1d conv2d conv3d conv_transpose1d
    conv_transpose2d conv_transpose3d mkldnn_convolution _slow_conv2d_forward
    _slow_conv2d_backward slow_conv3d_forward slow_conv_transpose2d cudnn_convolution
    cudnn_convolution_transpose _nnpack_spatial_convolution""".split()
)
TRANSCENDENTAL = frozenset(
    """exp exp_ exp2 expm1 log log_ log1p log2 log10 tanh tanh_ tanh_backward sigmoid sigmoid_
    sigmoid_backward erf erfc erfinv pow pow_ sin cos tan asin acos atan atan2 sinh cosh asinh
    acosh atanh gelu gelu_backward silu silu_backward mish mish_backward softplus
    softplus_backward elu elu_backward logit logit_backward lgamma digamma log_sigmoid_forward
    log_sigmoid_backward _foreach_exp _foreach_log _foreach_pow _foreach_sigmoid""".split()
)
FUSED_MULTIPLY_ADD = frozenset(
    """addcmul addcmul_ addcdiv addcdiv_ lerp lerp_ add add_ sub sub_ rsub _foreach_addcmul
    _foreach_addcmul_ _foreach_addcdiv _foreach_addcdiv_ _foreach_lerp _foreach_lerp_
    _foreach_add _foreach_add_ _foreach_sub _foreach_sub_""".split()
)
INDEXING = frozenset(
    """index index_select gather scatter scatter_ take masked_select masked_fill masked_fill_
    masked_scatter embedding slice select cat stack copy_ _to_copy clone view reshape
    _unsafe_view permute transpose t expand narrow unsqueeze squeeze flip roll repeat
    contiguous fill_ zero_ zeros ones full arange index_copy index_copy_ put put_ where
    max_pool2d_with_indices _reshape_alias as_strided new_zeros new_empty empty_like""".split()
)

REDUCTION, MATMUL, CONVOLUTION, RANDOM = "reduction", "matrix product", "convolution", "random"
TRANSCENDENTAL_KIND, FMA, INDEXING_KIND, POINTWISE = (
    "transcendental pointwise",
    "multiply-add pointwise",
    "indexing/copy",
    "pointwise",
)

#: For each kind of change a variant makes: the op families that may legitimately drift.
_EXPECTED_BY_CHANGE: dict[str, frozenset[str]] = {
    "threads": frozenset({REDUCTION, MATMUL, CONVOLUTION}),
    "isa": frozenset({REDUCTION, MATMUL, CONVOLUTION, RANDOM, TRANSCENDENTAL_KIND, FMA}),
    "mkldnn": frozenset({MATMUL, CONVOLUTION, REDUCTION}),
    "deterministic": frozenset({REDUCTION}),
    "device": frozenset({REDUCTION, MATMUL, CONVOLUTION, TRANSCENDENTAL_KIND, FMA, POINTWISE}),
    "compile": frozenset({REDUCTION, MATMUL, CONVOLUTION, TRANSCENDENTAL_KIND, FMA, POINTWISE}),
    "float64": frozenset({REDUCTION, MATMUL, CONVOLUTION, TRANSCENDENTAL_KIND, FMA, POINTWISE}),
}
_WHY = {
    REDUCTION: "a reduction: its summation order depends on threads, vector width and kernel",
    MATMUL: "a matrix product: BLAS/oneDNN block and accumulate in an order of their own",
    CONVOLUTION: "a convolution: the algorithm (oneDNN, im2col + GEMM, cuDNN) sets the order",
    RANDOM: "a random kernel: vectorised per instruction set, it rounds its transform differently",
    TRANSCENDENTAL_KIND: "a transcendental function: vectorised (Sleef) and scalar (libm) "
    "versions round differently",
    FMA: "a multiply-add: vectorised code fuses it into one rounding (FMA), scalar code rounds twice",
    INDEXING_KIND: "indexing and copies move values without arithmetic: they are exact",
    POINTWISE: "elementwise arithmetic is correctly rounded in IEEE 754: it is exact everywhere",
}


#: Changes that make PyTorch pick another implementation of an op (oneDNN's RNN or convolution
#: against the native one, a GPU kernel, a compiled graph, a deterministic algorithm), which may
#: run other aten ops: a different op sequence is then expected, not another code path.
SWITCHES_IMPLEMENTATION = frozenset({"mkldnn", "device", "compile", "deterministic", "float64"})


def op_kind(op: str, random: bool = False) -> str:
    """The family of an aten op (``aten::addmm`` -> matrix product)."""
    name = op.removeprefix("aten::").split(".")[0]
    if random:
        return RANDOM
    for family, kind in (
        (REDUCTIONS, REDUCTION),
        (MATMULS, MATMUL),
        (CONVOLUTIONS, CONVOLUTION),
        (TRANSCENDENTAL, TRANSCENDENTAL_KIND),
        (FUSED_MULTIPLY_ADD, FMA),
        (INDEXING, INDEXING_KIND),
    ):
        if name in family:
            return kind
    return POINTWISE


def changes(variant: Variant) -> list[str]:
    """What the variant changes, in the words of :data:`_EXPECTED_BY_CHANGE`."""
    found = []
    if variant.num_threads is not None:
        found.append("threads")
    if variant.isa is not None:
        found.append("isa")
    settings = variant.settings
    if settings.get("mkldnn") is False:
        found.append("mkldnn")
    if settings.get("deterministic"):
        found.append("deterministic")
    if settings.get("device"):
        found.append("device")
    if settings.get("compile"):
        found.append("compile")
    if settings.get("float64"):
        found.append("float64")
    return found


def expectation(kind: str, variant: Variant) -> tuple[bool, str]:
    """Whether drift in an op of ``kind`` is expected under ``variant``, and why."""
    changed = changes(variant)
    expected = any(kind in _EXPECTED_BY_CHANGE.get(change, frozenset()) for change in changed)
    why = _WHY.get(kind, kind)
    if expected:
        return True, f"expected: {why}"
    what = " and ".join(changed) or "nothing"
    return False, f"not expected: {why}, and the variant changes only {what}"


@dataclass
class DriftOp:
    """The first op where a variant's arithmetic parts from the reference's."""

    kind: str  # "op" | "implementation" | "code-path" | "entered" | "none" | "unavailable"
    message: str
    op: str | None = None
    source: str | None = None  # where the reference ran it
    variant_source: str | None = None  # where the variant ran it, when that is another line
    module_path: str | None = None
    step: int | None = None
    before_step_0: bool = False  # in initialisation / data set-up, before the first training op
    family: str = ""
    expected: bool | None = None
    why: str = ""

    def headline(self) -> str:
        """One line: what, where, and whether it is expected."""
        if self.op is None:
            return self.message.splitlines()[0] if self.message else self.kind
        where = "before step 0 (initialisation)" if self.before_step_0 else f"step {self.step}"
        module = f" in {self.module_path}" if self.module_path else ""
        verdict = "" if self.expected is None else f" -- {self.why}"
        there = f" (the variant: {self.variant_source})" if self.variant_source else ""
        return f"{self.op}{module} at {self.source}{there}, {where}{verdict}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriftOp:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def locate(
    reruns: Sequence[ReplicaResult],
    step: int,
    start_after: int | None,
    variant: Variant,
) -> DriftOp:
    """Diff the traced reruns of the reference (first) and the variant (second)."""
    from repro_check.trace import diff_traces, read_trace

    failed = [r for r in reruns if r.outcome != "passed"]
    if failed:
        last = (failed[0].error.strip().splitlines() or ["(no error text)"])[-1]
        return DriftOp("unavailable", f"the traced rerun failed: {last}")
    paths = [r.run_info.get("trace_path") for r in reruns]
    if len(reruns) < 2 or not all(paths):
        return DriftOp("unavailable", f"step {step} was not reached in the traced reruns")
    (events_a, cut_a), (events_b, cut_b) = (read_trace(p) for p in paths)  # type: ignore[arg-type]
    _ignore_arguments_without_effect(events_a, events_b)
    diff = diff_traces(events_a, events_b, labels=("reference", f"variant {variant.name}"))
    event = diff.event_a or diff.event_b
    if diff.kind == "identical" or event is None:
        note = " (traces truncated)" if cut_a or cut_b else ""
        return DriftOp(
            "none",
            f"the traced reruns did not part in the traced window{note}: the drift did not "
            f"recur, or entered through an op the dispatcher does not see",
        )
    # Initialisation: before the first op that builds the autograd graph (that op included).
    upto = (diff.index or 0) + 1
    training_started = any(e.requires_grad or e.is_backward for e in events_a[:upto])
    before_step_0 = start_after is None and step == _first_step(reruns) and not training_started
    found = DriftOp(
        "op",
        diff.message,
        op=event.qualname,
        source=diff.forward_source if event.is_backward and diff.forward_source else event.source,
        module_path=event.module_path or None,
        step=step,
        before_step_0=before_step_0,
    )
    other = diff.event_b
    if other is not None and diff.event_a is not None and other.source != diff.event_a.source:
        found.variant_source = other.source
    if diff.kind == "nondeterministic-op":
        found.family = op_kind(event.op, random=event.rng_state is not None)
        found.expected, found.why = expectation(found.family, variant)
    elif diff.kind == "structural" and set(changes(variant)) & SWITCHES_IMPLEMENTATION:
        found.kind = "implementation"
        found.family = "another implementation"
        found.expected = True
        found.why = (
            f"expected: {' and '.join(changes(variant))} selects another implementation of the "
            f"op, which runs other aten ops from here on"
        )
    elif diff.kind == "structural" or diff.input_position in (-1, -2):
        found.kind = "code-path"
        found.family = "control flow"
        found.expected = False
        found.why = (
            "not expected: the variant ran other ops or passed other Python values -- the code "
            "reads its environment (thread count, dtype, device) and computes something else"
        )
    else:
        found.kind = "entered"
        found.source = diff.entered_at or found.source
        found.why = (
            "the values entered from outside the traced ops (numpy, DataLoader worker "
            "processes, state made before tracing began)"
        )
    return found


def _ignore_arguments_without_effect(events_a: Sequence[Any], events_b: Sequence[Any]) -> None:
    """Another environment passes other Python values that change nothing (the device of a
    factory on a GPU variant): an op whose Python arguments differ while its outputs are bit for
    bit equal is not where the runs part, so its arguments count as equal. A value that does
    change the result (another epsilon) still parts the runs there."""
    for a, b in zip(events_a, events_b, strict=False):
        if a.op != b.op or a.overload != b.overload:
            return
        if a.args_hash != b.args_hash and [o.key for o in a.outputs] == [o.key for o in b.outputs]:
            b.args_hash = a.args_hash


def _first_step(reruns: Sequence[ReplicaResult]) -> int | None:
    record = reruns[0].record
    return record.steps[0].step if record is not None and record.steps else None
