"""Resume equivalence (``resume_at=k``): the checkpoint format and the decision, without pytest.

The three runs of a check (straight, stop, resume) are simulated in this process with a real
RunContext, Recorder and ResumeController, from the same training code as the suites
(suites/resumable.py): each classic mistake must be named, the correct loop must pass. One
end-to-end session checks the planted suite and the reference in real fresh processes.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pytest_runs import Finished, clean_env

import suites.nondeterministic.test_resume_mistakes as planted
import suites.test_resume as reference
from repro_check.core.context import RunContext
from repro_check.core.record import Recorder, RNGState
from repro_check.core.resume_state import (
    ResumeController,
    ResumeError,
    ResumePlan,
    StopAtCheckpoint,
    global_rng_tensors,
    restore_state,
    save_state,
    set_global_rngs,
)
from repro_check.core.seeding import SeedPlan
from repro_check.orchestration.case import MarkerError, parse_marker
from repro_check.orchestration.replicas import ReplicaResult, RunSpec
from repro_check.orchestration.resume import (
    EQUIVALENT,
    ERROR,
    MISMATCH,
    UNSUPPORTED,
    judge_resume,
    plan_for,
    resume_runs,
)
from suites.resumable import DropoutMLP

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- the RNGs


def test_global_rngs_round_trip_without_loss():
    random.seed(1)
    random.gauss(0, 1)  # leaves a cached gauss behind
    np.random.seed(2)
    np.random.standard_normal()  # leaves a cached gaussian behind
    torch.manual_seed(3)
    saved = global_rng_tensors()
    expected = (random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    assert set(set_global_rngs(saved)) == {"rng.python", "rng.numpy", "rng.torch"}
    again = (random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


# ----------------------------------------------------------------------------- the checkpoint


def _trained(steps: int = 3):
    torch.manual_seed(0)
    model = DropoutMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)
    for _ in range(steps):
        model(torch.randn(4, 20)).sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_checkpoint_restores_objects_in_place_and_keeps_state_order(tmp_path):
    from repro_check.core.record import flatten_leaves

    model, optimizer, scheduler = _trained()
    generator = torch.Generator().manual_seed(5)
    torch.rand(2, generator=generator)
    data = {"consumed": 7, "epoch_rng": generator.get_state(), "nested": {"epoch": 2}}
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "data": data}
    manifest = save_state(tmp_path / "step-3", 3, {**state, "rng": RNGState()}, {"test_id": "t"})
    assert manifest.suffix == ".json" and manifest.with_suffix(".safetensors").is_file()

    fresh_model, fresh_opt, fresh_sched = _trained(steps=0)
    fresh_data = {"consumed": 0, "epoch_rng": torch.Generator().get_state(), "nested": {"epoch": 0}}
    live = {"model": fresh_model, "optimizer": fresh_opt, "scheduler": fresh_sched}
    done = restore_state(tmp_path / "step-3", {**live, "data": fresh_data})
    assert done["restored"] == ["model", "optimizer", "scheduler", "data", "rng"]
    assert fresh_data["consumed"] == 7 and fresh_data["nested"] == {"epoch": 2}
    assert torch.equal(fresh_data["epoch_rng"], data["epoch_rng"])
    assert fresh_sched.last_epoch == scheduler.last_epoch == 3
    before = flatten_leaves({"model": model, "optimizer": optimizer})
    after = flatten_leaves({"model": fresh_model, "optimizer": fresh_opt})
    assert [k for k, _ in before] == [k for k, _ in after]  # same order: a record compares it
    assert all(
        torch.equal(torch.as_tensor(a), torch.as_tensor(b))
        for (_, a), (_, b) in zip(before, after, strict=True)
    )


def test_restore_reports_what_the_checkpoint_does_not_carry(tmp_path):
    model, optimizer, scheduler = _trained()
    save_state(tmp_path / "ck", 3, {"model": model, "optimizer": optimizer}, {})
    fresh = _trained(steps=0)
    done = restore_state(
        tmp_path / "ck", {"model": fresh[0], "optimizer": fresh[1], "scheduler": fresh[2]}
    )
    assert done["missing"] == ["scheduler"] and not done["rng"]
    done = restore_state(tmp_path / "ck", {"model": fresh[0]})
    assert done["not_given"] == ["optimizer"]


def test_restore_refuses_what_it_cannot_restore_in_place(tmp_path):
    save_state(tmp_path / "ck", 0, {"position": 4}, {})
    with pytest.raises(ResumeError, match="put plain numbers in a dict"):
        restore_state(tmp_path / "ck", {"position": 0})


# ----------------------------------------------------------------------------- the decision

NODEID = "suites/resumable.py::simulated"


def _run(train, role: str, at: int, path: Path, steps: int) -> ReplicaResult:
    """One run of a check in this process, as a worker runs it (seeded globals, a context
    with a recorder and the role's controller)."""
    context = RunContext(SeedPlan(12345), steps=steps, recorder=Recorder(), test_id=NODEID)
    context.seed_globals()
    context.resume = ResumeController(
        ResumePlan(role, at, str(path)), context.run_info.setdefault("resume", {}), {}
    )
    outcome, error = "passed", ""
    try:
        train(context)
    except StopAtCheckpoint:
        pass
    except Exception as exc:  # noqa: BLE001 - a failing run is a verdict input
        outcome, error = "failed", f"{type(exc).__name__}: {exc}"
    return ReplicaResult(
        NODEID, 0, outcome, error, record=context.close(), run_info=context.run_info
    )


def check(train, tmp_path, at: int = 5, steps: int = 10):
    path = tmp_path / "step"
    runs = [_run(train, role, at, path, steps) for role in ("straight", "stop", "resume")]
    return judge_resume(at, *runs)


def test_the_reference_suite_resumes_equivalently(tmp_path):
    verdict = check(reference.test_resume_mid_epoch, tmp_path, steps=12)
    assert verdict.status == EQUIVALENT, verdict.lines("t")
    assert verdict.steps_compared == 6 and not verdict.failed


def test_rng_state_left_out_is_named(tmp_path):
    verdict = check(planted.test_rng_state_not_restored, tmp_path)
    assert verdict.status == MISMATCH
    assert (verdict.finding.kind, verdict.finding.key) == ("not-restored", "rng.torch")
    assert "pass rng=repro.rng_state() to repro.checkpoint()" in verdict.finding.advice
    assert "torch's global CPU RNG state" in verdict.finding.message


def test_scheduler_left_out_is_named(tmp_path):
    verdict = check(planted.test_scheduler_not_restored, tmp_path)
    assert verdict.status == MISMATCH
    assert (verdict.finding.kind, verdict.finding.key) == ("not-restored", "scheduler.last_epoch")
    assert "the checkpoint does not carry scheduler" in verdict.finding.advice
    assert "scheduler.last_epoch is 0, but the straight run had 6 at step 5" in (
        verdict.finding.message
    )


def test_dataloader_restarted_from_the_epoch_start_is_named(tmp_path):
    verdict = check(planted.test_dataloader_restarted_from_epoch_start, tmp_path)
    assert verdict.status == MISMATCH
    finding = verdict.finding
    assert (finding.kind, finding.step, finding.key) == ("not-carried", 6, "batch")
    assert "what the straight run consumed at step 0" in finding.message
    assert "data iterator was restarted" in finding.message


def test_state_left_out_fails_even_when_the_recorded_steps_still_agree(tmp_path):
    def loop(repro):  # the counter is restored by nobody, and nothing recorded depends on it
        model = torch.nn.Linear(2, 1)
        counters = {"epoch": 0}
        for step in range(repro.restore(model=model, counters=counters), repro.steps):
            counters["epoch"] += 1
            repro.record(step, model=model)
            repro.checkpoint(step, model=model)

    verdict = check(loop, tmp_path)
    assert verdict.status == MISMATCH
    assert (verdict.finding.key, verdict.finding.kind) == ("counters.epoch", "not-restored")
    assert "the checkpoint does not carry counters" in verdict.finding.advice
    assert "the 4 recorded steps after 5 still match" in verdict.finding.details[-1]


def test_a_global_rng_drawn_outside_the_restored_state_is_named(tmp_path):
    def loop(repro):  # the shuffling draws from torch's global RNG, not a carried generator
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        start = repro.restore(model=model, optimizer=optimizer, rng=repro.rng_state())
        if start:
            torch.randperm(16)  # a loader re-created after the restore draws its permutation
        for step in range(start, repro.steps):
            model(torch.randn(2, 4)).sum().backward()
            optimizer.step()
            repro.record(step, model=model)
            repro.checkpoint(step, model=model, optimizer=optimizer, rng=repro.rng_state())

    verdict = check(loop, tmp_path)
    assert verdict.finding.kind == "not-carried" and verdict.finding.key == "rng.torch"
    assert "drawn differently" in verdict.finding.message


def test_a_loop_that_restarts_at_zero_is_structural(tmp_path):
    def loop(repro):
        model = torch.nn.Linear(4, 1)
        repro.restore(model=model)
        for step in range(repro.steps):  # ignores the step restore() returns
            repro.record(step, model=model)
            repro.checkpoint(step, model=model)

    verdict = check(loop, tmp_path)
    assert verdict.finding.kind == "structural"
    assert "range(repro.restore(...), repro.steps)" in verdict.finding.advice


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("record only", "no-checkpoint"),
        ("no restore", "no-restore"),
        ("stop early", "nothing-after"),
    ],
)
def test_checks_the_test_does_not_allow_are_failures_with_the_reason(tmp_path, body, kind):
    def loop(repro):
        model = torch.nn.Linear(2, 1)
        start = 0 if body == "no restore" else repro.restore(model=model)
        last = 6 if body == "stop early" else repro.steps
        for step in range(start, last):
            repro.record(step, model=model)
            if body != "record only":
                repro.checkpoint(step, model=model)

    verdict = check(loop, tmp_path)
    assert verdict.status == UNSUPPORTED and verdict.failed
    assert verdict.finding.kind == kind


def test_a_run_that_raises_is_an_error_naming_the_run(tmp_path):
    def loop(repro):
        start = repro.restore(model=torch.nn.Linear(2, 1))
        if start:
            raise RuntimeError("cannot find the data")
        for step in range(repro.steps):
            repro.record(step, x=torch.zeros(1))
            repro.checkpoint(step)

    verdict = check(loop, tmp_path)
    assert verdict.status == ERROR and "the resume run: RuntimeError" in verdict.error


# ----------------------------------------------------------------------------- plumbing


def test_marker_and_run_specs_carry_the_resume_step():
    assert parse_marker("t", (), {"resume_at": 3}).resume_at == 3
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(MarkerError, match="resume_at must be the integer step"):
            parse_marker("t", (), {"resume_at": bad})
    first, second = resume_runs({"a::t": (3, "/x/step-3"), "b::u": (1, "/y/step-1")})
    assert [r.run_id for r in first + second] == ["resume-straight", "resume-stop", "resume-resume"]
    spec = RunSpec.from_json(second[0].to_json())
    assert plan_for(spec.resume, "b::u") == {"role": "resume", "at": 1, "path": "/y/step-1"}
    assert plan_for(spec.resume, "c::v") is None and plan_for(None, "a::t") is None


def test_checkpoint_and_restore_are_inert_without_a_check():
    context = RunContext(SeedPlan(1))
    model = torch.nn.Linear(2, 1)
    assert context.restore(model=model) == 0
    context.checkpoint(0, model=model, scaler=object())  # nothing is read when nothing is saved
    with pytest.raises(TypeError, match="step must be an int"):
        context.checkpoint("0", model=model)


# ----------------------------------------------------------------------------- end to end

PLANTED = "suites/nondeterministic/test_resume_mistakes.py"


def test_planted_mistakes_fail_and_the_reference_resumes_in_fresh_processes(tmp_path):
    report = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--repro",
            "--repro-runs=1",
            "--repro-mode=inprocess",  # one replica here; the resume runs are fresh processes
            "--repro-baseline=off",
            f"--repro-report={report}",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "suites/test_resume.py",
            PLANTED,
        ],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    run = Finished(done.returncode, done.stdout + done.stderr, report)
    tests = run.tests()
    assert tests["suites/test_resume.py::test_resume_mid_epoch"]["resume"]["status"] == EQUIVALENT
    findings = {
        nodeid.rpartition("::")[2]: (t["status"], t["resume"]["finding"]["key"])
        for nodeid, t in tests.items()
        if nodeid.startswith(PLANTED)
    }
    assert findings == {
        "test_rng_state_not_restored": ("resume-mismatch", "rng.torch"),
        "test_scheduler_not_restored": ("resume-mismatch", "scheduler.last_epoch"),
        "test_dataloader_restarted_from_epoch_start": ("resume-mismatch", "batch"),
    }
    text = run.failure("test_dataloader_restarted_from_epoch_start")
    assert "what the straight run consumed at step 0" in text
    assert "not restored: the LR scheduler scheduler" in run.failure("test_scheduler_not_restored")
    assert (
        report
        / "resume"
        / "suites"
        / "test_resume"
        / "test_resume_mid_epoch"
        / "step-5.safetensors"
    ).is_file()
