"""The pytest plugin end to end: real pytest sessions, real replica processes, real training.

The expensive sessions (one ``pytest --repro`` over a file of training tests, in subprocess and
in-process mode; one under xdist) run once per module in fresh ``python -m pytest`` processes and
many small tests read their output, report files and JUnit XML. The other sessions (plain runs,
options, seeds, report folders, crashes) use ``pytester.runpytest_subprocess``: inline pytester
runs purge the modules they imported from ``sys.modules`` afterwards, and re-importing modules
that hold torch state in one process crashes the interpreter during garbage collection.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_runs import failure_section, linear_sgd_test, side_by_side_env

from repro_check.core.seeding import root_seed_for_test

#: Every --repro run here compares replicas only; committed baselines are another feature.
NO_BASELINE = "--repro-baseline=off"

TRAINING_TESTS = """
import os

import numpy as np
import pytest
import torch

WORDS = (
    "the cat sat on the mat while the dog slept by the door and a bird sang in the old tree "
    "as rain fell on the field near the mill"
).split()


def train(repro, model=None, noise=None, out=2):
    model = torch.nn.Linear(4, out) if model is None else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = repro.generator("data")
    for step in range(repro.steps):
        x = torch.randn(8, 4, generator=data)
        if noise is not None:
            x = x + noise()
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
    return model


@pytest.mark.repro(steps=3)
def test_deterministic(repro):
    train(repro)


@pytest.mark.parametrize("out", [2, 3])
@pytest.mark.repro(steps=2)
def test_parametrized(repro, out):
    train(repro, out=out)


@pytest.fixture
def model():
    return torch.nn.Linear(4, 2)  # built from the global RNG, seeded before any fixture


@pytest.mark.repro(steps=3)
def test_fixture_model(repro, model):
    initial = model.weight.detach().clone()
    train(repro, model=model)
    assert not torch.equal(initial, model.weight)


@pytest.mark.repro(steps=3)
def test_unseeded_numpy(repro):
    rng = np.random.default_rng()  # planted: no seed
    train(repro, noise=lambda: torch.from_numpy(rng.normal(size=(8, 4)).astype(np.float32)))


@pytest.mark.repro
def test_raises(repro):
    repro.record(0, x=torch.ones(1))
    raise ValueError("planted error 4711")


@pytest.mark.repro
def test_records_nothing(repro):
    torch.nn.Linear(4, 2)


@pytest.mark.repro
def test_unsupported_value(repro):
    repro.record(0, label="cat")


@pytest.mark.repro(steps=2)
def test_nan_loss(repro):
    model = torch.nn.Linear(4, 2)
    for step in range(repro.steps):
        loss = torch.zeros(()) / torch.zeros(())  # a computed NaN, the same bits every run
        repro.record(step, model=model, loss=loss)


@pytest.mark.repro
def test_set_iteration(repro):
    vocabulary = {word: index for index, word in enumerate(set(WORDS))}  # planted: hash order
    repro.record(0, ids=torch.tensor([vocabulary[word] for word in WORDS]))


@pytest.mark.repro
def test_structure_depends_on_replica(repro):
    for step in range(2 + repro.replica):
        repro.record(step, x=torch.ones(2))
"""

TRAINING_FILE = "test_training.py"
PASS_BOTH = [
    "test_deterministic",
    "test_parametrized[2]",
    "test_parametrized[3]",
    "test_fixture_model",
    "test_nan_loss",
]
FAIL_BOTH = [
    "test_unseeded_numpy",
    "test_raises",
    "test_records_nothing",
    "test_unsupported_value",
    "test_structure_depends_on_replica",
]

SEED_TEST = """
import json

import pytest


@pytest.mark.repro(steps=1)
def test_seed(repro):
    with open("seeds.jsonl", "a") as log:
        log.write(json.dumps([repro.replica, repro.seed]) + "\\n")
    repro.record(0, seed_low_bits=repro.seed % 1000)
"""
SEED_NODEID = "test_seed.py::test_seed"


# ----------------------------------------------------------------------------- helpers


@dataclass
class Session:
    """A finished ``python -m pytest`` run in a fresh process."""

    path: Path
    ret: int
    output: str

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()

    def outcomes(self) -> dict[str, int]:
        return pytest.RunResult.parse_summary_nouns(self.lines)

    def failure(self, test: str) -> str:
        return failure_section(self.output, test)

    def summary_row(self, nodeid: str) -> str:
        summary = self.output.split("repro summary", 1)[1]
        return next(line for line in summary.splitlines() if line.startswith(nodeid + " "))


def run_pytest(path: Path, *args: str, timeout: float = 300) -> Session:
    process = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=path,
        env=side_by_side_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Session(path, process.returncode, process.stdout + process.stderr)


def write(path: Path, name: str, text: str) -> Path:
    target = path / name
    target.write_text(textwrap.dedent(text))
    return target


def seeds_logged(path: Path) -> list[list[int]]:
    log = path / "seeds.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


# ----------------------------------------------------------------------------- sessions


@pytest.fixture(scope="module")
def subprocess_session(tmp_path_factory) -> Session:
    """``pytest --repro`` (default: subprocess replicas) over the training tests."""
    path = tmp_path_factory.mktemp("subprocess-mode")
    write(path, TRAINING_FILE, TRAINING_TESTS)
    return run_pytest(
        path,
        "--repro",
        NO_BASELINE,
        "-p",
        "no:cacheprovider",
        "--junitxml=junit.xml",
        TRAINING_FILE,
    )


@pytest.fixture(scope="module")
def inprocess_session(tmp_path_factory) -> Session:
    path = tmp_path_factory.mktemp("inprocess-mode")
    write(path, TRAINING_FILE, TRAINING_TESTS)
    return run_pytest(
        path,
        "--repro",
        "--repro-mode=inprocess",
        NO_BASELINE,
        "-p",
        "no:cacheprovider",
        TRAINING_FILE,
    )


# ----------------------------------------------------------------------------- subprocess mode


def test_header_shows_the_seed_and_the_replicas(subprocess_session):
    assert (
        "repro-check: base seed 0 (rerun with --repro-seed=0); 2 replicas per test in fresh "
        "processes (PYTHONHASHSEED=0; PYTHONHASHSEED=1)" in subprocess_session.lines
    )


def test_outcomes_in_subprocess_mode(subprocess_session):
    outcomes = subprocess_session.outcomes()
    assert outcomes == {"passed": len(PASS_BOTH), "failed": len(FAIL_BOTH) + 1}, (
        subprocess_session.output
    )
    for test in PASS_BOTH:
        assert f"FAILED {TRAINING_FILE}::{test} " not in subprocess_session.output


def test_summary_section_lists_every_test(subprocess_session):
    assert "repro summary" in subprocess_session.output
    expected = {
        "test_deterministic": "identical",
        "test_parametrized[2]": "identical",
        "test_fixture_model": "identical",
        "test_unseeded_numpy": "diverged",
        "test_raises": "error",
        "test_records_nothing": "not-recorded",
        "test_set_iteration": "diverged",
        "test_structure_depends_on_replica": "structural",
    }
    for test, status in expected.items():
        row = subprocess_session.summary_row(f"{TRAINING_FILE}::{test}")
        assert f" {status} " in row + " ", row
    assert (
        "11 tests: 5 reproducible, 3 not reproducible, 2 raised errors, 1 recorded nothing;"
        in subprocess_session.output
    )


def test_unseeded_rng_fails_at_step_0_with_the_rerun_command_last(subprocess_session):
    text = subprocess_session.failure("test_unseeded_numpy")
    assert "is not reproducible" in text
    assert "first divergence: step 0, model.weight (float32, shape (2, 4))" in text
    assert "Mismatched elements:" in text  # element-level detail from the spill files
    assert "how the divergence grows" in text
    assert "the nondeterminism is inside the run" in text  # the control replica's diagnosis
    last_line = text.strip().splitlines()[-1].strip()
    assert last_line == (
        f"pytest --repro --repro-seed=0 --repro-runs=2 {TRAINING_FILE}::test_unseeded_numpy"
    )


def test_the_printed_rerun_command_reproduces_the_failure(subprocess_session):
    command = subprocess_session.failure("test_unseeded_numpy").strip().splitlines()[-1]
    argv = shlex.split(command)
    assert argv[0] == "pytest"
    # (--repro-report=none: keep the session's own reports/ for test_report_files)
    rerun = run_pytest(
        subprocess_session.path,
        *argv[1:],
        NO_BASELINE,
        "-p",
        "no:cacheprovider",
        "--repro-report=none",
    )
    assert rerun.outcomes() == {"failed": 1}, rerun.output
    assert "repro-check: base seed 0 " in rerun.output
    assert "first divergence: step 0, model.weight" in rerun.failure("test_unseeded_numpy")


def test_a_raising_test_is_an_error_not_nondeterminism(subprocess_session):
    text = subprocess_session.failure("test_raises")
    assert "raised an error" in text
    assert "not nondeterminism" in text
    assert "ValueError: planted error 4711" in text  # the replica's traceback text
    assert "raise ValueError" in text


def test_a_test_that_records_nothing(subprocess_session):
    text = subprocess_session.failure("test_records_nothing")
    assert "recorded nothing" in text
    assert "repro.record(step" in text  # says what to do


def test_unsupported_record_value_names_key_and_type(subprocess_session):
    text = subprocess_session.failure("test_unsupported_value")
    assert "TypeError" in text
    assert "cannot record 'label' of type builtins.str" in text


def test_nan_is_reported_and_identical_nans_pass(subprocess_session):
    row = subprocess_session.summary_row(f"{TRAINING_FILE}::test_nan_loss")
    assert "identical (NaN/inf)" in row
    assert (
        f"warning: {TRAINING_FILE}::test_nan_loss reproducibly produced non-finite values "
        f"(first: step 0, metric.loss: 1 NaN, 0 inf of 1)" in subprocess_session.output
    )


def test_set_iteration_is_diagnosed_as_hash_randomisation(subprocess_session):
    text = subprocess_session.failure("test_set_iteration")
    assert "first divergence: step 0, ids" in text
    assert "diagnosis: only process-level state differs" in text
    assert "PYTHONHASHSEED" in text


def test_structural_mismatch_is_reported(subprocess_session):
    text = subprocess_session.failure("test_structure_depends_on_replica")
    assert "structural mismatch: the replicas recorded different steps: 2 vs 3 records" in text


def test_report_files(subprocess_session):
    report_dir = subprocess_session.path / "reports"  # the default folder
    document = json.loads((report_dir / "report.json").read_text())
    assert document["schema"] == "repro-check/report"
    assert document["schema_version"] == 1
    assert document["session"]["base_seed"] == 0 and document["session"]["runs"] == 2
    assert document["session"]["mode"] == "subprocess"
    assert document["totals"]["tests"] == 11 and document["totals"]["failed"] == 6
    tests = {test["nodeid"]: test for test in document["tests"]}
    assert len(tests) == 11
    unseeded = tests[f"{TRAINING_FILE}::test_unseeded_numpy"]
    assert unseeded["status"] == "diverged"
    assert unseeded["divergence"]["step"] == 0
    assert unseeded["divergence"]["key"] == "model.weight"
    assert unseeded["divergence"]["detail"]["numel"] == 8
    assert unseeded["seed"] == root_seed_for_test(0, f"{TRAINING_FILE}::test_unseeded_numpy")
    assert unseeded["rerun_command"].startswith("pytest --repro --repro-seed=0")
    assert tests[f"{TRAINING_FILE}::test_deterministic"]["status"] == "identical"
    assert tests[f"{TRAINING_FILE}::test_deterministic"]["steps"] == 3
    markdown = (report_dir / "report.md").read_text()
    assert markdown.startswith("# repro-check report")
    assert "test_unseeded_numpy" in markdown and "## Failures" in markdown


def test_junit_xml_has_repro_properties(subprocess_session):
    tree = ET.parse(subprocess_session.path / "junit.xml")
    properties = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in tree.iter("testcase")
    }
    assert properties["test_deterministic"]["repro_verdict"] == "identical"
    assert properties["test_deterministic"]["repro_seed"] == str(
        root_seed_for_test(0, f"{TRAINING_FILE}::test_deterministic")
    )
    assert properties["test_unseeded_numpy"]["repro_verdict"] == "diverged"
    assert properties["test_unseeded_numpy"]["repro_first_divergence"] == "step 0: model.weight"
    assert properties["test_raises"]["repro_verdict"] == "error"
    assert properties["test_records_nothing"]["repro_verdict"] == "not-recorded"
    assert properties["test_parametrized[3]"]["repro_verdict"] == "identical"


# ----------------------------------------------------------------------------- in-process mode


def test_outcomes_in_inprocess_mode(inprocess_session):
    assert "2 replicas per test in this process" in inprocess_session.output
    outcomes = inprocess_session.outcomes()
    # set iteration depends on PYTHONHASHSEED only: one process, one hash seed -> it passes
    assert outcomes == {"passed": len(PASS_BOTH) + 1, "failed": len(FAIL_BOTH)}, (
        inprocess_session.output
    )
    assert f"FAILED {TRAINING_FILE}::test_set_iteration" not in inprocess_session.output


def test_fixture_model_does_not_leak_into_the_next_inprocess_replica(inprocess_session):
    row = inprocess_session.summary_row(f"{TRAINING_FILE}::test_fixture_model")
    assert " identical " in row


def test_unseeded_rng_fails_in_process_too(inprocess_session):
    text = inprocess_session.failure("test_unseeded_numpy")
    assert "first divergence: step 0, model.weight" in text
    assert text.strip().splitlines()[-1].strip() == (
        f"pytest --repro --repro-seed=0 --repro-runs=2 --repro-mode=inprocess "
        f"{TRAINING_FILE}::test_unseeded_numpy"
    )


def test_a_raising_test_is_an_error_in_process_mode_too(inprocess_session):
    text = inprocess_session.failure("test_raises")
    assert "raised an error" in text and "not nondeterminism" in text
    assert f"{TRAINING_FILE}::test_raises" in inprocess_session.output.split("repro summary")[1]


# ----------------------------------------------------------------------------- crashes


@pytest.mark.parametrize(
    ("crash", "described"),
    [("os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL")],
    ids=["sigkill"],  # os._exit and a real segfault: tests/test_faults.py
)
def test_a_crashing_replica_is_named_with_its_output(pytester, crash, described):
    pytester.makepyfile(
        test_crash=f"""
        import os
        import signal

        import pytest
        import torch


        @pytest.mark.repro(steps=2)
        def test_crash(repro, capsys):
            model = torch.nn.Linear(4, 2)
            repro.record(0, model=model)
            if os.environ["PYTHONHASHSEED"] == "1":
                with capsys.disabled():
                    print("last words of replica one", flush=True)
                {crash}
            repro.record(1, model=model)
    """
    )
    result = pytester.runpytest_subprocess("--repro", NO_BASELINE, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert f"replica 1 process {described} before finishing this test (PYTHONHASHSEED=1)" in text
    assert "last words of replica one" in text  # the tail of its output


# ----------------------------------------------------------------------------- plain runs


def test_without_repro_a_marked_test_runs_once_and_passes(pytester):
    pytester.makepyfile(test_seed=SEED_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert seeds_logged(pytester.path) == [[0, root_seed_for_test(0, SEED_NODEID)]]
    assert "repro summary" not in result.stdout.str()
    assert "repro-check: base seed" not in result.stdout.str()


def test_without_repro_record_still_checks_types(pytester):
    pytester.makepyfile(
        test_types="""
        import pytest

        @pytest.mark.repro
        def test_bad(repro):
            repro.record(0, label=object())
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*TypeError: repro.record(): cannot record 'label' of type builtins.object*"]
    )


def test_disabling_the_plugin(pytester):
    pytester.makepyfile(
        test_disabled="""
        import pytest

        @pytest.mark.repro(steps=2)
        def test_marked_only():
            pass

        @pytest.mark.repro
        def test_with_fixture(repro):
            pass
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:repro", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1, warnings=2)
    result.stdout.fnmatch_lines(["*fixture 'repro' not found*"])
    result.stdout.fnmatch_lines(["*PytestUnknownMarkWarning: Unknown pytest.mark.repro*"])
    refused = pytester.runpytest_subprocess("-p", "no:repro", "--repro")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*unrecognized arguments: --repro*"])


# ----------------------------------------------------------------------------- seeds and runs


def test_runs_and_seed_options_and_last(pytester):
    pytester.makepyfile(test_seed=SEED_TEST)
    seven = root_seed_for_test(7, SEED_NODEID)
    result = pytester.runpytest_subprocess(
        "--repro",
        "--repro-mode=inprocess",
        "--repro-runs=3",
        "--repro-seed=7",
        NO_BASELINE,
        "--repro-report=none",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "repro-check: base seed 7 (rerun with --repro-seed=7); "
            "3 replicas per test in this process"
        ]
    )
    assert seeds_logged(pytester.path) == [[0, seven], [1, seven], [2, seven]]
    assert seven != root_seed_for_test(0, SEED_NODEID)
    row = result.stdout.str().split("repro summary")[1]
    assert re.search(re.escape(SEED_NODEID) + r"\s+3\s+1\s+1\s", row), row  # 3 replicas
    assert not (pytester.path / "reports").exists()  # --repro-report=none
    assert "report: " not in result.stdout.str()

    (pytester.path / "seeds.jsonl").unlink()
    last = pytester.runpytest_subprocess(
        "--repro", "--repro-mode=inprocess", "--repro-seed=last", NO_BASELINE, "--repro-report=none"
    )
    last.assert_outcomes(passed=1)
    last.stdout.fnmatch_lines(["repro-check: base seed 7 *"])
    assert seeds_logged(pytester.path) == [[0, seven], [1, seven]]


def test_seed_option_applies_without_repro_too(pytester):
    pytester.makepyfile(test_seed=SEED_TEST)
    pytester.runpytest_subprocess("--repro-seed=7", "-p", "no:cacheprovider").assert_outcomes(
        passed=1
    )
    assert seeds_logged(pytester.path) == [[0, root_seed_for_test(7, SEED_NODEID)]]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--repro-seed=banana", "expected an integer, 'last' or 'random'"),
        ("--repro-runs=0", "--repro-runs=0: must be at least 1"),
        ("--repro-spill-mb=-1", "--repro-spill-mb=-1: must be at least 0"),
    ],
)
def test_bad_option_values_are_usage_errors(pytester, option, message):
    pytester.makepyfile(test_seed=SEED_TEST)
    result = pytester.runpytest_subprocess("--repro", option, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_ini_options_and_the_command_line_override_them(pytester):
    pytester.makeini("""
        [pytest]
        repro_runs = 3
        repro_seed = 11
        repro_mode = inprocess
        repro_report = ini-reports
        repro_baseline = off
    """)
    pytester.makepyfile(test_seed=SEED_TEST)
    eleven = root_seed_for_test(11, SEED_NODEID)
    result = pytester.runpytest_subprocess("--repro", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["repro-check: base seed 11 *; 3 replicas per test in this process"]
    )
    assert seeds_logged(pytester.path) == [[0, eleven], [1, eleven], [2, eleven]]
    assert (pytester.path / "ini-reports" / "report.json").is_file()

    (pytester.path / "seeds.jsonl").unlink()
    cli = pytester.runpytest_subprocess(
        "--repro",
        "--repro-runs=2",
        "--repro-seed=5",
        "--repro-report=cli-reports",
        "-p",
        "no:cacheprovider",
    )
    cli.assert_outcomes(passed=1)
    cli.stdout.fnmatch_lines(["repro-check: base seed 5 *; 2 replicas per test in this process"])
    five = root_seed_for_test(5, SEED_NODEID)
    assert seeds_logged(pytester.path) == [[0, five], [1, five]]
    assert (
        json.loads((pytester.path / "cli-reports" / "report.json").read_text())["session"][
            "base_seed"
        ]
        == 5
    )


def test_pyproject_ini_options(pytester):
    pytester.makepyprojecttoml("""
        [tool.pytest.ini_options]
        repro_runs = "4"
        repro_seed = "23"
        repro_mode = "inprocess"
    """)
    pytester.makepyfile(test_seed=SEED_TEST)
    result = pytester.runpytest_subprocess("--repro", "--collect-only", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["repro-check: base seed 23 *; 4 replicas per test in this process"]
    )
    bad = pytester.makepyprojecttoml("""
        [tool.pytest.ini_options]
        repro_mode = "sideways"
    """)
    assert bad.exists()
    refused = pytester.runpytest_subprocess("--repro", "-p", "no:cacheprovider")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert "repro_mode" in refused.stderr.str()


# ----------------------------------------------------------------------------- reports


@pytest.mark.parametrize("where", ["a-file", "/proc/forbidden"])
def test_unwritable_report_folder_is_a_clear_message(pytester, where):
    pytester.makepyfile(test_seed=SEED_TEST)
    if where == "a-file":
        (pytester.path / "a-file").write_text("not a folder")
    result = pytester.runpytest_subprocess(
        "--repro",
        "--repro-mode=inprocess",
        NO_BASELINE,
        f"--repro-report={where}",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    text = result.stdout.str()
    assert "repro-check: could not write the report to" in text
    assert "choose another folder with --repro-report=DIR" in text
    assert f"{SEED_NODEID} " in text.split("repro summary")[1]  # the tests are still reported
    if where == "a-file":
        assert (pytester.path / "a-file").read_text() == "not a folder"


# ----------------------------------------------------------------------------- spill budget

TWO_UNSEEDED = """
import numpy as np
import pytest
import torch


def run(repro):
    rng = np.random.default_rng()
    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.add_(torch.from_numpy(rng.normal(size=(2, 4)).astype(np.float32)))
    repro.record(0, model=model)


@pytest.mark.repro
def test_first(repro):
    run(repro)


@pytest.mark.repro
def test_second(repro):
    run(repro)
"""


@pytest.fixture(scope="module")
def no_spill_session(tmp_path_factory) -> Session:
    path = tmp_path_factory.mktemp("no-spill")
    write(path, "test_spill.py", TWO_UNSEEDED)
    return run_pytest(
        path,
        "--repro",
        "--repro-mode=inprocess",
        "--repro-spill-mb=0",
        NO_BASELINE,
        "--repro-report=none",
        "-p",
        "no:cacheprovider",
    )


def test_zero_spill_budget_says_how_to_get_detail(no_spill_session):
    assert no_spill_session.outcomes() == {"failed": 2}, no_spill_session.output
    first = no_spill_session.failure("test_first")
    assert "element-level detail unavailable" in first
    assert "--repro-spill-mb" in first
    assert "Mismatched elements" not in first


def test_zero_spill_budget_message_for_every_test(no_spill_session):
    second = no_spill_session.failure("test_second")
    assert "element-level detail unavailable" in second
    assert "--repro-spill-mb" in second


# ----------------------------------------------------------------------------- xdist

XDIST_TEST = linear_sgd_test("test_tiny", steps=2)


@pytest.fixture(scope="module")
def xdist_session(tmp_path_factory) -> Session:
    path = tmp_path_factory.mktemp("xdist")
    write(path, "test_x1.py", XDIST_TEST)
    write(path, "test_x2.py", XDIST_TEST)
    return run_pytest(
        path,
        "-n",
        "2",
        "--dist=loadfile",
        "--repro",
        NO_BASELINE,
        "-p",
        "no:cacheprovider",
        "--junitxml=junit.xml",
    )


def test_xdist_with_repro(xdist_session):
    assert xdist_session.outcomes() == {"passed": 2}, xdist_session.output
    tree = ET.parse(xdist_session.path / "junit.xml")
    verdicts = {
        (case.get("classname"), case.get("name")): {
            p.get("name"): p.get("value") for p in case.iter("property")
        }
        for case in tree.iter("testcase")
    }
    assert set(verdicts) == {("test_x1", "test_tiny"), ("test_x2", "test_tiny")}
    for properties in verdicts.values():
        assert properties["repro_verdict"] == "identical"
    assert verdicts[("test_x1", "test_tiny")]["repro_seed"] == str(
        root_seed_for_test(0, "test_x1.py::test_tiny")
    )


def test_xdist_summary_and_report_cover_every_test(xdist_session):
    assert "repro summary" in xdist_session.output
    document = json.loads((xdist_session.path / "reports" / "report.json").read_text())
    assert {t["nodeid"] for t in document["tests"]} == {
        "test_x1.py::test_tiny",
        "test_x2.py::test_tiny",
    }
