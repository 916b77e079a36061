"""The orchestration layer's decisions, without starting pytest: allowances, marker validation,
rerun/accept commands, the investigation loop, the baseline stage and the verdict pipeline.

Records come from real (tiny) training runs; reruns come from a fake rerunner that returns
real records, so every branch of the decision is exercised in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repro_check.core.record import Recorder, RunRecord
from repro_check.core.spill import SpillWriter
from repro_check.orchestration import investigation
from repro_check.orchestration.allowance import (
    Allowance,
    AllowanceError,
    allowance_atol,
    from_ini_lines,
    from_mapping,
    merge,
    parse_rationale,
)
from repro_check.orchestration.case import Case, MarkerError, SessionSettings, parse_marker
from repro_check.orchestration.gate import BaselineGate
from repro_check.orchestration.investigation import (
    TraceWindow,
    investigate,
    process_state_finding,
    should_localize,
    window_start,
)
from repro_check.orchestration.launcher import WorkerLauncher, WorkerSettings
from repro_check.orchestration.replay import VerdictPipeline
from repro_check.orchestration.replicas import ReplicaResult, default_specs
from repro_check.orchestration.verdict import (
    ALLOWED,
    BASELINE_MISMATCH,
    BASELINE_MISSING,
    DIVERGED,
    ERROR,
    IDENTICAL,
    Localization,
    TestVerdict,
    judge,
)

NODEID = "tests/test_model.py::test_train"
SNAPSHOT: dict = {}  # the environment is not what these tests vary


def record_run(
    tmp_path: Path, name: str, *, nudge_at: int | None = None, delta: float = 0.0
) -> RunRecord:
    """A real 4-step SGD run; ``nudge_at`` moves one weight after that step (a planted
    divergence, by one ulp unless ``delta`` is given)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1)
    recorder = Recorder(SpillWriter(tmp_path / f"{name}.bin", 2**20))
    for step in range(4):
        loss = model(torch.randn(8, 4, generator=data)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == nudge_at:
            with torch.no_grad():
                w = model.weight[0, 0]
                model.weight[0, 0] = w + delta if delta else torch.nextafter(w, w + 1)
        recorder.record(step, {"model": model, "loss": loss})
    return recorder.close()


def result(replica: int, record: RunRecord | None, outcome: str = "passed", **kw) -> ReplicaResult:
    return ReplicaResult(NODEID, replica, outcome, record=record, environment=SNAPSHOT, **kw)


# ----------------------------------------------------------------------------- allowances


def test_rationale_sugar_reads_bounds_and_tolerates_a_trailing_period():
    allowance = parse_rationale("aten::index_put", "scatter-add in the loss; atol=1e-4.", "here")
    assert allowance == Allowance("aten::index_put", "scatter-add in the loss", 1e-4, None)
    assert parse_rationale("aten::put", "bounded; atol=1e-5; rtol=0", "x").rtol == 0.0
    prose = parse_rationale("aten::put", "bag sums; bounded by atol=1e-4", "x")
    assert (prose.why, prose.atol) == ("bag sums", 1e-4)
    assert parse_rationale("aten::put", "why; see issue 12", "x").why == "why; see issue 12"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("why; atol=abc", "atol='abc' must be a number"),
        ("why; atol=-1", "must be a finite number >= 0"),
        ("why; tolerance=3", "cannot read tolerance=3"),
        ("; atol=1e-3", "needs a reason"),
    ],
)
def test_bad_rationales_name_the_problem(text, fragment):
    with pytest.raises(AllowanceError, match="test_x") as info:
        parse_rationale("aten::index_put", text, "test_x")
    assert fragment in str(info.value)


def test_mapping_form_and_errors():
    [a] = from_mapping({"aten::index_put": {"why": "scatter", "atol": 1e-4}}, "t")
    assert (a.op, a.why, a.atol, a.rtol) == ("aten::index_put", "scatter", 1e-4, None)
    with pytest.raises(AllowanceError, match="must be a mapping"):
        from_mapping(["aten::index_put"], "t")
    with pytest.raises(AllowanceError, match="unknown field.*tol"):
        from_mapping({"aten::index_put": {"why": "x", "tol": 1}}, "t")
    with pytest.raises(AllowanceError, match="not an aten op name"):
        from_mapping({"index_put": "why"}, "t")


def test_ini_lines_marker_overrides_and_op_families():
    ini = from_ini_lines(["aten::index_put: from the ini; atol=1e-6", "", "aten::put:no space"])
    assert [a.op for a in ini] == ["aten::index_put", "aten::put"]
    with pytest.raises(AllowanceError, match="one allowance per line"):
        from_ini_lines(["index_put because"])
    merged = merge(ini, [Allowance("aten::index_put", "from the marker", 1e-3)])
    assert {a.op: a.why for a in merged} == {
        "aten::index_put": "from the marker",
        "aten::put": "no space",
    }
    assert allowance_atol(merged, 1e-8) == 1e-3
    allowed = Allowance("aten::index_put", "why")
    assert allowed.covers("aten::index_put_") and allowed.covers("aten::index_put.default")
    assert not allowed.covers("aten::index_add") and not allowed.covers("")


# ----------------------------------------------------------------------------- the marker


@pytest.mark.parametrize(
    "args, kwargs, fragment",
    [
        ((5,), {}, "keyword arguments only"),
        ((), {"step": 5}, "unknown keyword(s) step"),
        ((), {"steps": True}, "steps must be an integer >= 1"),
        ((), {"steps": 0}, "steps must be an integer >= 1"),
        ((), {"atol": -1.0}, "must be >= 0"),
        ((), {"rtol": "small"}, "rtol must be a number"),
        ((), {"allow": "aten::index_put"}, "allow= must be a mapping"),
    ],
)
def test_bad_markers_are_usage_errors_naming_the_test(args, kwargs, fragment):
    with pytest.raises(MarkerError) as info:
        parse_marker(NODEID, args, kwargs)
    assert NODEID in str(info.value) and fragment in str(info.value)


def test_good_marker():
    settings = parse_marker(NODEID, (), {"steps": 3, "atol": 1e-5, "allow": {"aten::put": "why"}})
    assert (settings.steps, settings.atol, settings.rtol) == (3, 1e-5, None)
    assert settings.allow == (Allowance("aten::put", "why"),)


def test_rerun_and_accept_commands_carry_what_decides_the_case():
    settings = SessionSettings(7, runs=3, deterministic=True, steps_override=5, baseline_dir="b")
    case = Case("t.py::test_a[x y]", "sub/t.py::test_a[x y]")
    assert settings.rerun_command(case) == (
        "pytest --repro --repro-seed=7 --repro-runs=3 --repro-deterministic --repro-steps=5 "
        "--repro-baseline-dir=b 'sub/t.py::test_a[x y]'"
    )
    assert settings.accept_command(case).startswith("pytest --repro --repro-update --repro-seed=7")


def test_worker_command_line(tmp_path):
    launcher = WorkerLauncher(
        WorkerSettings(tmp_path, tmp_path, 1, 10, steps_override=4, load_plugin=True), tmp_path
    )
    command = launcher.command(["a/test_x.py::test_1", "a/test_x.py::test_2"], tmp_path / "s.json")
    assert command.count(str(tmp_path / "a/test_x.py")) == 1
    assert f"--repro-worker={tmp_path / 's.json'}" in command
    assert "--repro-steps=4" in command
    assert command[-2:] == ["-p", "repro_check.pytest_plugin"]
    assert "no:hypothesispytest" not in command  # unless told that no test uses @given
    launcher.for_tests(uses_hypothesis=False)
    assert launcher.command(["a/test_x.py::test_1"], tmp_path / "s.json")[-2:] == [
        "-p",
        "no:hypothesispytest",
    ]


def test_hypothesis_tests_are_recognised_among_marked_tests():
    from hypothesis import given, strategies

    from repro_check.pytest_plugin.items import uses_hypothesis

    @given(strategies.integers())
    def with_given(x):
        pass

    def plain():
        pass

    class Item:
        def __init__(self, obj, marked=True):
            self.obj, self.marked = obj, marked

        def get_closest_marker(self, name):
            return object() if self.marked and name == "repro" else None

    assert uses_hypothesis([Item(plain), Item(with_given)])
    assert not uses_hypothesis([Item(plain), Item(with_given, marked=False)])
    assert not uses_hypothesis([])


# ----------------------------------------------------------------------------- investigation


def test_window_and_localize_policy():
    assert window_start([0, 1, 2, 3], 2, attempt=0) == 1
    assert window_start([0, 1, 2, 3], 0, attempt=0) is None
    assert window_start([0, 1, 2, 3], 2, attempt=1) is None  # retries trace from the start
    assert should_localize("auto", duration=10.0, replicas=2)
    assert not should_localize("auto", duration=100.0, replicas=2)
    assert should_localize("always", 1e9, 2) and not should_localize("never", 0.0, 2)


def diverged_verdict(tmp_path: Path, specs) -> TestVerdict:
    verdict = judge(
        NODEID,
        1,
        0,
        specs,
        [result(0, record_run(tmp_path, "a")), result(1, record_run(tmp_path, "b", nudge_at=2))],
    )
    assert verdict.status == DIVERGED and verdict.comparison.divergence.step == 2
    return verdict


class FakeRerunner:
    """Reruns that behave as scripted: replica 0 reproduces itself; the other one parts at
    ``parts_at[attempt]`` (None: the rerun does not diverge)."""

    def __init__(self, tmp_path: Path, parts_at: list[int | None]):
        self.tmp_path, self.parts_at, self.calls = tmp_path, parts_at, []

    def __call__(self, nodeid, originals, window, attempt):
        self.calls.append((len(originals), window))
        first = result(0, record_run(self.tmp_path, f"r{attempt}a"))
        if len(originals) == 1:
            return [first]
        part = self.parts_at[attempt]
        return [first, result(1, record_run(self.tmp_path, f"r{attempt}b", nudge_at=part))]


def test_control_rerun_names_hash_randomisation(tmp_path):
    specs = default_specs(2, subprocess=True)
    verdict = diverged_verdict(tmp_path, specs)
    rerun = FakeRerunner(tmp_path, [])
    investigate(verdict, specs, rerun, localize_ops=False, control_speaks=True)
    assert rerun.calls == [(1, None)]  # the control alone, untraced
    assert verdict.diagnosis.startswith("only process-level state differs")
    assert "PYTHONHASHSEED" in verdict.diagnosis
    assert "inside the run" in process_state_finding(specs, control_matches=False)


def test_intermittent_divergence_is_retried_and_a_named_op_is_kept(tmp_path, monkeypatch):
    specs = default_specs(2, subprocess=True)
    verdict = diverged_verdict(tmp_path, specs)
    findings = iter(
        [
            Localization(
                "nondeterministic-op", "index_put_ differs", step=2, op="aten::index_put_"
            ),
            Localization("identical", "the traces agree", step=2),
            Localization("identical", "the traces agree", step=2),
        ]
    )
    monkeypatch.setattr(investigation, "localize", lambda *a, **k: next(findings))
    rerun = FakeRerunner(tmp_path, [None, None, None])  # never recurs
    investigate(verdict, specs, rerun, localize_ops=True, control_speaks=False)
    assert [w for _, w in rerun.calls] == [
        TraceWindow(1, 2),
        TraceWindow(None, 2),
        TraceWindow(None, 2),
    ]
    assert verdict.localization.op == "aten::index_put_" and verdict.localization.attempts == 1
    assert verdict.diagnosis == ""  # in-process replicas: the control cannot speak


def test_the_window_follows_where_the_reruns_part(tmp_path, monkeypatch):
    specs = default_specs(2, subprocess=True)
    verdict = diverged_verdict(tmp_path, specs)
    monkeypatch.setattr(
        investigation,
        "localize",
        lambda reruns, step, *a: Localization("nondeterministic-op", step=step),
    )
    rerun = FakeRerunner(tmp_path, [1, 1])  # the reruns part at step 1, not 2
    investigate(verdict, specs, rerun, localize_ops=True, control_speaks=True)
    assert [w for _, w in rerun.calls] == [TraceWindow(1, 2), TraceWindow(None, 1)]
    assert verdict.localization.step == 1 and verdict.localization.attempts == 2


# ----------------------------------------------------------------------------- the baseline stage


def identical_verdict(tmp_path: Path) -> TestVerdict:
    records = [result(i, record_run(tmp_path, f"id{i}")) for i in range(2)]
    verdict = judge(NODEID, 1, 0, default_specs(2, subprocess=True), records)
    assert verdict.status == IDENTICAL
    return verdict


def test_gate_writes_then_matches_then_catches_a_change(tmp_path):
    gate = BaselineGate(tmp_path, tmp_path, update=True)
    case = Case(NODEID, NODEID)
    verdict = identical_verdict(tmp_path)
    gate.stage(case, verdict, SNAPSHOT)
    assert verdict.baseline.action == "written" and gate.path_for(NODEID).exists()
    verdict = identical_verdict(tmp_path)
    gate.stage(case, verdict, SNAPSHOT)
    assert verdict.baseline.action == "unchanged"  # accepting one change touches no other file

    gate.update = False
    verdict = identical_verdict(tmp_path)
    gate.stage(case, verdict, SNAPSHOT)
    assert verdict.status == IDENTICAL and verdict.baseline.check.status == "match"
    changed = [result(i, record_run(tmp_path, f"ch{i}", nudge_at=1)) for i in range(2)]
    verdict = judge(NODEID, 1, 0, default_specs(2, subprocess=True), changed)
    gate.stage(case, verdict, SNAPSHOT)
    assert verdict.status == BASELINE_MISMATCH
    assert (verdict.baseline.check.step, verdict.baseline.check.mode) == (1, "bitwise")
    assert verdict.first_divergence().startswith("vs baseline: step 1: model.weight")
    assert gate.used == {gate.path_for(NODEID)}


def test_gate_missing_and_unreadable_baselines(tmp_path):
    gate = BaselineGate(tmp_path, tmp_path)
    verdict = identical_verdict(tmp_path)
    gate.stage(Case(NODEID, NODEID), verdict, SNAPSHOT)
    assert verdict.status == BASELINE_MISSING and verdict.baseline.failed
    path = gate.path_for(NODEID)
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    verdict = identical_verdict(tmp_path)
    gate.stage(Case(NODEID, NODEID), verdict, SNAPSHOT)
    assert verdict.status == BASELINE_MISMATCH and verdict.baseline.action == "unreadable"
    assert str(path.name) in verdict.baseline.error or verdict.baseline.error


# ----------------------------------------------------------------------------- the pipeline


def pipeline(tmp_path: Path, rerunner=None, gate=None, **kw) -> VerdictPipeline:
    return VerdictPipeline(
        SessionSettings(0), default_specs(2, subprocess=True), rerunner=rerunner, gate=gate, **kw
    )


def test_pipeline_identical_error_and_divergence(tmp_path):
    case = Case(NODEID, NODEID)
    same = [result(i, record_run(tmp_path, f"p{i}")) for i in range(2)]
    verdict = pipeline(tmp_path).decide(case, same)
    assert verdict.status == IDENTICAL and verdict.reference is None  # records dropped
    assert verdict.rerun_command.endswith(NODEID)

    failing = [result(0, None, "failed", error="boom"), result(1, record_run(tmp_path, "q"))]
    verdict = pipeline(tmp_path).decide(case, failing)
    assert (verdict.status, verdict.other_replica, verdict.error) == (ERROR, 0, "boom")

    rerun = FakeRerunner(tmp_path, [2])
    parted = [
        result(0, record_run(tmp_path, "d0")),
        result(1, record_run(tmp_path, "d1", nudge_at=2)),
    ]
    verdict = pipeline(tmp_path, rerunner=rerun, localize_mode="never").decide(case, parted)
    assert verdict.status == DIVERGED and "process-level" in verdict.diagnosis


def test_pipeline_applies_an_allowance_only_within_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(
        investigation,
        "localize",
        lambda *a, **k: Localization("nondeterministic-op", step=2, op="aten::index_put_"),
    )
    rerun = FakeRerunner(tmp_path, [2])

    def decide(atol: float, delta: float):
        case = Case(
            NODEID, NODEID, atol=0.0, allowed=(Allowance("aten::index_put", "scatter", atol),)
        )
        runs = [
            result(0, record_run(tmp_path, "a0")),
            result(1, record_run(tmp_path, "a1", nudge_at=2, delta=delta)),
        ]
        return pipeline(tmp_path, rerunner=rerun).decide(case, runs)

    verdict = decide(atol=1e-3, delta=1e-5)
    assert verdict.status == ALLOWED and "allowed: aten::index_put" in verdict.notes[-1]
    verdict = decide(atol=1e-6, delta=1e-2)
    assert (
        verdict.status == DIVERGED and "is allowed (scatter; atol=1e-06), but" in verdict.notes[-1]
    )
