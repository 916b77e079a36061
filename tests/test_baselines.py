"""Committed baselines end to end: ``pytest --repro`` gating on ``repro_baselines/*.json``.

Each module-scoped fixture builds one small project in a temporary folder and runs the sessions
of one story in fresh ``python -m pytest`` processes (inline pytester runs re-import torch and
crash); the tests read their output, the baseline files, report.json, JUnit XML and the GitHub
step summary. Sessions run in-process (``repro_mode = inprocess`` in the project's ini) wherever
fresh replica processes do not matter; the environment-difference and xdist stories run in the
default subprocess mode, as CI would.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pytest_runs import clean_env, failure_section, side_by_side_env

from repro_check.core.atomic import StoredFileError
from repro_check.core.record import Recorder, RunRecord
from repro_check.core.seeding import root_seed_for_test
from repro_check.orchestration.baseline import (
    build_baseline,
    check_baseline,
    load_baseline,
    write_baseline,
)
from repro_check.orchestration.gate import unchanged

SCHEMA = "repro-check/baseline"


# ----------------------------------------------------------------------------- helpers


@dataclass
class Session:
    """A finished ``python -m pytest`` run in a fresh process."""

    path: Path
    args: tuple[str, ...]
    ret: int
    output: str

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()

    def outcomes(self) -> dict[str, int]:
        return pytest.RunResult.parse_summary_nouns(self.lines)

    def failure(self, test: str) -> str:
        return failure_section(self.output, test)

    def last_command(self, test: str) -> str:
        return self.failure(test).strip().splitlines()[-1].strip()

    def summary_row(self, nodeid: str) -> str:
        assert "repro summary" in self.output, self.output
        summary = self.output.split("repro summary", 1)[1]
        row = next((line for line in summary.splitlines() if line.startswith(nodeid + " ")), None)
        assert row is not None, f"{nodeid} not in the summary:\n{summary}"
        return row

    def report(self, folder: str = "reports") -> dict:
        return json.loads((self.path / folder / "report.json").read_text())

    def report_test(self, nodeid: str, folder: str = "reports") -> dict:
        return next(t for t in self.report(folder)["tests"] if t["nodeid"] == nodeid)


def run_pytest(path: Path, *args: str, timeout: float = 300, **env: str) -> Session:
    process = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=path,
        env=side_by_side_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Session(path, args, process.returncode, process.stdout + process.stderr)


def run_printed(path: Path, command: str, **env: str) -> Session:
    """Run a command exactly as repro-check printed it (``pytest ...``)."""
    argv = shlex.split(command)
    assert argv[0] == "pytest", command
    return run_pytest(path, *argv[1:], **env)


def write(path: Path, name: str, text: str) -> Path:
    target = path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(textwrap.dedent(text).lstrip())
    return target


def edit(path: Path, old: str, new: str) -> None:
    """Change a generated test file (and drop stale bytecode, whatever the mtime says)."""
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))
    for cached in path.parent.glob("__pycache__/*.pyc"):
        cached.unlink()


def written_project(factory, name: str, filename: str, tests: str) -> tuple[Path, Path, Session]:
    """A project of in-process replicas whose baselines were just written (--repro-update)."""
    path = factory.mktemp(name)
    write(path, "pytest.ini", "[pytest]\nrepro_mode = inprocess\n")
    test_file = write(path, filename, tests)
    return path, test_file, run_pytest(path, "--repro", "--repro-update", "-p", "no:cacheprovider")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def baseline_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if "repro_baselines" in p.parts)


def assert_clean_message(text: str, filename: str, *hints: str) -> None:
    """A baseline problem is a message, not a traceback out of the plugin."""
    assert filename in text, text
    for hint in hints:
        assert hint in text, text
    assert "Traceback" not in text, text
    assert "repro_check/" not in text, text
    assert not any(line.startswith("E   ") for line in text.splitlines()), text


def entry_lines(text: str) -> list[dict]:
    """The entry lines of a baseline file, each parsed as a one-key JSON object."""
    steps = text.split('\n  "steps": [\n', 1)[1]
    return [
        json.loads("{" + line.strip().rstrip(",") + "}")
        for line in steps.splitlines()
        if line.startswith('      "')
    ]


TRAIN = """
def train(repro, lr=0.1, width=4, out=2, delta=0.0):
    model = torch.nn.Linear(width, out)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    data = repro.generator("data")
    for step in range(repro.steps):
        x = torch.randn(8, width, generator=data) + delta
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, loss=loss)
"""
HEAD = "import pytest\nimport torch\n" + TRAIN


# ----------------------------------------------------------------------------- the full cycle

CYCLE_FILE = "test_cycle.py"
CYCLE_ID = f"{CYCLE_FILE}::test_linear"
CYCLE_TESTS = (
    HEAD
    + """
LR = 0.1


@pytest.mark.repro(steps=3)
def test_linear(repro):
    train(repro, lr=LR)
"""
)
CYCLE_BASELINE = Path("repro_baselines", "test_cycle", "test_linear.json")


@dataclass
class Cycle:
    path: Path
    missing: Session
    created: Session
    created_text: str
    gate: Session
    changed: Session
    accepted: Session
    accepted_text: str
    after: Session


@pytest.fixture(scope="module")
def cycle(tmp_path_factory) -> Cycle:
    """No baseline -> printed create command -> pass bitwise -> lr edit -> fail -> printed
    accept command -> pass: the issue's "done when", in-process replicas (ini)."""
    path = tmp_path_factory.mktemp("cycle")
    write(path, "pytest.ini", "[pytest]\nrepro_mode = inprocess\n")
    test_file = write(path, CYCLE_FILE, CYCLE_TESTS)
    common = ("--repro", "-p", "no:cacheprovider")
    missing = run_pytest(path, *common)
    created = run_printed(path, missing.last_command("test_linear"))
    created_text = (path / CYCLE_BASELINE).read_text()
    gate = run_pytest(path, *common, "--repro-report=gate-report")
    edit(test_file, "LR = 0.1", "LR = 0.125")
    changed = run_pytest(path, *common, "--junitxml=junit.xml", "--repro-report=changed-report")
    accepted = run_printed(path, changed.last_command("test_linear"))
    accepted_text = (path / CYCLE_BASELINE).read_text()
    after = run_pytest(path, *common)
    return Cycle(
        path, missing, created, created_text, gate, changed, accepted, accepted_text, after
    )


def test_missing_baseline_fails_with_the_command_that_creates_it(cycle):
    assert cycle.missing.outcomes() == {"failed": 1}, cycle.missing.output
    text = cycle.missing.failure("test_linear")
    assert f"no baseline at {CYCLE_BASELINE}" in text
    assert "the replicas agree" in text
    assert is_accept_command(cycle.missing.last_command("test_linear"), CYCLE_ID)
    assert re.search(r" identical +missing ", cycle.missing.summary_row(CYCLE_ID))


def test_the_printed_create_command_writes_the_baseline_and_passes(cycle):
    assert cycle.created.outcomes() == {"passed": 1}, cycle.created.output
    assert " written " in cycle.created.summary_row(CYCLE_ID) + " "
    document = json.loads(cycle.created_text)
    assert document["test_id"] == CYCLE_ID
    assert document["base_seed"] == 0
    assert document["seed"] == root_seed_for_test(0, CYCLE_ID)
    assert [s["step"] for s in document["steps"]] == [0, 1, 2]


def test_rerun_matches_bitwise(cycle):
    assert cycle.gate.outcomes() == {"passed": 1}, cycle.gate.output
    assert "match (bitwise)" in cycle.gate.summary_row(CYCLE_ID)
    baseline = cycle.gate.report_test(CYCLE_ID, "gate-report")["baseline"]
    assert baseline["status"] == "match" and baseline["mode"] == "bitwise"
    assert baseline["reason"] == (
        "the environment matches the baseline's in every determinism-relevant way"
    )
    assert baseline["env_differences"] == []
    assert "unused baseline" not in cycle.gate.output


def test_changed_learning_rate_fails_the_gate_with_the_reason(cycle):
    assert cycle.changed.outcomes() == {"failed": 1}, cycle.changed.output
    text = cycle.changed.failure("test_linear")
    assert f"{CYCLE_ID} no longer matches its baseline" in text
    assert f"baseline: {CYCLE_BASELINE} (created " in text
    assert "the replicas agree with each other" in text
    assert "comparison: bitwise -- the environment matches" in text
    assert (
        "first difference: step 0, model.weight (float32, shape (2, 4)) is no longer bitwise equal"
        in text
    )
    assert re.search(
        r"Greatest absolute difference: \S+ at index \(\d+, \d+\) \(\S+ vs \S+\)", text
    )
    assert "environment: unchanged in every determinism-relevant way" in text
    assert "accept the change (rewrite the baseline, then commit it):" in text
    # the failure text ends with the exact command that accepts the change
    assert is_accept_command(cycle.changed.last_command("test_linear"), CYCLE_ID)
    row = cycle.changed.summary_row(CYCLE_ID)
    assert re.search(r" identical +mismatch \(bitwise\) ", row)  # verdict, then baseline
    assert "vs baseline: step 0: model.weight" in row
    baseline = cycle.changed.report_test(CYCLE_ID, "changed-report")["baseline"]
    assert (baseline["status"], baseline["mode"], baseline["step"], baseline["key"]) == (
        "mismatch",
        "bitwise",
        0,
        "model.weight",
    )


def test_junit_xml_names_the_baseline_mismatch(cycle):
    tree = ET.parse(cycle.path / "junit.xml")
    (case,) = list(tree.iter("testcase"))
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["repro_verdict"] == "baseline-mismatch"
    assert properties["repro_seed"] == str(root_seed_for_test(0, CYCLE_ID))
    assert properties["repro_first_divergence"] == "vs baseline: step 0: model.weight"


def test_the_printed_accept_command_accepts_the_change(cycle):
    assert cycle.accepted.outcomes() == {"passed": 1}, cycle.accepted.output
    assert " written " in cycle.accepted.summary_row(CYCLE_ID) + " "
    before, after = json.loads(cycle.created_text), json.loads(cycle.accepted_text)
    assert (
        before["steps"][0]["entries"]["model.weight"]
        != after["steps"][0]["entries"]["model.weight"]
    )
    assert cycle.after.outcomes() == {"passed": 1}, cycle.after.output
    assert "match (bitwise)" in cycle.after.summary_row(CYCLE_ID)


def test_baseline_file_format(cycle):
    text, document = cycle.created_text, json.loads(cycle.created_text)
    assert document["schema"] == SCHEMA and document["schema_version"] == 2
    assert document["tolerances"] == {"atol": 1e-5, "rtol": 1e-3}  # the defaults
    assert document["environment"]["cpu"]["capability"]  # the snapshot it was made in
    assert len(text.encode()) < 64_000  # small
    assert text.endswith("}\n")
    # one line per recorded entry: a changed number is a changed line in a diff
    expected = [
        {key: value} for step in document["steps"] for key, value in step["entries"].items()
    ]
    assert entry_lines(text) == expected
    assert len(expected) == 3 * 3
    for step in document["steps"]:  # every step keeps statistics; small tensors every element
        weight = step["entries"]["model.weight"]
        assert weight["dtype"] == "float32" and weight["shape"] == [2, 4]
        assert len(weight["stats"]["sample"]) == 8 and len(weight["digest"]) == 16
        assert len(step["entries"]["metric.loss"]["stats"]["sample"]) == 1
    changed = [
        next(iter(a))
        for a, b in zip(expected, entry_lines(cycle.accepted_text), strict=True)
        if a != b
    ]  # a changed entry is one changed line; the loss of step 0 comes before any lr step
    assert (
        changed
        == ["model.weight", "model.bias"] + ["model.weight", "model.bias", "metric.loss"] * 2
    )
    folder = (cycle.path / CYCLE_BASELINE).parent
    assert sorted(p.name for p in folder.iterdir()) == ["test_linear.json"]  # no temp/lock files


# ----------------------------------------------------------------------------- environments

ENV_FILE = "test_env.py"
ENV_TESTS = (
    HEAD
    + """
LR = 0.1
DELTA = 0.0


@pytest.mark.repro(steps=3, atol=1e-4, rtol=1e-3)
def test_same(repro):
    train(repro)


@pytest.mark.repro(steps=3)
def test_lr(repro):
    train(repro, lr=LR)


@pytest.mark.repro(steps=10, atol=0.25)
def test_loose(repro):
    train(repro, width=8, out=4, delta=DELTA)


@pytest.mark.repro(steps=10)
def test_strict(repro):
    train(repro, width=8, out=4, delta=DELTA)
"""
)
ENV_INI = """
[pytest]
repro_atol = 0
repro_rtol = 0
"""


def env_id(name: str) -> str:
    return f"{ENV_FILE}::{name}"


@dataclass
class EnvStory:
    path: Path
    update: Session
    other_cpu: Session
    sessions: dict[str, Session] = field(default_factory=dict)


@pytest.fixture(scope="module")
def env_story(tmp_path_factory) -> EnvStory:
    """Baselines written in fresh processes; then the lr and the data shift are edited and the
    gate runs with ``ATEN_CPU_CAPABILITY=default``: a real, determinism-relevant difference."""
    path = tmp_path_factory.mktemp("environments")
    write(path, "pytest.ini", ENV_INI)
    test_file = write(path, ENV_FILE, ENV_TESTS)
    update = run_pytest(path, "--repro", "--repro-update", "-p", "no:cacheprovider")
    edit(test_file, "LR = 0.1", "LR = 0.125")
    edit(test_file, "DELTA = 0.0", "DELTA = 1e-4")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATEN_CPU_CAPABILITY", "default")
        other_cpu = run_pytest(path, "--repro", "-p", "no:cacheprovider")
    return EnvStory(path, update, other_cpu)


def is_accept_command(command: str, target: str) -> bool:
    """The printed accept command: --repro-update plus the options that decide the case."""
    pattern = (
        r"pytest --repro --repro-update --repro-seed=0( --repro-mode=inprocess)?"
        r"( --repro-baseline-dir=\S+)? " + re.escape(target)
    )
    return re.fullmatch(pattern, command) is not None


def env_session(story: EnvStory, name: str, *args: str) -> Session:
    """Further (in-process) gates on the same baselines, still with the other CPU capability."""
    if name not in story.sessions:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ATEN_CPU_CAPABILITY", "default")
            story.sessions[name] = run_pytest(
                story.path,
                "--repro",
                "--repro-mode=inprocess",
                f"--repro-report={name}",
                "-p",
                "no:cacheprovider",
                *args,
            )
    return story.sessions[name]


def test_update_in_subprocess_mode_writes_statistics_and_values(env_story):
    assert env_story.update.outcomes() == {"passed": 4}, env_story.update.output
    assert "fresh processes" in env_story.update.output
    document = load(env_story.path / "repro_baselines" / "test_env" / "test_loose.json")
    assert document["tolerances"] == {"atol": 0.25, "rtol": 0.0}  # marker atol, ini rtol
    assert document["environment"]["env_vars"].get("PYTHONHASHSEED") == "0"  # replica 0's
    steps = document["steps"]
    assert len(steps) == 10
    for step in steps:  # every step, whatever the spill budget
        weight = step["entries"]["model.weight"]
        assert weight["shape"] == [4, 8]
        assert set(weight["stats"]) == {"min", "max", "mean", "norm", "sample", "sample_index"}
        assert 0 < len(weight["stats"]["sample"]) <= 32
        bias = step["entries"]["model.bias"]  # 4 elements: all of them
        assert len(bias["stats"]["sample"]) == 4
    assert (
        len(entry_lines((env_story.path / "repro_baselines/test_env/test_loose.json").read_text()))
        == 30
    )


def test_other_cpu_capability_compares_with_tolerances(env_story):
    session = env_story.other_cpu
    assert session.outcomes() == {"passed": 2, "failed": 2}, session.output
    for name in ("test_same", "test_loose"):
        assert "match (tolerance)" in session.summary_row(env_id(name))
    baseline = session.report_test(env_id("test_same"))["baseline"]
    assert baseline["mode"] == "tolerance" and baseline["status"] == "match"
    assert "differs from the baseline's in" in baseline["reason"]
    assert "bitwise equality cannot be expected" in baseline["reason"]
    assert "atol=0.0001, rtol=0.001" in baseline["reason"]  # the marker's tolerances
    changes = baseline["env_differences"]
    assert any(c.startswith("env_vars.ATEN_CPU_CAPABILITY") for c in changes), changes
    assert not any("PYTHONHASHSEED" in c for c in changes), changes  # same replica settings


def test_tolerance_mode_failure_names_step_key_and_environment_changes(env_story):
    text = env_story.other_cpu.failure("test_lr")
    assert f"{env_id('test_lr')} no longer matches its baseline" in text
    assert re.search(
        r"comparison: tolerance -- the environment differs from the baseline's in \d+ "
        r"determinism-relevant way\(s\), so bitwise equality cannot be expected; compared with "
        r"atol=0, rtol=0",
        text,
    ), text
    assert "first difference beyond tolerance: step 0, model.weight (float32, shape (2, 4))" in text
    assert "environment changes since the baseline (determinism-relevant):" in text
    changes = text.split("environment changes since the baseline (determinism-relevant):")[1]
    assert "env_vars.ATEN_CPU_CAPABILITY" in changes or "cpu.capability" in changes
    assert "environment: unchanged" not in text
    assert is_accept_command(env_story.other_cpu.last_command("test_lr"), env_id("test_lr"))
    assert "mismatch (tolerance)" in env_story.other_cpu.summary_row(env_id("test_lr"))


def test_ini_tolerance_applies_and_statistics_are_compared(env_story):
    text = env_story.other_cpu.failure("test_strict")
    assert "atol=0, rtol=0" in text  # the ini's tolerances: no marker here
    assert "first difference beyond tolerance: step 0, model.weight (float32, shape (4, 8))" in text
    assert re.search(
        r"Mismatched (statistics|sampled elements): \d+ / \d+ .*\n.*Greatest absolute difference: "
        r"\S+ (in (min|max|mean|norm)|at index \(\d+, \d+\)) \(\S+ vs \S+\)\n",
        text,
    ), text


def test_marker_atol_overrides_the_ini(env_story):
    # test_loose had the same data shift as test_strict, and passed with its marker's atol
    row = env_story.other_cpu.summary_row(env_id("test_loose"))
    assert "identical" in row and "match (tolerance)" in row
    reason = env_story.other_cpu.report_test(env_id("test_loose"))["baseline"]["reason"]
    assert "atol=0.25, rtol=0" in reason


def test_command_line_tolerance_overrides_the_ini_but_not_the_marker(env_story):
    session = env_session(env_story, "cli", "--repro-atol=0.5", "--repro-rtol=0.01")
    assert f"FAILED {env_id('test_strict')}" not in session.output, session.output
    strict = session.report_test(env_id("test_strict"), "cli")["baseline"]
    assert (strict["status"], strict["mode"]) == ("match", "tolerance")
    assert "compared with atol=0.5, rtol=0.01" in strict["reason"]  # command line over ini
    loose = session.report_test(env_id("test_loose"), "cli")["baseline"]
    assert "compared with atol=0.25, rtol=0.01" in loose["reason"]  # the marker's atol wins


def test_tolerance_mode_without_raw_bytes_still_catches_a_change(env_story):
    session = env_session(env_story, "no-spill", "--repro-spill-mb=0")
    assert "mismatch" in session.summary_row(env_id("test_lr")), session.output


# ----------------------------------------------------------------------------- bad baselines

BAD_FILE = "test_bad.py"
BAD_NAMES = (
    "test_corrupt",
    "test_truncated",
    "test_future",
    "test_no_steps",
    "test_wrong_schema",
    "test_digest_removed",
    "test_environment_edited",
    "test_intact",
    "test_deleted",
)
BAD_TESTS = HEAD + "".join(
    f"""

@pytest.mark.repro(steps=2)
def {name}(repro):
    train(repro)
"""
    for name in BAD_NAMES
)
DELETED_TEST = """

@pytest.mark.repro(steps=2)
def test_deleted(repro):
    train(repro)
"""


def bad_path(name: str) -> Path:
    return Path("repro_baselines", "test_bad", f"{name}.json")


def rewrite(path: Path, change) -> None:
    document = load(path)
    change(document)
    path.write_text(json.dumps(document, indent=2))


@dataclass
class BadStory:
    path: Path
    update: Session
    gate: Session
    off: Session


@pytest.fixture(scope="module")
def bad_story(tmp_path_factory) -> BadStory:
    """Baselines written, then damaged in the ways files get damaged; one test deleted."""
    path, test_file, update = written_project(
        tmp_path_factory, "bad-baselines", BAD_FILE, BAD_TESTS
    )
    files = {name: path / bad_path(name) for name in BAD_NAMES}
    files["test_corrupt"].write_text("{ this is not JSON")
    text = files["test_truncated"].read_text()
    files["test_truncated"].write_text(text[: len(text) // 2])  # e.g. a botched merge
    text = files["test_future"].read_text()
    files["test_future"].write_text(text.replace('"schema_version": 2', '"schema_version": 99'))
    rewrite(files["test_no_steps"], lambda d: d.pop("steps"))
    rewrite(files["test_wrong_schema"], lambda d: d.update(schema="repro-check/report"))
    rewrite(
        files["test_digest_removed"], lambda d: d["steps"][1]["entries"]["model.bias"].pop("digest")
    )
    rewrite(files["test_environment_edited"], lambda d: d.update(environment="see CI logs"))
    edit(test_file, DELETED_TEST, "\n")
    gate = run_pytest(path, "--repro", "-p", "no:cacheprovider")
    off = run_pytest(path, "--repro", "--repro-baseline=off", "-p", "no:cacheprovider")
    return BadStory(path, update, gate, off)


def test_update_writes_one_file_per_test(bad_story):
    assert bad_story.update.outcomes() == {"passed": len(BAD_NAMES)}, bad_story.update.output
    assert baseline_files(bad_story.path) == sorted(bad_story.path / bad_path(n) for n in BAD_NAMES)


@pytest.mark.parametrize(
    ("name", "hints"),
    [
        ("test_corrupt", ["not valid JSON", "corrupt or truncated", "regenerate it"]),
        ("test_truncated", ["not valid JSON", "Restore it from version control"]),
        (
            "test_future",
            ["schema_version 99 is newer than this repro-check understands (2)", "upgrade"],
        ),
        ("test_no_steps", ["'steps' is not a list, not None (hand-edited", "--repro-update"]),
        (
            "test_wrong_schema",
            ["expected a 'repro-check/baseline' document", "'repro-check/report'"],
        ),
    ],
)
def test_unusable_baseline_is_a_clear_failure(bad_story, name, hints):
    text = bad_story.gate.failure(name)
    assert f"repro-check: {BAD_FILE}::{name}: the baseline {bad_path(name)} cannot be used:" in text
    assert_clean_message(text, str(bad_path(name)), *hints)
    # and the way out: regenerate it
    assert is_accept_command(bad_story.gate.last_command(name), f"{BAD_FILE}::{name}")
    assert " identical " in bad_story.gate.summary_row(f"{BAD_FILE}::{name}")  # the replicas


def test_hand_edited_entry_is_a_clear_failure(bad_story):
    text = bad_story.gate.failure("test_digest_removed")
    assert_clean_message(text, str(bad_path("test_digest_removed")), "--repro-update")


def test_hand_edited_environment_is_a_clear_failure(bad_story):
    text = bad_story.gate.failure("test_environment_edited")
    assert_clean_message(text, str(bad_path("test_environment_edited")), "--repro-update")


def test_intact_baseline_still_matches_and_damage_does_not_spread(bad_story):
    gate = bad_story.gate
    assert "match (bitwise)" in gate.summary_row(f"{BAD_FILE}::test_intact"), gate.output
    assert f"FAILED {BAD_FILE}::test_intact" not in gate.output
    assert gate.outcomes() == {"passed": 1, "failed": len(BAD_NAMES) - 2}, gate.output


def test_baseline_of_a_deleted_test_is_reported_as_unused(bad_story):
    unused = [line for line in bad_story.gate.lines if line.startswith("unused baseline")]
    assert unused == [
        "unused baseline (no collected test uses it; delete it if the test is gone): "
        f"{bad_path('test_deleted')}"
    ], bad_story.gate.output


def test_baseline_off_skips_the_comparison(bad_story):
    off = bad_story.off
    assert off.outcomes() == {"passed": len(BAD_NAMES) - 1}, off.output
    for name in BAD_NAMES[:-1]:
        row = off.summary_row(f"{BAD_FILE}::{name}")
        assert " identical " in row and row.split()[-2:] == ["-", "-"], row
    assert "unused baseline" not in off.output
    assert "cannot be used" not in off.output


# ----------------------------------------------------------------------------- folders and ini

DIR_FILE = "tests/test_dirs.py"
DIR_ID = f"{DIR_FILE}::test_linear"
DIR_TESTS = (
    HEAD
    + """

@pytest.mark.repro(steps=2)
def test_linear(repro):
    train(repro)
"""
)
DIR_INI = """
[pytest]
repro_mode = inprocess
repro_runs = 3
repro_seed = 3
repro_baseline_dir = from_ini
"""
FROM_INI = Path("from_ini", "tests", "test_dirs", "test_linear.json")
CUSTOM = Path("custom", "tests", "test_dirs", "test_linear.json")


@dataclass
class DirStory:
    path: Path
    ini_update: Session
    cli_update: Session
    cli_gate: Session
    other_seed: Session


@pytest.fixture(scope="module")
def dir_story(tmp_path_factory) -> DirStory:
    path = tmp_path_factory.mktemp("folders")
    write(path, "pytest.ini", DIR_INI)
    write(path, DIR_FILE, DIR_TESTS)
    common = ("--repro", "-p", "no:cacheprovider")
    ini_update = run_pytest(path, *common, "--repro-update")
    cli = ("--repro-baseline-dir=custom", "--repro-seed=4", "--repro-runs=2")
    cli_update = run_pytest(path, *common, "--repro-update", *cli)
    cli_gate = run_pytest(path, *common, *cli)
    other_seed = run_pytest(path, *common, "--repro-baseline-dir=custom")  # ini seed 3
    return DirStory(path, ini_update, cli_update, cli_gate, other_seed)


def test_ini_options_decide_folder_seed_and_runs(dir_story):
    session = dir_story.ini_update
    assert session.outcomes() == {"passed": 1}, session.output
    assert (
        "repro-check: base seed 3 (rerun with --repro-seed=3); 3 replicas per test"
        in session.output
    )
    document = load(dir_story.path / FROM_INI)
    assert document["base_seed"] == 3 and document["seed"] == root_seed_for_test(3, DIR_ID)
    assert not (dir_story.path / "tests" / "repro_baselines").exists()


def test_command_line_overrides_the_ini(dir_story):
    session = dir_story.cli_update
    assert session.outcomes() == {"passed": 1}, session.output
    assert (
        "repro-check: base seed 4 (rerun with --repro-seed=4); 2 replicas per test"
        in session.output
    )
    document = load(dir_story.path / CUSTOM)
    assert document["base_seed"] == 4 and document["seed"] == root_seed_for_test(4, DIR_ID)
    assert load(dir_story.path / FROM_INI)["base_seed"] == 3  # untouched
    gate = dir_story.cli_gate
    assert gate.outcomes() == {"passed": 1}, gate.output
    assert "match (bitwise)" in gate.summary_row(DIR_ID)
    assert gate.report_test(DIR_ID)["baseline"]["path"] == str(CUSTOM)


def test_a_different_seed_fails_against_the_custom_folder(dir_story):
    text = dir_story.other_seed.failure("test_linear")
    assert f"baseline: {CUSTOM} (created" in text
    assert "first difference: step 0, model.weight" in text


def test_a_different_seed_is_named_as_the_reason(dir_story):
    text = dir_story.other_seed.failure("test_linear")
    assert "environment: unchanged" not in text
    assert re.search(r"seed", text.split("accept the change")[0].split("rerun this case")[0]), text


def test_printed_accept_command_updates_the_baseline_that_was_checked(dir_story):
    command = dir_story.other_seed.last_command("test_linear")
    accepted = run_printed(dir_story.path, command)
    assert accepted.outcomes() == {"passed": 1}, accepted.output
    # the gate read custom/ with base seed 3: that is the baseline the change must land in
    assert load(dir_story.path / CUSTOM)["base_seed"] == 3


# ----------------------------------------------------------------------------- file names

NAME_FILE = "test_names.py"
NAME_TESTS = (
    HEAD
    + """

@pytest.mark.parametrize("name", ["a b", "a_b", pytest.param("x" * 300, id="x" * 300)])
@pytest.mark.repro(steps=1)
def test_param(repro, name):
    train(repro)


@pytest.mark.repro(steps=2)
def test_plain(repro):
    train(repro)
"""
)
PLAIN = Path("repro_baselines", "test_names", "test_plain.json")


@dataclass
class NameStory:
    path: Path
    first: Session
    first_text: str
    second: Session


@pytest.fixture(scope="module")
def name_story(tmp_path_factory) -> NameStory:
    path = tmp_path_factory.mktemp("names")
    write(path, "pytest.ini", "[pytest]\nrepro_mode = inprocess\n")
    write(path, NAME_FILE, NAME_TESTS)
    args = ("--repro", "--repro-update", "-p", "no:cacheprovider")
    first = run_pytest(path, *args)
    first_text = (path / PLAIN).read_text()
    second = run_pytest(path, *args)
    return NameStory(path, first, first_text, second)


def test_plain_test_names_map_to_plain_file_names(name_story):
    assert (name_story.path / PLAIN).is_file()
    assert " written " in name_story.first.summary_row(f"{NAME_FILE}::test_plain") + " "
    # accepting again with nothing changed leaves the file alone (like syrupy)
    assert " unchanged " in name_story.second.summary_row(f"{NAME_FILE}::test_plain") + " "


def test_distinct_tests_get_distinct_baseline_files(name_story):
    names = {p.name for p in baseline_files(name_story.path)}
    assert len([n for n in names if n.startswith("test_param[a")]) == 2, names


def test_long_test_ids_get_a_usable_baseline_file(name_story):
    nodeid = f"{NAME_FILE}::test_param[{'x' * 300}]"
    assert f"FAILED {nodeid}" not in name_story.first.output
    assert " written " in name_story.first.summary_row(nodeid) + " "


def test_update_leaves_an_unchanged_baseline_untouched(name_story):
    assert (name_story.path / PLAIN).read_text() == name_story.first_text


# ----------------------------------------------------------------------------- xdist and CI

XDIST_FILE = "test_parallel.py"
XDIST_TESTS = (
    HEAD
    + """

@pytest.mark.parametrize("out", [1, 2, 3, 4])
@pytest.mark.repro(steps=2)
def test_width(repro, out):
    import os

    with open(os.environ["PID_FILE"], "a") as pids:  # which process ran the body
        pids.write(f"{os.getpid()}\\n")
    train(repro, out=out)
"""
)
XDIST_IDS = [f"{XDIST_FILE}::test_width[{out}]" for out in (1, 2, 3, 4)]


@dataclass
class XdistStory:
    path: Path
    update: Session
    gate: Session
    summary: str

    def body_processes(self, session: str) -> set[str]:
        return set((self.path / f"pids-{session}.txt").read_text().split())


@pytest.fixture(scope="module")
def xdist_story(tmp_path_factory) -> XdistStory:
    """Two xdist workers write four baselines into one folder at once; then gate, as in CI."""
    path = tmp_path_factory.mktemp("xdist")
    write(path, "pytest.ini", "[pytest]\n")
    write(path, XDIST_FILE, XDIST_TESTS)
    common = ("-n", "2", "--repro", "-p", "no:cacheprovider")
    # one replica suffices to write (saves four torch imports); the gate runs the default two
    update = run_pytest(
        path,
        *common,
        "--repro-update",
        "--repro-runs=1",
        "--repro-report=update-report",
        PID_FILE=str(path / "pids-update.txt"),
    )
    step_summary = path / "step_summary.md"
    step_summary.write_text("earlier step\n")
    # (passed explicitly: clean_env() drops a GITHUB_STEP_SUMMARY inherited from a real CI job)
    gate = run_pytest(
        path,
        *common,
        "--junitxml=junit.xml",
        GITHUB_STEP_SUMMARY=str(step_summary),
        PID_FILE=str(path / "pids-gate.txt"),
    )
    return XdistStory(path, update, gate, step_summary.read_text())


def test_xdist_update_writes_one_baseline_per_test(xdist_story):
    update = xdist_story.update
    assert update.outcomes() == {"passed": 4}, update.output
    assert "[gw0]" in update.output or "2 workers" in update.output
    folder = xdist_story.path / "repro_baselines" / "test_parallel"
    files = sorted(folder.iterdir())
    assert [p.name for p in files] == [f"test_width[{out}].json" for out in (1, 2, 3, 4)]
    for out, path in zip((1, 2, 3, 4), files, strict=True):
        document = load(path)
        assert document["schema"] == SCHEMA
        assert document["test_id"] == f"{XDIST_FILE}::test_width[{out}]"
        assert document["steps"][0]["entries"]["model.weight"]["shape"] == [out, 4]
    assert "fresh processes" in update.output
    for nodeid in XDIST_IDS:
        assert " written " in update.summary_row(nodeid) + " "


def test_xdist_gate_passes_with_one_summary_and_one_report(xdist_story):
    gate = xdist_story.gate
    assert gate.outcomes() == {"passed": 4}, gate.output
    assert gate.output.count("repro summary") == 1
    for nodeid in XDIST_IDS:
        assert "match (bitwise)" in gate.summary_row(nodeid)
    assert "4 tests: 4 reproducible;" in gate.output
    document = gate.report()
    assert sorted(t["nodeid"] for t in document["tests"]) == XDIST_IDS
    assert document["totals"]["tests"] == 4 and document["totals"]["failed"] == 0
    assert {t["baseline"]["mode"] for t in document["tests"]} == {"bitwise"}
    assert "unused baseline" not in gate.output


def test_xdist_workers_keep_their_replicas_across_tests(xdist_story):
    """Each xdist worker starts its replicas once and sends them its tests (not a process per
    test and replica): 4 tests x 2 replicas ran the body in at most 2 workers x 2 processes."""
    assert xdist_story.gate.outcomes() == {"passed": 4}, xdist_story.gate.output
    assert len(xdist_story.body_processes("gate")) <= 4  # per test, it would be 8
    assert len(xdist_story.body_processes("update")) <= 2  # one replica per worker


def test_github_step_summary_gets_a_markdown_table(xdist_story):
    summary = xdist_story.summary
    assert summary.startswith("earlier step\n")  # appended
    assert summary.count("## repro-check") == 1  # the controller's, not one per worker
    table = [line for line in summary.splitlines() if line.startswith("|")]
    assert re.match(r"\|\s*test\s*\|\s*replicas\s*\|", table[0]), summary
    assert re.match(r"\|[-:| ]+\|$", table[1]), summary
    rows = table[2:]
    assert len(rows) == 4
    for nodeid in XDIST_IDS:
        row = next(r for r in rows if nodeid in r)
        assert "match (bitwise)" in row and "identical" in row


def test_junit_xml_has_per_test_properties_under_xdist(xdist_story):
    tree = ET.parse(xdist_story.path / "junit.xml")
    properties = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in tree.iter("testcase")
    }
    assert sorted(properties) == [f"test_width[{out}]" for out in (1, 2, 3, 4)]
    for out in (1, 2, 3, 4):
        props = properties[f"test_width[{out}]"]
        assert props["repro_verdict"] == "identical"
        assert props["repro_seed"] == str(root_seed_for_test(0, XDIST_IDS[out - 1]))


# ----------------------------------------------------------------------------- concurrent writers

WRITER = """
import sys
from pathlib import Path

from repro_check.orchestration.baseline import write_baseline

path, writer = Path(sys.argv[1]), int(sys.argv[2])
for round in range(40):
    write_baseline(path, {
        "schema": "repro-check/baseline", "schema_version": 1, "test_id": "t",
        "writer": writer, "round": round, "padding": "x" * 20000,
        "steps": [{"step": s, "entries": {f"k{i}": {"digest": f"{writer:04d}{round:04d}{i:08d}",
                   "dtype": "float32", "shape": [2]} for i in range(20)}} for s in range(5)],
    })
"""


def test_concurrent_writers_of_one_baseline_never_leave_a_broken_file(tmp_path):
    from repro_check.orchestration.baseline import load_baseline

    path = tmp_path / "repro_baselines" / "test_x" / "test_y.json"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(index)], env=clean_env())
        for index in range(4)
    ]
    seen = set()
    while any(w.poll() is None for w in writers):
        if path.exists():
            document = load_baseline(path)  # never half-written: os.replace of a complete file
            seen.add((document["writer"], document["round"]))
            digests = {e["digest"][:8] for s in document["steps"] for e in s["entries"].values()}
            assert digests == {f"{document['writer']:04d}{document['round']:04d}"}
    assert [w.wait() for w in writers] == [0, 0, 0, 0]
    document = load_baseline(path)
    assert document["round"] == 39 and len(document["steps"]) == 5
    assert len(seen) > 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_y.json"]  # no tmp/lock left


# ----------------------------------------------------------------------------- tolerance holes
#
# The three holes of tolerance mode, each reproduced end to end: a baseline is written, its
# environment edited (another torch thread count: a determinism-relevant difference, so the
# gate must compare with tolerances), the test changed, and the gate must fail.

HOLES_FILE = "test_holes.py"
HOLES_TESTS = """
import pytest
import torch

SCALE_AT = None
NAN_AT = None


def train(repro, scale_at=None, nan_at=None):
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = repro.generator("data")
    for step in range(repro.steps):
        loss = model(torch.randn(16, 8, generator=data)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if step == scale_at:
                model.weight.mul_(1000)
            if step == nan_at:
                model.weight[0, 0] = float("nan")
        repro.record(step, model=model, loss=loss)


@pytest.mark.repro(steps=20)
def test_x1000_at_step_1(repro):
    train(repro, scale_at=SCALE_AT)


@pytest.mark.repro(steps=5)
def test_nan_appears(repro):
    train(repro, nan_at=NAN_AT)


@pytest.mark.repro(steps=5)
def test_digests_only(repro):
    train(repro, scale_at=SCALE_AT)
"""


@pytest.fixture(scope="module")
def holes(tmp_path_factory) -> Session:
    path, test_file, update = written_project(tmp_path_factory, "holes", HOLES_FILE, HOLES_TESTS)
    assert update.outcomes() == {"passed": 3}, update.output

    def other_threads(document: dict) -> None:
        document["environment"]["threads"]["torch_num_threads"] += 1

    for baseline in baseline_files(path):
        rewrite(baseline, other_threads)
    digests_only = path / "repro_baselines" / "test_holes" / "test_digests_only.json"
    rewrite(  # what a baseline written after the spill budget ran out used to hold
        digests_only,
        lambda d: [e.pop("stats") for s in d["steps"] for e in s["entries"].values()],
    )
    edit(test_file, "SCALE_AT = None", "SCALE_AT = 1")
    edit(test_file, "NAN_AT = None", "NAN_AT = 2")
    return run_pytest(path, "--repro", "-p", "no:cacheprovider")


def holes_id(name: str) -> str:
    return f"{HOLES_FILE}::{name}"


def test_hole_x1000_at_step_1_of_20_fails_in_tolerance_mode(holes):
    row = holes.summary_row(holes_id("test_x1000_at_step_1"))
    assert "mismatch (tolerance)" in row and "vs baseline: step 1: model.weight" in row, row
    text = holes.failure("test_x1000_at_step_1")
    assert "first difference beyond tolerance: step 1, model.weight" in text
    assert "    threads.torch_num_threads: " in text  # why tolerance mode: one line each
    assert "Mismatched statistics: 4 / 4 (100.0%)" in text


def test_hole_a_nan_appearing_fails_in_tolerance_mode(holes):
    row = holes.summary_row(holes_id("test_nan_appears"))
    assert "mismatch (tolerance)" in row and "vs baseline: step 2: model.weight" in row, row
    text = holes.failure("test_nan_appears")
    assert "non-finite counts differ: NaN 0 -> 1" in text


def test_hole_a_digests_only_baseline_fails_instead_of_passing(holes):
    row = holes.summary_row(holes_id("test_digests_only"))
    assert "unsupported (tolerance)" in row, row
    text = holes.failure("test_digests_only")
    assert "its baseline cannot support this comparison" in text
    assert "cannot compare step 1, model.weight (float32, shape (4, 8)) with tolerances" in text
    assert "--repro-update on the reference machine" in text
    assert holes.outcomes() == {"failed": 3}, holes.output


# ----------------------------------------------------------------------------- decisions (unit)
#
# Every decision of the gate as a function of a record, a baseline document and a snapshot:
# no pytest session. Records come from the real Recorder without a spill file, so statistics
# never depend on the spill budget.

ENV_A = {"threads": {"torch": 2}}
ENV_B = {"threads": {"torch": 1}}  # a determinism-relevant difference: tolerance mode
TOL = (1e-5, 1e-3)


def recorded(states: list[dict]) -> RunRecord:
    recorder = Recorder(None)  # no spill file at all
    for step, state in enumerate(states):
        recorder.record(step, state)
    return recorder.close()


def weights(steps: int = 20, *, change: dict[int, object] | None = None, size=(32, 16)):
    """A deterministic run of ``steps`` records; ``change[step](tensor)`` edits one step."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(*size, generator=generator)
    states = []
    for step in range(steps):
        w = w * 0.99 + 0.01 * torch.randn(*size, generator=generator)
        shown = change[step](w.clone()) if change and step in change else w.clone()
        states.append({"model.weight": shown, "loss": float(shown.pow(2).mean())})
    return recorded(states)


def document_of(record: RunRecord, env=ENV_A, fp64: RunRecord | None = None) -> dict:
    return build_baseline("t.py::test", 7, 0, record, env, TOL, fp64_record=fp64)


def stored(tmp_path: Path, document: dict) -> dict:
    """Write and load back: what a later session reads."""
    path = tmp_path / "b.json"
    write_baseline(path, document)
    return load_baseline(path)


def test_every_step_and_key_keeps_statistics_without_any_spill_file(tmp_path):
    document = stored(tmp_path, document_of(weights(20)))
    assert document["schema_version"] == 2
    assert len(document["steps"]) == 20
    for step in document["steps"]:
        for entry in step["entries"].values():
            stats = entry["stats"]
            assert set(stats) >= {"min", "max", "mean", "norm", "sample"}
            assert not set(stats) & {"nan", "posinf", "neginf"}  # zero counts are left out
            assert stats["sample"]


def test_same_run_in_tolerance_mode_matches_even_with_zero_tolerance(tmp_path):
    document = stored(tmp_path, document_of(weights(3)))
    check = check_baseline(document, weights(3), ENV_B, 0.0, 0.0)
    assert (check.status, check.mode) == ("match", "tolerance")
    assert check.reason_lines() == [check.reason, "  threads.torch: 2 -> 1"]


def test_x1000_at_step_1_of_20_fails_in_tolerance_mode(tmp_path):
    """Hole 2: statistics were kept for 8 sampled steps, and step 1 was not one of them."""
    document = stored(tmp_path, document_of(weights(20)))
    changed = weights(20, change={1: lambda w: w * 1000})
    check = check_baseline(document, changed, ENV_B, *TOL)
    assert (check.status, check.mode, check.step, check.key) == (
        "mismatch",
        "tolerance",
        1,
        "model.weight",
    )
    text = "\n".join(check.lines)
    assert "first difference beyond tolerance: step 1, model.weight" in text
    assert "Mismatched statistics: 4 / 4 (100.0%)" in text
    assert re.search(r"Mismatched sampled elements: \d+ / \d+", text), text


def test_a_nan_appearing_fails_whatever_the_tolerance(tmp_path):
    """Hole 3: NaN/inf counts are compared exactly, not with atol."""

    def poison(w: torch.Tensor) -> torch.Tensor:
        w[3, 5] = float("nan")
        return w

    document = stored(tmp_path, document_of(weights(5)))
    check = check_baseline(document, weights(5, change={2: poison}), ENV_B, 1e9, 1e9)
    assert (check.status, check.step, check.key) == ("mismatch", 2, "model.weight")
    assert "    non-finite counts differ: NaN 0 -> 1, +inf 0 -> 0, -inf 0 -> 0" in check.lines


def test_a_baseline_without_statistics_fails_and_says_how_to_fix(tmp_path):
    """Hole 1: a digests-only baseline passed anything in tolerance mode."""
    document = document_of(weights(4))
    for step in document["steps"]:
        for entry in step["entries"].values():
            del entry["stats"]
    loaded = stored(tmp_path, document)
    assert check_baseline(loaded, weights(4), ENV_B, *TOL).status == "match"  # same bits
    check = check_baseline(loaded, weights(4, change={0: lambda w: w * 1000}), ENV_B, *TOL)
    assert check.failed and check.status == "unsupported"
    (line,) = check.lines
    assert line.startswith("cannot compare step 0, model.weight (float32, shape (32, 16))")
    assert "no statistics" in line and "--repro-update on the reference machine" in line


def test_small_noise_is_within_tolerance(tmp_path):
    document = stored(tmp_path, document_of(weights(6)))
    noisy = weights(6, change={s: (lambda w: w * (1 + 1e-7)) for s in range(6)})
    check = check_baseline(document, noisy, ENV_B, *TOL)
    assert check.status == "match", check.lines
    assert check_baseline(document, noisy, ENV_A, *TOL).status == "mismatch"  # bitwise


def test_a_mean_near_zero_is_held_to_the_data_scale_not_to_itself(tmp_path):
    centred = [{"x": torch.tensor([-1.0, 1.0, -1.0, 1.0] * 8)}]
    shifted = [{"x": torch.tensor([-1.0, 1.0, -1.0, 1.0] * 8) + 1e-4}]
    document = stored(tmp_path, document_of(recorded(centred)))
    check = check_baseline(document, recorded(shifted), ENV_B, 0.0, 1e-3)
    assert check.status == "match", check.lines  # 1e-4 of an RMS of 1, within rtol=1e-3


def test_bitwise_mismatch_is_told_in_assert_close_words(tmp_path):
    document = stored(tmp_path, document_of(weights(3)))
    changed = weights(3, change={1: lambda w: w.index_put_((torch.tensor(0),), w[0] + 0.5)})
    check = check_baseline(document, changed, ENV_A, *TOL)
    assert (check.status, check.mode, check.step) == ("mismatch", "bitwise", 1)
    assert check.lines[0] == (
        "first difference: step 1, model.weight (float32, shape (32, 16)) is no longer "
        "bitwise equal"
    )
    assert any(line.startswith("    Mismatched statistics: ") for line in check.lines)
    assert any(
        re.match(r"    Greatest absolute difference: 0.5 at index \(0, \d+\)", line)
        for line in check.lines
    ), check.lines


def test_the_float64_rule_replaces_atol_when_the_baseline_has_a_float64_record(tmp_path):
    def run(dtype, order: str = "blas", scale: float = 1.0):
        g = torch.Generator().manual_seed(3)
        a = torch.randn(64, 1024, generator=g, dtype=torch.float64) * 1e-3
        x = torch.randn(1024, generator=g, dtype=torch.float64)
        a, x = a.to(dtype), x.to(dtype)
        y = a @ x if order == "blas" else (a.view(64, -1, 8) * x.view(-1, 8)).sum(-1).sum(-1)
        return recorded([{"y": y * scale}])

    document = stored(tmp_path, document_of(run(torch.float32), fp64=run(torch.float64)))
    assert "fp64" in document["steps"][0]["entries"]["y"]
    other_order = check_baseline(document, run(torch.float32, "chunk"), ENV_B, 0.0, 0.0)
    assert other_order.status == "match", other_order.lines  # atol=0 would have failed it
    assert "judged by the float64 rule" in other_order.reason
    scaled = check_baseline(document, run(torch.float32, scale=1.01), ENV_B, 1e9, 1e9)
    assert scaled.status == "mismatch"  # a huge atol does not excuse a real bug
    assert any(line.startswith("    float64 rule: ") for line in scaled.lines), scaled.lines


def test_common_steps_are_compared_when_the_step_counts_differ(tmp_path):
    document = stored(tmp_path, document_of(weights(30)))
    check = check_baseline(document, weights(10), ENV_A, *TOL)
    assert check.status == "steps" and check.failed
    assert check.steps_note.startswith(
        "the step counts differ (baseline 30 steps 0..29, this run 10 0..9); "
        "compared the 10 common steps"
    )
    assert "and they agree bitwise" in check.lines[0]
    chosen = check_baseline(document, weights(10), ENV_A, *TOL, steps_overridden=True)
    assert chosen.status == "match" and chosen.steps_note  # --repro-steps=10 asked for it
    changed = weights(10, change={4: lambda w: w * 2})
    broken = check_baseline(document, changed, ENV_A, *TOL, steps_overridden=True)
    assert (broken.status, broken.step) == ("mismatch", 4)
    assert broken.lines[-1] == broken.steps_note
    longer = check_baseline(stored(tmp_path, document_of(weights(5))), weights(8), ENV_A, *TOL)
    assert longer.status == "steps"  # steps 5..7 have nothing to be compared with


def test_structure_changes_are_structural(tmp_path):
    document = stored(tmp_path, document_of(recorded([{"x": torch.ones(4)}])))
    assert check_baseline(document, recorded([{"y": torch.ones(4)}]), ENV_A, *TOL).status == (
        "structural"
    )
    reshaped = check_baseline(document, recorded([{"x": torch.ones(2, 2)}]), ENV_B, *TOL)
    assert reshaped.status == "structural" and "float32(4,)" in reshaped.lines[0]


def test_a_tensor_without_statistics_in_this_run_is_unsupported(tmp_path):
    document = stored(tmp_path, document_of(weights(2)))
    changed = weights(2, change={0: lambda w: w + 1})
    entry = changed.steps[0].entries["model.weight"]
    fp = entry.fingerprint
    bare = SimpleNamespace(digest=fp.digest, dtype=fp.dtype, shape=fp.shape, stats=None)
    changed.steps[0].entries["model.weight"] = SimpleNamespace(fingerprint=bare)
    check = check_baseline(document, changed, ENV_B, *TOL)
    assert check.status == "unsupported"
    assert "this run kept no statistics for it" in check.lines[0]


def test_another_sampling_scheme_is_unsupported_not_compared(tmp_path):
    document = stored(tmp_path, document_of(weights(2)))
    stats = document["steps"][0]["entries"]["model.weight"]["stats"]
    stats["sample_index"] = [i + 1 for i in stats.get("sample_index", range(len(stats["sample"])))]
    check = check_baseline(document, weights(2, change={0: lambda w: w + 1}), ENV_B, *TOL)
    assert check.status == "unsupported" and "sampled other elements" in check.lines[0]


def test_the_seed_note_names_the_seed_to_rerun_with(tmp_path):
    document = stored(tmp_path, document_of(weights(2)))
    check = check_baseline(document, weights(2), ENV_A, *TOL, seed=8)
    assert "--repro-seed=0 to compare like with like" in check.seed_note


# ----------------------------------------------------------------------------- version 1 files

BIG = torch.linspace(-2.0, 2.0, 32).reshape(4, 8)


def v1_document() -> dict:
    """What repro-check wrote before schema 2: values for small tensors, statistics for some
    steps, fingerprints only for the others (and for every step once the spill budget ran out)."""
    values = BIG.double()
    return {
        "schema": SCHEMA,
        "schema_version": 1,
        "seed": 7,
        "base_seed": 0,
        "environment": ENV_A,
        "steps": [
            {
                "step": 0,
                "entries": {
                    "small": {
                        "digest": "a" * 16,
                        "dtype": "float32",
                        "shape": [2],
                        "values": [0.5, -1.0],
                    },
                    "big": {
                        "digest": "b" * 16,
                        "dtype": "float32",
                        "shape": [4, 8],
                        "stats": {
                            "mean": float(values.mean()),
                            "std": float(values.std(correction=0)),
                            "min": -2.0,
                            "max": 2.0,
                            "l2": float(values.norm()),
                        },
                    },
                },
            },
            {
                "step": 1,
                "entries": {
                    "small": {"digest": "c" * 16, "dtype": "float32", "shape": [2]},
                    "big": {"digest": "d" * 16, "dtype": "float32", "shape": [4, 8]},
                },
            },
        ],
    }


def test_version_1_files_are_read(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1_document()))
    document = load_baseline(path)
    assert document["schema_version"] == 1
    small = document["steps"][0]["entries"]["small"]["stats"]
    assert (small["min"], small["max"], small["mean"]) == (-1.0, 0.5, -0.25)
    assert small["sample"] == [0.5, -1.0] and small["nan"] == 0
    big = document["steps"][0]["entries"]["big"]["stats"]
    assert (big["max"], big["sample"], big["nan"], big["posinf"]) == (2.0, [], 0, 0)
    assert "stats" not in document["steps"][1]["entries"]["big"]


def test_version_1_values_and_statistics_compare_and_fingerprint_only_steps_fail(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1_document()))
    document = load_baseline(path)
    run = recorded(
        [
            {"small": torch.tensor([0.5, -1.0000001]), "big": BIG},
            {"small": torch.ones(2), "big": BIG},
        ]
    )
    check = check_baseline(document, run, ENV_B, *TOL)
    assert (check.status, check.step, check.key) == ("unsupported", 1, "small"), check.lines
    assert "schema 2" in check.lines[0] and "--repro-update" in check.lines[0]
    run.steps[0].entries["small"] = (
        recorded([{"small": torch.tensor([0.5, -2.0])}]).steps[0].entries["small"]
    )
    moved = check_baseline(document, run, ENV_B, *TOL)
    assert (moved.status, moved.step, moved.key) == ("mismatch", 0, "small")
    assert (
        "    Greatest absolute difference: 1 at index (1) (-1.0 vs -2.0) (up to 1e-05 allowed)"
        in moved.lines
    )


# ----------------------------------------------------------------------------- damaged files


def hand_edit(path: Path, text_edit) -> None:
    path.write_text(text_edit(path.read_text()))


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        ("string", lambda t: re.sub(r'"max": [^,]+', '"max": "big"', t, count=1), "stats.max"),
        ("null step", lambda t: t.replace('{"step": 1,', '{"step": null,', 1), "steps[1].step"),
        ("huge float", lambda t: t.replace('"norm": ', '"norm": 1e999, "x": ', 1), "stats.norm"),
        ("huge int", lambda t: t.replace('"seed": 7', '"seed": ' + "9" * 4000, 1), "seed"),
        (
            "int beyond 4300 digits",
            lambda t: t.replace('"seed": 7', '"seed": ' + "9" * 5000, 1),
            "",
        ),
        (
            "deep environment",
            lambda t: t.replace(
                '"environment": {', '"environment": {"x": ' + "[" * 40 + "]" * 40 + ", ", 1
            ),
            "environment.x",
        ),
        (
            "absurd nesting",
            lambda t: t.replace(
                '"environment": {',
                '"environment": {"x": ' + "[" * 100_000 + "]" * 100_000 + ", ",
                1,
            ),
            "",
        ),
        ("repeated step", lambda t: t.replace('{"step": 1,', '{"step": 0,', 1), "steps[1].step"),
        (
            "sample of text",
            lambda t: re.sub(r'"sample": \[[^\]]*\]', '"sample": ["x"]', t, count=1),
            "sample",
        ),
        ("shape", lambda t: t.replace('"shape": [32, 16]', '"shape": [32, -16]', 1), "shape"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_hand_edited_values_are_clear_errors_naming_file_and_field(tmp_path, name, change, field):
    path = tmp_path / "baseline.json"
    write_baseline(path, document_of(weights(2)))
    hand_edit(path, change)
    with pytest.raises(StoredFileError) as caught:
        load_baseline(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert "--repro-update" in message or "regenerate it" in message, message
    assert field in message, message
    assert len(message) < 400, message
    # and --repro-update repairs it: the file is never kept as "unchanged", it is rewritten
    assert not unchanged(path, weights(2), ENV_A, 7)
    write_baseline(path, document_of(weights(2)))
    assert check_baseline(load_baseline(path), weights(2), ENV_A, *TOL).status == "match"


def test_a_read_only_folder_is_a_clear_error_and_leaves_no_lock(tmp_path):
    folder = tmp_path / "repro_baselines"
    folder.mkdir()
    path = folder / "test_x.json"
    # A real read-only folder. Root writes anywhere, so the writer drops to another user first.
    script = textwrap.dedent(
        f"""
        import json, os, sys
        from pathlib import Path
        import filelock  # import everything before dropping to a user who cannot read it
        from repro_check.core.atomic import StoredFileError
        from repro_check.orchestration.baseline import write_baseline
        document = json.loads(sys.stdin.read())
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        try:
            write_baseline(Path({str(path)!r}), document)
        except StoredFileError as exc:
            print(exc)
        """
    )
    folder.chmod(0o555)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(document_of(weights(1))),
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=120,
        )
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{path}: cannot write the baseline: "), done.stdout
    assert "read-only" in done.stdout and "--repro-update" in done.stdout
    assert list(folder.iterdir()) == []  # no baseline, no temp file, no .lock


def test_a_full_disk_is_a_clear_error_and_leaves_no_lock(tmp_path, monkeypatch):
    import errno

    from repro_check.orchestration import baseline as bl

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bl, "atomic_write_text", full)
    path = tmp_path / "repro_baselines" / "test_x.json"
    with pytest.raises(StoredFileError, match="no space left on the disk") as caught:
        write_baseline(path, document_of(weights(1)))
    assert str(caught.value).startswith(f"{path}: cannot write the baseline: No space left")
    assert list(path.parent.iterdir()) == []


def test_integer_tensors_that_differ_fail_exactly_in_tolerance_mode(tmp_path):
    document = stored(tmp_path, document_of(recorded([{"count": torch.tensor([3, 4])}])))
    check = check_baseline(document, recorded([{"count": torch.tensor([3, 5])}]), ENV_B, 1, 1)
    assert check.status == "mismatch"
    assert "int64 values are compared exactly" in check.lines[1]


def test_complex_tensors_are_compared_through_their_real_view(tmp_path):
    z = torch.tensor([1 + 2j, 3 - 4j, 0.5j], dtype=torch.complex64)
    document = stored(tmp_path, document_of(recorded([{"z": z}])))
    assert check_baseline(document, recorded([{"z": z * (1 + 1e-7)}]), ENV_B, *TOL).status == (
        "match"
    )
    moved = z.clone()
    moved[2] = 0.75j
    check = check_baseline(document, recorded([{"z": moved}]), ENV_B, *TOL)
    assert check.status == "mismatch"
    assert any("at index (2, 1) (0.5 vs 0.75)" in line for line in check.lines), check.lines


def failure_text(check) -> str:
    from repro_check.orchestration.verdict import BASELINE_MISMATCH, BaselineOutcome, TestVerdict
    from repro_check.reporting.verdicts import failure_message

    verdict = TestVerdict("t.py::test", 7, 0, BASELINE_MISMATCH, [])
    verdict.baseline = BaselineOutcome("b.json", "checked", "today", check=check)
    return failure_message(verdict)


def test_a_shorter_run_is_not_blamed_on_the_code_or_the_data(tmp_path):
    document = stored(tmp_path, document_of(weights(30)))
    text = failure_text(check_baseline(document, weights(10), ENV_A, *TOL))
    assert "t.py::test recorded other steps than its baseline" in text
    assert "the step counts differ (baseline 30 steps 0..29, this run 10 0..9)" in text
    assert "the code or the data changed" not in text
    changed = failure_text(
        check_baseline(document, weights(30, change={3: lambda w: -w}), ENV_A, *TOL)
    )
    assert "the code or the data changed the numbers" in changed  # same env, same steps


def test_the_reason_for_tolerance_mode_is_one_line_per_relevant_difference(tmp_path):
    document = stored(
        tmp_path,
        document_of(weights(2), env={"threads": {"torch": 2}, "cpu": {"capability": "AVX2"}}),
    )
    changed = weights(2, change={0: lambda w: w * 2})
    check = check_baseline(
        document, changed, {"threads": {"torch": 1}, "cpu": {"capability": "DEFAULT"}}, *TOL
    )
    text = failure_text(check)
    reason = text.split("comparison: tolerance -- ", 1)[1].splitlines()
    assert reason[0].startswith("the environment differs from the baseline's in 2 ")
    assert reason[1:4] == [
        "  environment changes since the baseline (determinism-relevant):",
        "    cpu.capability: AVX2 -> DEFAULT",
        "    threads.torch: 2 -> 1",
    ]
