"""Backend variants: names, what this machine supports, the plan, the in-process settings, the
cross-variant verdict judged against float64, the first drift op and the report -- all without
pytest sessions -- and one end-to-end session on the planted bug."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from drift_runs import train

from repro_check.core.backend import apply_settings
from repro_check.core.compare import Fp64Judgement
from repro_check.core.record import RunRecord, StepRecord
from repro_check.orchestration import drift, drift_op
from repro_check.orchestration.case import Case
from repro_check.orchestration.drift import analyze_drift
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec
from repro_check.orchestration.variant_stage import VariantStage, decide
from repro_check.orchestration.variants import (
    Capabilities,
    VariantError,
    isas_from_capability,
    isas_from_flags,
    parse_variant,
    parse_variants,
    plan_variants,
    probe_capabilities,
    unsupported_reason,
    variant_specs,
    with_judge,
)
from repro_check.orchestration.verdict import VARIANT_MISMATCH, judge
from repro_check.reporting import drift as drift_report
from repro_check.trace.events import OpEvent, TensorSig
from repro_check.trace.io import write_trace

AVX2_HOST = Capabilities(machine="x86_64", isas=("default", "avx2"), isa_source="test")


# ------------------------------------------------------------------------------ vocabulary


@pytest.mark.parametrize(
    ("text", "name", "env", "threads", "settings"),
    [
        ("threads=1", "threads=1", {}, 1, {}),
        ("isa=default", "isa=default", {"ATEN_CPU_CAPABILITY": "default"}, None, {}),
        ("ISA=AVX2", "isa=avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, None, {}),
        ("mkldnn=off", "mkldnn=off", {}, None, {"mkldnn": False}),
        ("float64", "float64", {}, None, {"float64": True}),
        ("compile", "compile", {}, None, {"compile": True}),
        ("cuda", "cuda", {}, None, {"device": "cuda", "tf32": False}),
        ("tf32=on", "tf32=on", {}, None, {"device": "cuda", "tf32": True}),
        ("mps", "mps", {}, None, {"device": "mps"}),
        (
            "cuda:deterministic",
            "cuda:deterministic",
            {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
            None,
            {"device": "cuda", "tf32": False, "deterministic": True},
        ),
        ("mkldnn=off+threads=1", "threads=1+mkldnn=off", {}, 1, {"mkldnn": False}),
    ],
)
def test_variant_names_map_to_environments(text, name, env, threads, settings):
    variant = parse_variant(text)
    assert (variant.name, dict(variant.env), variant.num_threads) == (name, env, threads)
    assert dict(variant.settings) == settings


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("threads=0", "N >= 1"),
        ("threads=two", "N >= 1"),
        ("isa=sse3", "default, avx2, avx512"),
        ("mkldnn=maybe", "mkldnn=off"),
        ("gpu", "unknown variant 'gpu'"),
        ("threads=1+threads=2", "sets threads twice"),
        ("cuda+mps", "sets device twice"),
        ("mps+float64", "MPS has no float64"),
        ("threads=1+", "empty variant name"),
    ],
)
def test_bad_variant_names_say_what_is_wrong(text, says):
    with pytest.raises(VariantError, match="--repro-variants") as info:
        parse_variant(text)
    assert says in str(info.value)


def test_lists_are_comma_separated_and_deduplicated_in_order():
    variants = parse_variants(["threads=1, isa=default", "threads=1", "mkldnn=off+threads=1"])
    assert [v.name for v in variants] == ["threads=1", "isa=default", "threads=1+mkldnn=off"]
    assert parse_variants(["", " , "]) == []


def test_the_float64_judge_is_added_once_and_marked():
    added = with_judge(parse_variants(["threads=1"]))
    assert [(v.name, v.judge_only) for v in added] == [("threads=1", False), ("float64", True)]
    assert "added" in added[-1].describe()
    asked = with_judge(parse_variants(["float64,threads=1"]))
    assert [(v.name, v.judge_only) for v in asked] == [("float64", False), ("threads=1", False)]
    assert with_judge([]) == []


# ------------------------------------------------------------------- what this machine runs


def test_isas_follow_the_flags_pytorch_checks():
    avx2 = {"avx", "avx2", "fma", "sse4_2"}
    assert isas_from_flags(avx2, "x86_64") == ("default", "avx2")
    assert isas_from_flags(avx2 - {"fma"}, "x86_64") == ("default",)
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
    assert isas_from_flags(avx512, "x86_64") == ("default", "avx2", "avx512")
    assert isas_from_flags(avx512 - {"avx512bw"}, "x86_64") == ("default", "avx2")
    assert isas_from_flags(avx512, "aarch64") == ("default",)
    assert isas_from_capability("AVX2") == ("default", "avx2")
    assert isas_from_capability("ZVECTOR") == ("default",)


def test_an_isa_the_cpu_lacks_is_skipped_never_requested():
    reason = unsupported_reason(parse_variant("isa=avx512"), AVX2_HOST)
    assert reason and "does not support AVX512" in reason and "illegal instruction" in reason
    assert unsupported_reason(parse_variant("isa=avx2"), AVX2_HOST) is None
    assert unsupported_reason(parse_variant("isa=default"), AVX2_HOST) is None
    unknown = Capabilities(isas=None, isa_source="no /proc/cpuinfo")
    assert "cannot tell" in (unsupported_reason(parse_variant("isa=avx2"), unknown) or "")
    assert unsupported_reason(parse_variant("isa=default"), unknown) is None


def test_devices_and_compile_are_skipped_with_the_reason_when_absent():
    cpu_only = Capabilities(compile_problem="no C++ compiler")
    assert "no CUDA device" in (unsupported_reason(parse_variant("cuda"), cpu_only) or "")
    assert "TF32" in (unsupported_reason(parse_variant("tf32=on"), cpu_only) or "")
    assert "MPS" in (unsupported_reason(parse_variant("mps"), cpu_only) or "")
    assert "no C++ compiler" in (unsupported_reason(parse_variant("compile"), cpu_only) or "")
    no_onednn = Capabilities(mkldnn=False)
    assert "oneDNN" in (unsupported_reason(parse_variant("mkldnn=off"), no_onednn) or "")
    # A Dask worker with a GPU resource runs the cuda variant for a GPU-less parent.
    assert unsupported_reason(parse_variant("cuda"), Capabilities(gpu_workers=True)) is None
    assert unsupported_reason(parse_variant("cuda"), Capabilities(cuda_devices=1)) is None


def test_probing_this_machine_does_not_fail():
    caps = probe_capabilities()
    assert caps.isas is not None and caps.isas[0] == "default"
    if caps.isa_source.startswith("from /proc/cpuinfo") and "avx512" in caps.isas:
        assert "avx2" in caps.isas  # a CPU with AVX-512 (as torch needs it) has AVX2


# ----------------------------------------------------------------------------------- the plan


def test_the_plan_gives_each_variant_replicas_with_their_own_hash_seeds():
    threads, isa = parse_variants(["threads=1,isa=avx512"])
    judge = with_judge([threads])[-1]
    plan = plan_variants(
        {"a.py::t1": [threads, isa, judge], "a.py::t2": [threads, judge]},
        AVX2_HOST,
        runs=2,
        first_index=2,
    )
    assert [p.name for p in plan] == ["threads=1", "isa=avx512", "float64"]
    assert [s.index for p in plan for s in p.specs] == [2, 3, 4]  # the added judge runs once
    first = plan[0].specs[0]
    assert (dict(first.env), first.num_threads) == ({"PYTHONHASHSEED": "0"}, 1)
    assert plan[0].specs[1].env["PYTHONHASHSEED"] == "1"
    assert plan[0].nodeids == ("a.py::t1", "a.py::t2")
    assert plan[1].specs == () and "AVX512" in plan[1].skipped
    assert plan[1].nodeids == ("a.py::t1",)
    assert dict(plan[2].specs[0].settings) == {"float64": True}


def test_variant_specs_travel_through_json():
    from repro_check.orchestration.replicas import ReplicaSpec

    spec = variant_specs(parse_variant("isa=default+float64"), 1, 7)[0]
    again = ReplicaSpec.from_json(spec.to_json())
    assert again == spec and dict(again.settings) == {"float64": True}
    assert again.env["ATEN_CPU_CAPABILITY"] == "default"


# ---------------------------------------------------------------------- in-process settings


def draws() -> dict[str, torch.Tensor]:
    """Random draws whose consumption of the stream depends on the dtype in plain PyTorch."""
    torch.manual_seed(0)
    return {
        "randn": torch.randn(100),
        "uniform_": torch.empty(100).uniform_(-2, 2),
        "linear": torch.nn.Linear(20, 8).weight.detach(),
        "bernoulli": torch.bernoulli(torch.full((50,), 0.3)),
        "randint": torch.randint(0, 5, (20,)),
        "after": torch.rand(4, dtype=torch.float32),  # the stream's position afterwards
    }


def test_float64_runs_in_double_precision_from_the_references_random_numbers():
    reference = draws()
    undo = apply_settings({"float64": True})
    try:
        assert torch.get_default_dtype() == torch.float64
        wide = draws()
        # Code that calls .float() on its data still meets float64 weights.
        mixed = torch.nn.functional.linear(torch.ones(3, 20, dtype=torch.float32), wide["linear"])
        # conv2d checks its operands' dtypes before dispatch: unified at the function level
        image = torch.ones(1, 1, 4, 4, dtype=torch.float32)
        convolved = torch.nn.functional.conv2d(image, torch.ones(2, 1, 3, 3), torch.ones(2))
        in_place = torch.ones(3, dtype=torch.float32).add_(torch.ones(3))  # stays float32
    finally:
        undo()
    assert torch.get_default_dtype() == torch.float32
    assert wide["randn"].dtype == torch.float64 and mixed.dtype == torch.float64
    assert convolved.dtype == torch.float64 and in_place.dtype == torch.float32
    assert wide["randint"].dtype == torch.int64
    for name, tensor in reference.items():
        assert torch.equal(tensor.double(), wide[name].double()), name


def test_settings_are_undone():
    enabled = torch.backends.mkldnn.enabled
    deterministic = torch.are_deterministic_algorithms_enabled()
    undo = apply_settings({"mkldnn": False, "deterministic": True})
    assert torch.backends.mkldnn.enabled is False
    assert torch.are_deterministic_algorithms_enabled()
    undo()
    assert torch.backends.mkldnn.enabled == enabled
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    apply_settings({})()  # nothing to apply, nothing to undo


# ------------------------------------------------------------- the cross-variant verdict


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunRecord]:
    folder = tmp_path_factory.mktemp("runs")
    return {
        "reference": train(folder, "reference"),
        "float64": train(folder, "float64", float64=True),
        "same": train(folder, "same"),
        "reordered": train(folder, "reordered", reorder=True),
        "bug": train(folder, "bug", scale_bug=1.001),
        "nan": train(folder, "nan", nan_at=1),
        "short": train(folder, "short", steps=2),
        "unspilled": train(folder, "unspilled", reorder=True, spill=False),
    }


def test_bit_for_bit_is_identical(runs):
    analysis = analyze_drift(runs["reference"], runs["same"], runs["float64"])
    assert decide(analysis).status == drift.IDENTICAL
    assert analysis.first_drift is None and all(s.identical for s in analysis.steps)


def test_reduction_order_noise_agrees_and_is_measured(runs):
    analysis = analyze_drift(runs["reference"], runs["reordered"], runs["float64"])
    decision = decide(analysis)
    assert decision.status == drift.AGREES, decision.reason
    first = analysis.first_step
    assert first is not None and first.step == 0
    assert first.max_ulp is not None and first.max_ulp >= 1
    assert 0 < first.fraction_differing < 1 and first.max_abs > 0
    assert first.reference_error is not None and first.reference_error > 0
    assert first.judgement is not None and first.judgement.agrees
    assert all(k.judgement is not None for k in analysis.first_keys if k.dtype == "float32")


def test_the_float64_run_is_the_yardstick_not_judged(runs):
    analysis = analyze_drift(runs["reference"], runs["float64"])
    assert decide(analysis, is_judge=True).status == drift.JUDGE
    assert analysis.first_step is not None and analysis.first_step.step == 0


def test_a_real_numerical_bug_disagrees_at_any_scale(tmp_path, runs):
    decision = decide(analyze_drift(runs["reference"], runs["bug"], runs["float64"]))
    assert decision.status == drift.DISAGREES
    assert (
        "beyond the float64 rule" in decision.reason and "first drift at step 0" in decision.reason
    )
    for scale in (1e-3, 1e3):  # the rule scales with the data: noise passes, the bug fails
        ref = train(tmp_path, f"ref{scale}", scale=scale)
        wide = train(tmp_path, f"f64{scale}", scale=scale, float64=True)
        noise = train(tmp_path, f"noise{scale}", scale=scale, reorder=True)
        bug = train(tmp_path, f"bug{scale}", scale=scale, scale_bug=1.001)
        assert decide(analyze_drift(ref, noise, wide)).status in (drift.AGREES, drift.IDENTICAL)
        assert decide(analyze_drift(ref, bug, wide)).status == drift.DISAGREES


def test_nan_where_the_reference_has_none_disagrees(runs):
    decision = decide(analyze_drift(runs["reference"], runs["nan"], runs["float64"]))
    assert decision.status == drift.DISAGREES
    assert "NaN" in decision.reason and "step 1" in decision.reason


def test_other_steps_cannot_be_compared(runs):
    decision = decide(analyze_drift(runs["reference"], runs["short"], runs["float64"]))
    assert decision.status == drift.DISAGREES and "other steps" in decision.reason


def test_without_float64_the_stated_tolerances_decide(runs):
    loose = analyze_drift(runs["reference"], runs["reordered"], atol=1e-4, rtol=1e-3)
    assert loose.judged_by == "tolerances" and decide(loose).status == drift.AGREES
    exact = decide(analyze_drift(runs["reference"], runs["reordered"], atol=0.0, rtol=0.0))
    assert exact.status == drift.DISAGREES and "stated tolerances" in exact.reason


def test_without_spilled_tensors_the_statistics_are_judged(runs):
    analysis = analyze_drift(runs["reference"], runs["unspilled"], runs["float64"])
    assert analysis.first_keys and all(k.from_stats for k in analysis.first_keys if k.mismatch)
    assert decide(analysis).status == drift.AGREES


def test_amplified_drift_is_reported_not_failed(runs):
    analysis = analyze_drift(runs["reference"], runs["reordered"], runs["float64"])
    later = analysis.steps[-1]
    assert later.judgement is not None
    later.judgement = Fp64Judgement(False, 1e-8, 1e-6, 2e-8, 2.0, 1e-9, 100, "beyond")
    decision = decide(analysis)
    assert decision.status == drift.DRIFTS and decision.amplified_from == later.step
    assert "amplified" in decision.reason


def test_a_first_drift_step_without_values_cannot_pass(runs):
    analysis = analyze_drift(runs["reference"], runs["reordered"], runs["float64"])
    assert analysis.first_step is not None
    analysis.first_step.values_missing = 2
    decision = decide(analysis)
    assert decision.status == drift.DISAGREES and "--repro-spill-mb" in decision.reason


def test_ulp_distance_counts_representable_numbers_between():
    one = torch.tensor([1.0, -2.0, 2.0])
    later = torch.tensor([torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)).item(), -2.0, 2.0])
    assert drift.max_ulp_distance(one, later) == 1.0
    assert drift.max_ulp_distance(one, one.double()) == 0.0
    # Around zero a ULP means nothing: tiny values and sign flips are left out.
    assert drift.max_ulp_distance(torch.tensor([1.0, -1e-30]), torch.tensor([1.0, 1e-30])) == 0.0
    assert drift.max_ulp_distance(torch.tensor([1, 2]), torch.tensor([1, 3])) is None


# ----------------------------------------------------------------------- the variant stage


NODEID = "tests/test_model.py::test_train"
CPU_HOST = Capabilities(machine="x86_64", isas=("default", "avx2"), isa_source="test")


def staged(runs, by_variant: dict[str, list[str | None]], *, reference=("reference", "same")):
    """Run the variant stage over ``by_variant`` (variant name -> the records its replicas
    return; None: that replica crashed) against reference replicas ``reference``."""
    names = [*by_variant]
    variants = with_judge(parse_variants(names))
    plan = plan_variants({NODEID: variants}, CPU_HOST, runs=2, first_index=2)
    specs = [ReplicaSpec(0), ReplicaSpec(1)]
    results = [ReplicaResult(NODEID, i, "passed", record=runs[r]) for i, r in enumerate(reference)]
    verdict = judge(NODEID, 1, 0, specs, results)
    records = {**by_variant, "float64": by_variant.get("float64", ["float64"])}

    def results_of(planned):
        for spec, name in zip(planned.specs, records[planned.name], strict=True):
            if name is None:
                yield ReplicaResult(NODEID, spec.index, "crashed", error="killed by SIGILL")
            else:
                yield ReplicaResult(NODEID, spec.index, "passed", record=runs[name])

    VariantStage(plan).stage(Case(NODEID, NODEID, atol=0.0, rtol=0.0), verdict, results_of)
    return verdict


def outcome(verdict, name):
    return next(o for o in verdict.variants.outcomes if o.name == name)


def test_the_stage_fails_the_test_on_a_disagreeing_variant(runs):
    verdict = staged(runs, {"threads=1": ["reordered", "reordered"], "mkldnn=off": ["bug", "bug"]})
    assert verdict.status == VARIANT_MISMATCH and verdict.failed
    assert outcome(verdict, "threads=1").status == drift.AGREES
    assert outcome(verdict, "mkldnn=off").status == drift.DISAGREES
    assert outcome(verdict, "float64").status == drift.JUDGE
    assert verdict.variants.judged_by.startswith("the float64 run")
    assert [o.name for o in verdict.variants.failing()] == ["mkldnn=off"]
    assert verdict.to_json()["variants"]["failed"] is True


def test_the_stage_passes_agreeing_variants_and_says_why_others_were_skipped(runs):
    verdict = staged(runs, {"threads=1": ["reordered", "reordered"], "isa=avx512": []})
    assert verdict.status == "identical" and not verdict.variants.failed
    skipped = outcome(verdict, "isa=avx512")
    assert skipped.status == drift.SKIPPED and "AVX512" in skipped.reason


def test_a_variant_that_crashes_or_is_not_reproducible_fails(runs):
    crashed = staged(runs, {"isa=avx2": ["reordered", None]})
    assert outcome(crashed, "isa=avx2").status == drift.FAILED
    assert "SIGILL" in outcome(crashed, "isa=avx2").reason
    unstable = staged(runs, {"isa=avx2": ["reordered", "same"]})
    found = outcome(unstable, "isa=avx2")
    assert found.status == drift.FAILED and "own replicas differ" in found.reason
    assert unstable.status == VARIANT_MISMATCH


def test_a_failed_float64_run_leaves_the_stated_tolerances(runs):
    verdict = staged(runs, {"threads=1": ["reordered", "reordered"], "float64": [None, None]})
    assert outcome(verdict, "float64").status == drift.FAILED
    assert "stated tolerances" in verdict.variants.judged_by
    assert outcome(verdict, "threads=1").status == drift.DISAGREES  # atol=rtol=0 here


def test_variants_are_not_judged_against_diverging_replicas(runs):
    verdict = staged(runs, {"threads=1": ["same", "same"]}, reference=("reference", "bug"))
    assert verdict.status == "diverged"
    assert all(o.status == drift.SKIPPED for o in verdict.variants.outcomes)
    assert "not judged" in verdict.variants.note


# --------------------------------------------------------------------- the first drift op


def sig(h: int, origin: str = "traced", event: int = -1) -> TensorSig:
    return TensorSig(h, "float32", (4,), origin, event)


def event(i: int, op: str, inputs, outputs, **kw) -> OpEvent:
    return OpEvent(
        i, op, "default", 0, tuple(inputs), tuple(outputs), f"model.py:{10 + i} in f", "", **kw
    )


def traced(tmp_path: Path, name: str, events: list[OpEvent]) -> ReplicaResult:
    path = tmp_path / f"{name}.jsonl"
    write_trace(path, events, False)
    record = RunRecord([StepRecord(0)])
    return ReplicaResult(NODEID, 0, "passed", record=record, run_info={"trace_path": str(path)})


def locate(tmp_path, reference, other, variant, start_after=None, step=0):
    reruns = [traced(tmp_path, "a", reference), traced(tmp_path, "b", other)]
    return drift_op.locate(reruns, step, start_after, parse_variant(variant))


def test_the_first_op_with_equal_inputs_and_other_outputs_is_named_and_judged(tmp_path):
    common = [event(0, "aten::randn", [], [sig(1)], rng_state=7)]
    mine = [*common, event(1, "aten::addmm", [sig(1, event=0)], [sig(2)], requires_grad=True)]
    theirs = [*common, event(1, "aten::addmm", [sig(1, event=0)], [sig(3)], requires_grad=True)]
    found = locate(tmp_path, mine, theirs, "threads=1", start_after=4, step=5)
    assert (found.kind, found.op, found.family) == ("op", "aten::addmm", drift_op.MATMUL)
    assert found.expected is True and found.source == "model.py:11 in f"
    assert not found.before_step_0 and "step 5" in found.headline()
    mul = [*common, event(1, "aten::mul", [sig(1, event=0)], [sig(2)])]
    other_mul = [*common, event(1, "aten::mul", [sig(1, event=0)], [sig(3)])]
    pointwise = locate(tmp_path, mul, other_mul, "threads=1", start_after=4, step=5)
    assert pointwise.expected is False and "not expected" in pointwise.why


def test_drift_in_a_random_kernel_before_training_is_initialisation(tmp_path):
    mine = [event(0, "aten::normal_", [sig(0)], [sig(5)], rng_state=7)]
    theirs = [event(0, "aten::normal_", [sig(0)], [sig(6)], rng_state=7)]
    found = locate(tmp_path, mine, theirs, "isa=default")
    assert found.before_step_0 and found.family == drift_op.RANDOM and found.expected is True
    assert "before step 0 (initialisation)" in found.headline()
    assert locate(tmp_path, mine, theirs, "threads=1").expected is False


def test_other_python_arguments_are_another_code_path(tmp_path):
    mine = [event(0, "aten::add", [sig(1, "external", 0)], [sig(2)], args_hash=1)]
    theirs = [event(0, "aten::add", [sig(1, "external", 0)], [sig(3)], args_hash=2)]
    theirs[0].source = "model.py:99 in fast_path"
    found = locate(tmp_path, mine, theirs, "threads=1")
    assert found.kind == "code-path" and found.expected is False
    assert "at model.py:10 in f (the variant: model.py:99 in fast_path)" in found.headline()
    assert "reads its environment" in found.why


def test_a_failed_or_identical_rerun_says_so(tmp_path):
    same = [event(0, "aten::mul", [sig(1)], [sig(2)])]
    assert locate(tmp_path, same, same, "threads=1").kind == "none"
    reruns = [
        traced(tmp_path, "a", same),
        ReplicaResult(NODEID, 1, "failed", error="boom\nValueError: x"),
    ]
    found = drift_op.locate(reruns, 0, None, parse_variant("threads=1"))
    assert found.kind == "unavailable" and "ValueError: x" in found.message


@pytest.mark.parametrize(
    ("op", "variant", "expected"),
    [
        ("aten::sum.dim_IntList", "threads=1", True),
        ("aten::convolution", "mkldnn=off", True),
        ("aten::exp", "isa=default", True),
        ("aten::exp", "threads=1", False),
        ("aten::addcdiv_", "isa=avx2", True),
        ("aten::index_select", "cuda", False),
        ("aten::mul.Tensor", "cuda", True),
        ("aten::index_put_", "deterministic", True),
        ("aten::relu", "isa=default", False),
    ],
)
def test_which_drift_is_expected_where(op, variant, expected):
    assert drift_op.expectation(drift_op.op_kind(op), parse_variant(variant))[0] is expected


# ------------------------------------------------------------------------------ rendering


def test_the_report_names_verdicts_first_drift_and_growth(runs, tmp_path):
    verdict = staged(runs, {"threads=1": ["reordered", "reordered"], "mkldnn=off": ["bug", "bug"]})
    report = verdict.to_json()["variants"]
    text = "\n".join(drift_report.report_lines(report))
    assert "judged by the float64 run" in text
    assert "[ok] threads=1: agrees" in text and "[FAIL] mkldnn=off: disagrees" in text
    assert "first drift: step 0" in text and "max ULP" in text and "float64 rule" in text
    markdown, pngs = drift_report.drift_section(tmp_path, [{"nodeid": NODEID, "variants": report}])
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    assert pngs[0].relative_to(tmp_path).parts[0] == "drift"
    assert f"![drift]({pngs[0].relative_to(tmp_path).as_posix()})" in markdown
    from repro_check.reporting.verdicts import failure_message

    message = failure_message(verdict)
    assert "a backend variant does not" in message and "mkldnn=off: disagrees" in message


def test_growth_tables_show_the_first_drift_step_then_spread_out():
    assert drift_report.growth_indices(0, 5) == [0, 1, 2, 3, 4]
    rows = drift_report.growth_indices(2, 40)
    assert rows[:3] == [2, 3, 4] and rows[-1] == 39 and len(rows) <= drift_report.GROWTH_ROWS


def test_a_test_with_allowed_nondeterminism_may_part_within_a_variant(runs):
    from repro_check.orchestration.allowance import Allowance

    verdict = staged(runs, {"isa=avx2": ["reordered", "same"]})
    assert outcome(verdict, "isa=avx2").status == drift.FAILED
    plan = plan_variants(
        {NODEID: with_judge(parse_variants(["isa=avx2"]))}, CPU_HOST, runs=2, first_index=2
    )
    results = [ReplicaResult(NODEID, i, "passed", record=runs["reference"]) for i in range(2)]
    allowed = judge(NODEID, 1, 0, [ReplicaSpec(0), ReplicaSpec(1)], results)
    records = {"isa=avx2": ["reordered", "same"], "float64": ["float64"]}

    def results_of(planned):
        for spec, name in zip(planned.specs, records[planned.name], strict=True):
            yield ReplicaResult(NODEID, spec.index, "passed", record=runs[name])

    case = Case(NODEID, NODEID, allowed=(Allowance("aten::index_put", "bag sums"),))
    VariantStage(plan).stage(case, allowed, results_of)
    assert outcome(allowed, "isa=avx2").status == drift.AGREES


def test_other_python_arguments_that_change_nothing_are_not_the_drift(tmp_path):
    # A GPU variant's factory gets device="cuda": other arguments, the same numbers.
    mine = [
        event(0, "aten::randn", [], [sig(1)], args_hash=1, rng_state=7),
        event(1, "aten::convolution", [sig(1, event=0)], [sig(2)], requires_grad=True),
    ]
    theirs = [
        event(0, "aten::randn", [], [sig(1)], args_hash=2, rng_state=7),
        event(1, "aten::convolution", [sig(1, event=0)], [sig(3)], requires_grad=True),
    ]
    found = locate(tmp_path, mine, theirs, "cuda")
    assert (found.kind, found.op, found.expected) == ("op", "aten::convolution", True)


def test_variants_drifting_at_one_step_share_one_traced_rerun_of_the_reference(runs, tmp_path):
    calls = []

    def rerunner(nodeid, originals, window, attempt):
        calls.append(([spec.index for spec in originals], window))
        common = [event(0, "aten::randn", [], [sig(1)], rng_state=7)]
        traces = [
            common + [event(1, "aten::addmm", [sig(1, event=0)], [sig(10 + i)])]
            for i in range(len(originals))
        ]
        return [traced(tmp_path, f"r{i}", t) for i, t in enumerate(traces)]

    variants = with_judge(parse_variants(["threads=1,isa=avx2"]))
    plan = plan_variants({NODEID: variants}, CPU_HOST, runs=1, first_index=2)
    specs = [ReplicaSpec(0), ReplicaSpec(1)]
    results = [ReplicaResult(NODEID, i, "passed", record=runs["reference"]) for i in range(2)]
    verdict = judge(NODEID, 1, 0, specs, results)
    verdict.duration = 1.0

    def results_of(planned):
        name = "float64" if planned.name == "float64" else "reordered"
        for spec in planned.specs:
            yield ReplicaResult(NODEID, spec.index, "passed", record=runs[name])

    stage = VariantStage(plan, rerunner=rerunner)
    stage.stage(Case(NODEID, NODEID), verdict, results_of)
    assert len(calls) == 1 and calls[0][0] == [0, 2, 3]  # reference once, both variants
    assert calls[0][1].start_after is None and calls[0][1].stop_at == 0
    for name in ("threads=1", "isa=avx2"):
        found = outcome(verdict, name).drift_op
        assert found is not None and found.op == "aten::addmm" and found.expected is True


# ----------------------------------------------- end to end: the planted bug (one session)


def test_the_planted_single_thread_bug_fails_under_the_float64_rule(tmp_path):
    """pytest --repro --repro-variants=threads=1 on the planted wrong-epsilon path: the
    replicas agree, the threads=1 variant does not, and the report names the step, the key,
    the line, the rule's numbers, the drift curve and the record kept for compare."""
    import subprocess
    import sys

    from pytest_runs import clean_env, failure_section

    root = Path(__file__).resolve().parent.parent
    test = (
        "suites/nondeterministic/test_thread_path_bug.py"
        "::test_single_thread_path_with_wrong_epsilon"
    )
    report = tmp_path / "report"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            test,
            "--repro",
            "--repro-variants=threads=1",
            "--repro-variant-runs=1",
            "--repro-baseline=off",
            f"--repro-report={report}",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
        ],
        cwd=root,
        env=clean_env(OMP_NUM_THREADS="2"),  # the reference takes the multi-threaded path
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    failure = failure_section(output, "test_single_thread_path_with_wrong_epsilon")
    assert "the replicas agree, but a backend variant does not" in failure
    assert "[FAIL] threads=1: disagrees -- first drift at step 0" in failure
    assert "beyond the float64 rule" in failure
    # the reference adds its epsilon on line 21, the variant on line 20 (the "fast path")
    assert "test_thread_path_bug.py:21 in rms_norm" in failure and "not expected" in failure
    assert (
        "(the variant: suites/nondeterministic/test_thread_path_bug.py:20 in rms_norm)" in failure
    )
    assert "--repro-variants=threads=1" in failure  # the rerun command keeps the variant
    assert "repro variants" in output and "variant-mismatch" in output
    tested = json.loads((report / "report.json").read_text())["tests"][0]
    statuses = {o["name"]: o["status"] for o in tested["variants"]["outcomes"]}
    assert statuses == {"float64": "judge", "threads=1": "disagrees"}
    assert list((report / "drift").rglob("*.png"))
    assert "## Backend variants" in (report / "report.md").read_text()
    assert list((report / "records").rglob("test_single_thread_path_with_wrong_epsilon.json"))


def test_another_op_sequence_is_expected_only_where_the_variant_switches_implementations(
    tmp_path,
):
    mine = [event(0, "aten::mkldnn_rnn_layer", [sig(1, "external", 0)], [sig(2)])]
    theirs = [event(0, "aten::clone", [sig(1, "external", 0)], [sig(2)])]
    switched = locate(tmp_path, mine, theirs, "mkldnn=off")
    assert (switched.kind, switched.expected) == ("implementation", True)
    assert locate(tmp_path, mine, theirs, "threads=1").kind == "code-path"


def test_the_first_differentiable_op_is_not_initialisation(tmp_path):
    mine = [event(0, "aten::convolution", [sig(1, "external", 0)], [sig(2)], requires_grad=True)]
    theirs = [event(0, "aten::convolution", [sig(1, "external", 0)], [sig(3)], requires_grad=True)]
    found = locate(tmp_path, mine, theirs, "mkldnn=off")
    assert not found.before_step_0 and "step 0" in found.headline()
