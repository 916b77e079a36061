"""A new user's first hour (issue 14): the first ``--repro`` run of a new test, where checkpoints
go and how to load one, progress on long work, words a user can act on, reference suites worth
copying, ``-p no:repro``, and a README that walks through all of it.

Decisions are tested as plain functions (messages, summary line, baseline policy, progress
decisions with a fake clock, checkpoint restore); three fresh pytest sessions, started together,
check what only a real session shows: the first run of a new test with checkpoints saved, live
progress on a terminal, and a suite run with the plugin disabled.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytest_runs import Finished, clean_env, linear_sgd_test

import repro_check
from repro_check.core.context import RunContext
from repro_check.core.record import Recorder, RunRecord
from repro_check.core.seeding import SeedPlan, root_seed_for_test
from repro_check.core.spill import SpillWriter
from repro_check.orchestration.allowance import Allowance
from repro_check.orchestration.case import Case
from repro_check.orchestration.checkpoints import checkpoint_folder, save_last_step
from repro_check.orchestration.gate import BaselineGate
from repro_check.orchestration.investigation import TraceWindow
from repro_check.orchestration.replicas import ReplicaResult, default_specs
from repro_check.orchestration.verdict import (
    ALLOWED,
    BASELINE_MISSING,
    ERROR,
    IDENTICAL,
    BaselineOutcome,
    Localization,
    TestVerdict,
)
from repro_check.reporting.progress import (
    Emit,
    LiveProgress,
    Policy,
    Progress,
    duration,
    policy_for,
    rerun_note,
)
from repro_check.reporting.terminal import checkpoint_lines, outcome_counts, summary_lines
from repro_check.reporting.verdicts import (
    RenderedVerdict,
    error_headline,
    failure_message,
    plural,
    summary_row,
)

ROOT = Path(__file__).resolve().parent.parent
NODEID = "tests/test_new.py::test_train"
ACCEPT = "pytest --repro --repro-update --repro-seed=0 tests/test_new.py::test_train"
INDEX_PUT = Allowance("aten::index_put", "bag sums; thread order", 1e-4, None)


def verdict(status: str = IDENTICAL, **fields) -> TestVerdict:
    v = TestVerdict(NODEID, 7, 0, status, default_specs(2, subprocess=True), steps=3, keys=4)
    v.rerun_command = "pytest --repro --repro-seed=0 --repro-runs=2 tests/test_new.py::test_train"
    v.accept_command = ACCEPT
    for name, value in fields.items():
        setattr(v, name, value)
    return v


def missing(agreement: str = IDENTICAL, **fields) -> TestVerdict:
    outcome = BaselineOutcome("tests/repro_baselines/test_new/test_train.json", "missing")
    return verdict(BASELINE_MISSING, agreement=agreement, baseline=outcome, **fields)


def linear_run(spill: Path | None = None, steps: int = 3, lr: float = 0.1) -> RunRecord:
    """A real three-step run of a linear model with Adam and a step schedule."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    recorder = Recorder(SpillWriter(spill, 2**30) if spill else None)
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        loss = model(torch.randn(8, 4, generator=data)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        recorder.record(step, {"model": model, "optimizer": optimizer, "scheduler": scheduler})
    return recorder.close()


# ----------------------------------------------------------------------------- the first run


def test_first_run_keeps_the_verdict_and_the_missing_baseline_apart():
    text = failure_message(missing())
    lines = text.splitlines()
    assert lines[0] == (
        f"repro-check: {NODEID}: no baseline at tests/repro_baselines/test_new/test_train.json"
    )
    assert lines[1].startswith("  replicas: reproducible -- the replicas agree with each other")
    assert "(2 replicas, 3 steps, 4 keys)" in lines[1]
    assert lines[2].startswith("  baseline: missing -- is this the test's first --repro run?")
    assert "so that a deleted one cannot pass in CI" in text
    assert "repro_missing_baseline" in text
    assert "then commit it (git add tests/repro_baselines/test_new/test_train.json)" in text
    assert lines[-1].strip() == ACCEPT  # the one command, last, as in every failure


def test_a_missing_baseline_after_an_allowed_divergence_does_not_say_the_replicas_agree():
    text = failure_message(missing(ALLOWED, allowed=(INDEX_PUT,)))
    assert "the replicas agree" not in text
    assert "replicas: allowed nondeterminism -- the replicas differ, but only through allowed " in (
        text
    )
    assert "(aten::index_put)" in text
    single = failure_message(missing(agreement="single-run"))
    assert "replicas: not compared -- one replica only (--repro-runs=1)" in single


def test_summary_row_shows_the_replicas_verdict_beside_the_baseline_state():
    row = summary_row(missing())
    assert row[5:7] == ["identical", "missing"]
    assert summary_row(missing(ALLOWED, allowed=(INDEX_PUT,)))[5] == "allowed"


def rendered(status: str, nodeid: str, action: str = "", accept: str = "") -> RenderedVerdict:
    baseline = {"action": action, "path": f"b/{nodeid}.json"} if action else {}
    return RenderedVerdict(
        {
            "nodeid": nodeid,
            "status": status,
            "bytes_fingerprinted": 1000,
            "nonfinite": "",
            "baseline": baseline,
            "accept_command": accept or f"pytest --repro --repro-update {nodeid}",
        },
        [],
    )


def test_summary_line_counts_each_test_once_by_its_outcome():
    two = [rendered("identical", "a"), rendered("baseline-missing", "b", "missing")]
    assert outcome_counts(two) == "2 tests: 1 reproducible, 1 baseline missing"
    many = [
        rendered("identical", "a"),
        rendered("allowed", "b"),
        rendered("diverged", "c"),
        rendered("structural", "d"),
        rendered("error", "e"),
        rendered("error", "f"),
        rendered("baseline-mismatch", "g"),
        rendered("baseline-missing", "h", "missing"),
        rendered("baseline-missing", "i", "missing"),
    ]
    assert outcome_counts(many) == (
        "9 tests: 1 reproducible, 1 reproducible within an allowance, 2 not reproducible, "
        "2 raised errors, 1 differs from its baseline, 2 baselines missing"
    )
    assert outcome_counts([rendered("error", "e")]) == "1 test: 1 raised an error"


def test_summary_names_the_command_that_creates_each_missing_baseline():
    verdicts = [
        rendered("identical", "a"),
        rendered("baseline-missing", "b", "missing", accept="pytest --repro --repro-update b"),
    ]
    lines = [line for line, _ in summary_lines(verdicts, 0)][1:]
    assert (
        lines[0] == "2 tests: 1 reproducible, 1 baseline missing; 2.0 KB fingerprinted; base seed 0"
    )
    assert lines[1].startswith("1 test without a baseline (a new test's first --repro run?)")
    assert lines[2] == "  pytest --repro --repro-update b"
    created = [rendered("identical", "c", "created"), rendered("identical", "d", "unchecked")]
    lines = [line for line, _ in summary_lines(created, 0)][1:]
    assert "warning: 1 test passed without a baseline to check" in lines[1]
    assert "created 1 baseline (commit it):" in lines
    assert "  b/c.json" in lines


def identical_reference(tmp_path: Path) -> TestVerdict:
    v = verdict()
    v.reference = ReplicaResult(NODEID, 0, "passed", record=linear_run(), environment={})
    return v


@pytest.mark.parametrize("policy", ["fail", "create", "warn"])
def test_missing_baseline_policy(tmp_path, policy):
    gate = BaselineGate(tmp_path, tmp_path, missing=policy)
    v = identical_reference(tmp_path)
    gate.stage(Case(NODEID, NODEID), v, {})
    path = gate.path_for(NODEID)
    expected = {
        "fail": (BASELINE_MISSING, "missing", False),
        "create": (IDENTICAL, "created", True),
        "warn": (IDENTICAL, "unchecked", False),
    }[policy]
    assert (v.status, v.baseline.action, path.exists()) == expected
    assert v.agreement == IDENTICAL
    if policy == "create":  # only missing baselines are written: an existing one is checked
        again = identical_reference(tmp_path)
        gate.stage(Case(NODEID, NODEID), again, {})
        assert again.baseline.action == "checked" and again.baseline.check.status == "match"


# ----------------------------------------------------------------------------- words


def test_plural():
    assert [plural(n, "test") for n in (0, 1, 2)] == ["0 tests", "1 test", "2 tests"]
    assert plural(1, "other key") == "1 other key"
    assert plural(2, "baseline missing", "baselines missing") == "2 baselines missing"


PYTEST_LONGREPR = """[call] repro = <repro_check.core.context.RunContext object at 0x7f14c8840350>

    @pytest.mark.repro(steps=2)
    def test_broken(repro):
>       raise ValueError("bad shape: expected (8, 4), got (8, 5)")
E       ValueError: bad shape: expected (8, 4), got (8, 5)
E       second line of the message

test_linear.py:20: ValueError"""

CHAINED = """[setup] def fixture():
>       raise KeyError("a")
E       KeyError: 'a'

During handling of the above exception, another exception occurred:
>       raise RuntimeError("the fixture failed")
E       RuntimeError: the fixture failed"""

TRACEBACK = """Traceback (most recent call last):
  File "x.py", line 3, in <module>
    f()
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"""


@pytest.mark.parametrize(
    "error, headline",
    [
        (PYTEST_LONGREPR, "ValueError: bad shape: expected (8, 4), got (8, 5)"),
        (CHAINED, "in setup: RuntimeError: the fixture failed"),
        (TRACEBACK, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
        (
            "replica 1 process killed by SIGKILL before finishing this test (PYTHONHASHSEED=1)\nx",
            "replica 1 process killed by SIGKILL before finishing this test (PYTHONHASHSEE...",
        ),
        ("", "-"),
    ],
)
def test_error_headline_is_the_exception_not_a_fixture_repr(error, headline):
    found = error_headline(error)
    assert "RunContext object" not in found
    assert found == headline


def test_a_replica_error_shows_its_exception_in_the_summary_and_the_message():
    v = verdict(ERROR, error=PYTEST_LONGREPR, other_replica=0)
    assert summary_row(v)[-1] == "ValueError: bad shape: expected (8, 4), got (8, 5)"
    first = failure_message(v).splitlines()[0]
    assert first.endswith("raised an error: ValueError: bad shape: expected (8, 4), got (8, 5)")


def test_a_localisation_note_comes_before_the_finding_it_points_to():
    note = "the op named below may only inherit the difference"
    v = verdict(
        "diverged", localization=Localization("nondeterministic-op", "FINDING", 3, note=note)
    )
    lines = failure_message(v).splitlines()
    assert lines.index("    note: " + note) < lines.index("    FINDING")


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_mirror_the_baseline_layout(tmp_path):
    folder = checkpoint_folder(tmp_path, "suites/test_lstm.py::test_lstm_sgd[16]", 1)
    assert folder == tmp_path / "suites" / "test_lstm" / "test_lstm_sgd[16]" / "replica-1"
    merged = {checkpoint_folder(tmp_path, f"t.py::test[{p}]", 0) for p in ("a b", "a_b", "a/b")}
    assert len(merged) == 3  # ids that clean to the same name keep folders of their own


def saved_checkpoint(tmp_path: Path) -> Path:
    record = linear_run(tmp_path / "spill.bin")
    result = ReplicaResult(NODEID, 0, "passed", record=record)
    manifest = save_last_step(tmp_path / "checkpoints", result, {"seed": 7})
    assert manifest == checkpoint_folder(tmp_path / "checkpoints", NODEID, 0) / "step-2.json"
    return manifest.parent


def live_objects(lr: float = 0.1):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 2)


def test_load_checkpoint_restores_a_saved_step_into_live_objects(tmp_path):
    folder = saved_checkpoint(tmp_path)
    model, optimizer, scheduler = live_objects(lr=0.5)  # fresh objects, other hyperparameters
    manifest = repro_check.load_checkpoint(
        folder.parent, model=model, optimizer=optimizer, scheduler=scheduler
    )  # the test's folder: replica 0's last step
    assert (manifest["test_id"], manifest["step"], manifest["seed"]) == (NODEID, 2, 7)
    # Training on from the restored step records exactly what the original run recorded.
    torch.manual_seed(0)
    original = linear_run(steps=4)
    data = torch.Generator().manual_seed(1)
    for _ in range(3):
        torch.randn(8, 4, generator=data)
    loss = model(torch.randn(8, 4, generator=data)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    resumed = Recorder().record(3, {"model": model, "optimizer": optimizer, "scheduler": scheduler})
    expected = original.steps[3].entries
    # the same keys, in the same order (optimizer state as torch made it), the same bits
    assert [(k, e.fingerprint) for k, e in resumed.entries.items()] == [
        (k, e.fingerprint) for k, e in expected.items()
    ]


def test_load_checkpoint_names_the_key_that_does_not_fit(tmp_path):
    step = saved_checkpoint(tmp_path) / "step-2.safetensors"
    mismatch = repro_check.CheckpointMismatch
    with pytest.raises(
        mismatch, match=r"model\.weight: shape \(2, 4\) in the checkpoint, \(3, 4\)"
    ):
        repro_check.load_checkpoint(step, model=torch.nn.Linear(4, 3))
    with pytest.raises(mismatch, match=r"model\.weight: dtype float32 in the checkpoint, float64"):
        repro_check.load_checkpoint(step, model=torch.nn.Linear(4, 2).double())
    with pytest.raises(mismatch, match=r"model\.0\.weight, model\.0\.bias are in model but not"):
        repro_check.load_checkpoint(step, model=torch.nn.Sequential(torch.nn.Linear(4, 2)))
    with pytest.raises(mismatch, match="nothing was recorded as 'net'; .* model, optimizer"):
        repro_check.load_checkpoint(step, net=torch.nn.Linear(4, 2))
    sgd = torch.optim.SGD(torch.nn.Linear(4, 2).parameters(), lr=0.1)
    with pytest.raises(mismatch, match=r"optimizer\.param_groups\.0\.amsgrad.*another optimizer"):
        repro_check.load_checkpoint(step, optimizer=sgd)
    model, optimizer, _ = live_objects()
    before = model.weight.detach().clone()
    with pytest.raises(mismatch):  # one object does not fit: nothing is restored
        repro_check.load_checkpoint(step, model=model, optimizer=optimizer, other=model)
    assert torch.equal(model.weight, before)
    with pytest.raises(FileNotFoundError, match="no checkpoint here; expected step-<n>"):
        repro_check.load_checkpoint(tmp_path, model=model)


def test_checkpoint_footer_says_where_each_test_went(tmp_path):
    folder = saved_checkpoint(tmp_path).parent.parent.parent.parent  # .../checkpoints
    lines = checkpoint_lines(folder, [NODEID, "tests/test_new.py::test_other"], tmp_path)
    assert lines[0].startswith(f"checkpoints: checkpoints{os.sep} -- the last recorded step")
    assert "repro_check.load_checkpoint(path, model=..., optimizer=...)" in lines[0]
    assert lines[1:] == [
        f"  {NODEID}: {os.path.join('checkpoints', 'tests', 'test_new', 'test_train')}{os.sep}"
    ]
    assert checkpoint_lines(tmp_path / "none", [NODEID], tmp_path)[0].startswith(
        "checkpoints: none written"
    )


def test_import_repro_check_stays_light():
    code = (
        "import sys, repro_check; assert 'torch' not in sys.modules, 'torch imported';"
        "assert callable(repro_check.load_checkpoint); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # torch arrives only when a checkpoint is loaded


# ----------------------------------------------------------------------------- progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_terminal_rewrites_in_place_at_most_once_a_second():
    clock = Clock()
    progress = Progress("repro sweep t", 128, "runs", Policy(in_place=True, delay_s=1.0), clock)
    assert progress.tick() is None  # fast work says nothing
    clock.now += 1.0
    first = progress.advance()
    assert first == Emit("repro sweep t: 1/128 runs done, 1s elapsed, about 2m07s left", True)
    clock.now += 0.5
    assert progress.advance(failed=1) is None  # rewritten at most once per refresh_s
    clock.now += 0.5
    assert progress.tick().text == (
        "repro sweep t: 2/128 runs done, 1 failed, 2s elapsed, about 2m06s left"
    )
    clock.now += 0.1
    noted = progress.note("tracing step 3 in reruns of replicas 0 and 1 (attempt 1 of 3)...")
    assert noted.text.endswith(
        "-- tracing step 3 in reruns of replicas 0 and 1 (attempt 1 of 3)..."
    )
    clock.now += 60
    assert progress.finish() == Emit(
        "repro sweep t: 2/128 runs done, 1 failed in 1m02s", True, True
    )


def test_progress_in_a_log_writes_a_line_per_tenth_of_the_work_or_per_30_s():
    clock = Clock()
    progress = Progress("repro sweep t", 100, "runs", policy_for(False, 0, {"log": 0.0}), clock)
    lines = []
    for _ in range(100):
        clock.now += 0.1
        emit = progress.advance()
        if emit:
            assert not emit.in_place
            lines.append(emit.text)
    assert len(lines) == 10  # the first run, then every 10 runs; 100/100 is left to finish()
    assert lines[1].startswith("repro sweep t: 11/100 runs done, 1s elapsed, about 9s left")
    slow = Progress("replicas", 2, "replicas", policy_for(False, 0), clock)
    clock.now += 29
    assert slow.tick() is None  # under the log's 30 s delay: a fast test prints nothing
    clock.now += 1
    assert slow.tick().text == "replicas: 0/2 replicas done, 30s elapsed"
    clock.now += 29
    assert slow.tick() is None
    clock.now += 1
    assert slow.tick().text == "replicas: 0/2 replicas done, 1m00s elapsed"
    assert slow.advance(2) is None
    assert slow.finish().text == "replicas: 2/2 replicas done in 1m00s"


def test_progress_is_silent_under_qq_and_when_nothing_was_shown():
    clock = Clock()
    quiet = Progress("x", 10, "runs", policy_for(True, -2, {"terminal": 0.0}), clock)
    clock.now += 100
    assert quiet.advance() is None and quiet.note("tracing") is None and quiet.finish() is None
    fast = Progress("x", 2, "replicas", policy_for(True, 0), clock)
    clock.now += 1
    assert fast.advance(2) is None and fast.finish() is None
    assert policy_for(True, -1).silent is False  # -q keeps progress; only -q -q drops it


def test_progress_estimates_the_time_left_from_this_session_runs_only():
    clock = Clock()
    resumed = Progress("s", 100, "runs", Policy(in_place=True), clock, done=50)
    clock.now += 10
    assert resumed.advance().text == "s: 51/100 runs done, 10s elapsed, about 8m10s left"
    replicas = Progress("r", 2, "replicas", Policy(in_place=True), clock, estimate=False)
    clock.now += 10
    assert replicas.advance().text == "r: 1/2 replicas done, 10s elapsed"  # replicas are not alike
    assert [duration(s) for s in (0.4, 59, 61, 3599, 7260)] == [
        "0s",
        "59s",
        "1m01s",
        "59m59s",
        "2h01m",
    ]


def test_rerun_notes_say_what_is_traced():
    a, b = default_specs(2, subprocess=True)
    assert rerun_note([a, b], TraceWindow(2, 3), 0, 3) == (
        "tracing step 3 in reruns of replicas 0 and 1 (attempt 1 of 3)..."
    )
    assert rerun_note([a, b], TraceWindow(None, 5), 1, 3) == (
        "tracing steps up to 5 in reruns of replicas 0 and 1 (attempt 2 of 3)..."
    )
    assert rerun_note([a], None, 0, 3).startswith("control rerun of replica 0")


class FakeReporter:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def ensure_newline(self) -> None:
        self.calls.append(("newline", ""))

    def rewrite(self, text: str, erase: bool = False) -> None:
        self.calls.append(("rewrite", text))

    def write(self, text: str, flush: bool = False) -> None:
        self.calls.append(("write", text))


class FakeCapture:
    def __init__(self) -> None:
        self.suspended = 0

    def global_and_fixture_disabled(self):
        import contextlib

        self.suspended += 1
        return contextlib.nullcontext()


@pytest.mark.parametrize("in_place", [True, False])
def test_live_progress_writes_uncaptured_and_gives_pytest_its_line_back(in_place):
    clock, reporter, capture, resumed = Clock(), FakeReporter(), FakeCapture(), []
    progress = Progress("p", 4, "runs", Policy(in_place=in_place, every_fraction=0.25), clock)
    live = LiveProgress(progress, reporter, capture, resume=lambda: resumed.append(True))
    for _ in range(4):
        clock.now += 2
        live.advance()
    live.finish()
    kinds = [kind for kind, _ in reporter.calls]
    assert kinds[0] == "newline" and kinds.count("newline") == 1
    assert kinds[1:] == ["rewrite" if in_place else "write"] * 4
    texts = [text for _, text in reporter.calls[1:]]
    assert texts[-1].strip() == "p: 4/4 runs done in 8s"
    if not in_place:  # one line each: a newline before every line but the first
        assert texts[0] == "p: 1/4 runs done, 2s elapsed, about 6s left" and texts[1][0] == "\n"
    assert resumed == [True] and capture.suspended == 5


# ----------------------------------------------------------------------------- suites


REFERENCE_SUITES = [
    "test_mlp",
    "test_cnn",
    "test_lstm",
    "test_transformer",
    "test_segmentation_head",
    "test_allowed_nondeterminism",
]


class LossContext(RunContext):
    """The test's own RunContext, keeping the losses it records."""

    losses: list[float]

    def record(self, step: int, **state) -> None:
        self.losses.append(float(state["loss"].detach()))
        super().record(step, **state)


def cases(module) -> list[tuple[str, dict]]:
    found = []
    for name, function in vars(module).items():
        if not name.startswith("test_") or not callable(function):
            continue
        marks = getattr(function, "pytestmark", [])
        variants = [{}]
        for mark in marks:
            if mark.name == "parametrize":
                variants = [{mark.args[0]: value} for value in mark.args[1]]
        found += [(name, variant) for variant in variants]
    return found


@pytest.mark.parametrize("suite", REFERENCE_SUITES)
def test_reference_suites_train_a_real_model_whose_loss_falls_without_collapsing(suite):
    module = importlib.import_module(f"suites.{suite}")
    assert module.__doc__ and len(module.__doc__.split()) > 30, "say what it demonstrates"
    for name, params in cases(module):
        function = getattr(module, name)
        steps = next(m.kwargs["steps"] for m in function.pytestmark if m.name == "repro")
        nodeid = f"suites/{suite}.py::{name}"
        context = LossContext(SeedPlan(root_seed_for_test(0, nodeid)), steps=steps)
        context.losses = []
        context.seed_globals()
        extra = dict(params)
        if "cnn" in inspect.signature(function).parameters:
            extra["cnn"] = module.SmallCNN()
        function(context, **extra)  # the suite's own assertions: it learns
        losses = context.losses
        assert len(losses) == steps >= 8, (nodeid, losses)
        quarter = max(2, steps // 4)
        assert sum(losses[-quarter:]) < sum(losses[:quarter]), (nodeid, losses)
        assert min(losses) > 0.05, f"{nodeid}: the loss collapsed: {losses}"


# ----------------------------------------------------------------------------- e2e sessions


NEW_TEST = """
import pytest
import torch
from safetensors.torch import save_file


@pytest.mark.repro(steps=4)
def test_new(repro):
    with repro.seeded("init"):
        model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    data = repro.generator("data")
    for step in range(repro.steps):
        loss = model(torch.randn(8, 4, generator=data)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
    save_file(model.state_dict(), f"final-{repro.replica}.safetensors")


@pytest.mark.repro(steps=2)
def test_broken(repro):
    raise ValueError("bad shape: expected (8, 4), got (8, 5)")
"""

SWEPT_TEST = """
import time

import pytest
import torch


@pytest.mark.repro(steps=1)
def test_swept(repro):
    repro.seed_for("init")
    time.sleep(0.6)
    repro.record(0, loss=torch.tensor(0.5))
"""

PLAIN_TESTS = """
import pytest


@pytest.mark.repro(steps=2)
def test_with_fixture(repro):
    pass


@pytest.mark.repro(steps=2)
def test_without_fixture():
    pass


def test_unmarked():
    pass
"""


def run_on_a_terminal(args: list[str], cwd: Path, timeout: float = 240) -> Finished:
    """pytest with its stdout on a pseudo-terminal (as a user sees it), all output collected."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=cwd,
        env=clean_env(COLUMNS="160", TERM="dumb"),
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(primary)
    process.wait(timeout=30)
    return Finished(process.returncode, b"".join(chunks).decode(errors="replace"))


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> dict[str, Finished]:
    """The three sessions, started together: the first run of a new test (with checkpoints),
    a sweep on a terminal, and a suite with the plugin disabled."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("first", "sweep", "disabled")}
    (folders["first"] / "test_new.py").write_text(NEW_TEST)
    (folders["sweep"] / "test_swept.py").write_text(SWEPT_TEST)
    (folders["disabled"] / "test_plain.py").write_text(PLAIN_TESTS)
    (folders["disabled"] / "conftest.py").write_text('pytest_plugins = ["repro_check.fallback"]\n')
    common = ["-p", "no:cacheprovider", "-p", "no:randomly"]
    commands = {
        "first": ["--repro", "--repro-save-checkpoints", *common],
        "disabled": ["-p", "no:repro", "--strict-markers", "-rs", *common],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "pytest", *args],
            cwd=folders[name],
            env=clean_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name, args in commands.items()
    }
    sweep = ["--repro-sensitivity", "--repro-seeds=2", "--repro-sources=init", *common]
    finished = {"sweep": run_on_a_terminal(sweep, folders["sweep"])}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=300)
        finished[name] = Finished(process.returncode, output, folders[name] / "reports")
    return finished


def test_first_run_of_a_new_test_e2e(sessions):
    first = sessions["first"]
    assert first.ret == pytest.ExitCode.TESTS_FAILED, first.output
    text = first.failure("test_new")
    assert "test_new.py::test_new: no baseline at repro_baselines/test_new/test_new.json" in text
    assert "replicas: reproducible -- the replicas agree with each other" in text
    assert text.strip().splitlines()[-1].strip() == (
        "pytest --repro --repro-update --repro-seed=0 test_new.py::test_new"
    )
    # the repro summary section only (under CI=true pytest's own short summary repeats errors whole)
    summary = first.output.split("repro summary", 1)[1].split("short test summary info", 1)[0]
    assert "2 tests: 1 raised an error, 1 baseline missing;" in summary
    assert "\n  pytest --repro --repro-update --repro-seed=0 test_new.py::test_new\n" in summary
    assert re.search(r"test_new\.py::test_broken .* ValueError: bad shape: expected", summary)
    assert "RunContext object" not in summary
    assert first.tests()["test_new.py::test_new"]["agreement"] == "identical"


def test_saved_checkpoints_are_named_in_the_footer_and_load_into_a_model(sessions):
    first = sessions["first"]
    shown = os.path.join("reports", "checkpoints", "test_new", "test_new") + os.sep
    assert f"  test_new.py::test_new: {shown}\n" in first.output
    folder = first.report_dir.parent / shown
    assert sorted(p.name for p in folder.iterdir()) == ["replica-0", "replica-1"]
    from safetensors.torch import load_file

    for replica in (0, 1):
        model = torch.nn.Linear(4, 2)
        manifest = repro_check.load_checkpoint(folder / f"replica-{replica}", model=model)
        assert manifest["step"] == 3 and manifest["replica"] == replica
        final = load_file(first.report_dir.parent / f"final-{replica}.safetensors")
        assert all(torch.equal(model.state_dict()[k], final[k]) for k in final)


def test_a_sweep_shows_live_progress_on_a_terminal(sessions):
    sweep = sessions["sweep"]
    assert sweep.ret == pytest.ExitCode.OK, sweep.output
    updates = re.findall(
        r"\rrepro sweep test_swept\.py::test_swept: (\d)/4 runs done", sweep.output
    )
    assert updates and updates == sorted(updates), sweep.output  # rewritten in place
    assert re.search(r"repro sweep test_swept\.py::test_swept: 4/4 runs done in \d+s", sweep.output)
    assert re.search(r"\ntest_swept\.py \.", sweep.output)  # pytest's line, given back


def test_plugin_disabled_with_the_fallback_skips_marked_tests_with_the_reason(sessions):
    disabled = sessions["disabled"]
    assert disabled.ret == pytest.ExitCode.OK, disabled.output
    outcomes = pytest.RunResult.parse_summary_nouns(disabled.output.splitlines())
    assert outcomes == {"passed": 1, "skipped": 2}, disabled.output
    assert "repro-check is disabled (-p no:repro)" in disabled.output
    assert "fixture 'repro' not found" not in disabled.output
    assert "PytestUnknownMarkWarning" not in disabled.output


# ----------------------------------------------------------------------------- README


def test_readme_walks_a_new_test_from_its_first_run_to_a_committed_baseline():
    readme = (ROOT / "README.md").read_text()
    for needed in [
        "pip install torch==2.13.0 -e '.[test]'",
        "no baseline at",
        "--repro-update",
        "git add",
        "repro_missing_baseline",
        "reports/checkpoints/",
        "repro_check.load_checkpoint(",
        "-p no:repro",
        "repro_check.fallback",
        "--strict-markers",
        "pytest-xdist",
        "repro summary",
    ]:
        assert needed in readme, needed
    summary = readme.split("repro summary", 1)[1]
    assert re.search(r"\d+ tests: \d+ reproducible", summary)


# ----------------------------------------------------------------------------- fewer steps

STEPS_TEST = linear_sgd_test("test_steps", steps=6)


def test_fewer_steps_than_the_baseline_compares_the_common_steps_e2e(tmp_path):
    """``--repro-steps=3`` against a 6-step baseline: nothing changed, so it passes on the
    common steps and says the counts differ -- it never blames the code or the data."""
    (tmp_path / "test_steps.py").write_text(STEPS_TEST)
    common = ["--repro", "--repro-mode=inprocess", "-p", "no:cacheprovider", "-p", "no:randomly"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", *common, *args],
            cwd=tmp_path,
            env=clean_env(),
            text=True,
            capture_output=True,
            timeout=300,
        )

    written = run("--repro-update")
    assert written.returncode == 0, written.stdout
    shorter = run("--repro-steps=3")
    assert shorter.returncode == 0, shorter.stdout
    assert "match (bitwise; 3 of 6 steps)" in shorter.stdout
    assert "changed the numbers" not in shorter.stdout
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    [test] = report["tests"]
    assert "the step counts differ (baseline 6 steps 0..5, this run 3 0..2)" in json.dumps(test)
