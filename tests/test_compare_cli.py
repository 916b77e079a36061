"""``repro-check compare A B`` without pytest sessions: record files written from real tiny
runs, compared through the command line's entry point; every exit code and input kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from drift_runs import train

from repro_check.cli import main
from repro_check.core.checkpoint import save_checkpoint
from repro_check.core.record import RunRecord
from repro_check.orchestration.baseline import build_baseline, write_baseline
from repro_check.orchestration.records import load_runs, record_path, write_record

NODEID = "tests/test_model.py::test_train"
HERE = {"env_vars": {}, "threads": {"torch": 2}, "hostname": "ci"}
THERE = {"env_vars": {"ATEN_CPU_CAPABILITY": "default"}, "threads": {"torch": 1}, "hostname": "lap"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunRecord]:
    folder = tmp_path_factory.mktemp("runs")
    return {
        "reference": train(folder, "reference", spill=False),
        "float64": train(folder, "float64", float64=True, spill=False),
        "reordered": train(folder, "reordered", reorder=True, spill=False),
        "bug": train(folder, "bug", scale_bug=1.001, spill=False),
    }


def report(
    folder: Path,
    record: RunRecord,
    *,
    fp64: RunRecord | None = None,
    environment: dict | None = None,
    nodeid: str = NODEID,
) -> Path:
    write_record(
        folder,
        nodeid,
        seed=1,
        base_seed=0,
        record=record,
        environment=environment if environment is not None else HERE,
        tolerances=(0.0, 0.0),
        status="identical",
        fp64=fp64,
    )
    return folder


def compare(capsys, a: Path, b: Path, *extra: str) -> tuple[int, str]:
    code = main(["compare", str(a), str(b), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_runs_that_differ_by_rounding_agree_and_the_environment_explains_why(
    tmp_path, runs, capsys
):
    a = report(tmp_path / "a", runs["reference"], fp64=runs["float64"])
    b = report(tmp_path / "b", runs["reordered"], environment=THERE)
    code, out = compare(capsys, a, b)
    assert code == 0, out
    assert "2 difference(s) that can change results" in out
    assert "! env_vars.ATEN_CPU_CAPABILITY: (unset) -> default" in out
    assert "! threads.torch: 2 -> 1" in out
    assert out.index("ATEN_CPU_CAPABILITY") < out.index("hostname")  # relevant ones first
    assert "judged by the float64 rule (A's float64 record): agrees" in out
    assert "first drift: step 0" in out and "A and B agree" in out


def test_a_real_numerical_bug_does_not_agree(tmp_path, runs, capsys):
    a = report(tmp_path / "a", runs["reference"], fp64=runs["float64"])
    b = report(tmp_path / "b", runs["bug"])
    code, out = compare(capsys, a, b)
    assert code == 1, out
    assert "disagrees" in out and "beyond the float64 rule" in out
    assert "A and B do not agree" in out


def test_identical_runs_agree_bit_for_bit(tmp_path, runs, capsys):
    a = report(tmp_path / "a", runs["reference"])
    code, out = compare(capsys, a, a)
    assert code == 0 and "identical" in out and "the same in every captured field" in out


def test_the_float64_record_of_either_side_judges(tmp_path, runs, capsys):
    a = report(tmp_path / "a", runs["reordered"])
    b = report(tmp_path / "b", runs["reference"], fp64=runs["float64"])
    code, out = compare(capsys, a, b)
    assert code == 0 and "A vs B, judged by the float64 rule (B's float64 record)" in out


def test_without_float64_the_stated_tolerances_decide(tmp_path, runs, capsys):
    a = report(tmp_path / "a", runs["reference"])
    b = report(tmp_path / "b", runs["reordered"])
    code, out = compare(capsys, a, b)
    assert code == 1 and "atol=0, rtol=0 (no float64 record)" in out
    code, out = compare(capsys, a, b, "--atol", "1e-4", "--rtol", "1e-3")
    assert code == 0 and "within the stated tolerances" in out


def test_a_test_on_one_side_only_does_not_agree(tmp_path, runs, capsys):
    a = report(tmp_path / "a", runs["reference"])
    report(tmp_path / "a", runs["reference"], nodeid="tests/test_model.py::test_other")
    b = report(tmp_path / "b", runs["reference"])
    code, out = compare(capsys, a, b)
    assert code == 1 and "tests/test_model.py::test_other: only in A" in out
    code, out = compare(capsys, a, b, "--test", NODEID)
    assert code == 0, out


@pytest.mark.parametrize("kind", ["missing", "empty folder", "foreign json", "damaged record"])
def test_bad_input_is_exit_2_with_the_reason(tmp_path, runs, capsys, kind):
    good = report(tmp_path / "good", runs["reference"])
    bad = tmp_path / "bad"
    if kind == "empty folder":
        bad.mkdir()
    elif kind == "foreign json":
        bad = tmp_path / "other.json"
        bad.write_text(json.dumps({"schema": "something/else"}))
    elif kind == "damaged record":
        bad = record_path(tmp_path / "bad", NODEID)
        bad.parent.mkdir(parents=True)
        bad.write_text('{"schema": "repro-check/run-record", "schema_version": 1}')
    code, out = compare(capsys, good, bad)
    assert code == 2, out
    assert "repro-check compare:" in out and "Traceback" not in out


def test_baseline_files_and_checkpoints_are_runs_too(tmp_path, runs, capsys):
    document = build_baseline(
        NODEID, 1, 0, runs["reference"], {}, (0.0, 0.0), fp64_record=runs["float64"]
    )
    baseline = tmp_path / "baseline.json"
    write_baseline(baseline, document)
    loaded = load_runs(baseline)[NODEID]
    assert loaded.fp64 is not None and len(loaded.record.steps) == len(runs["reference"].steps)
    noise = report(tmp_path / "noise", runs["reordered"])
    assert compare(capsys, baseline, noise)[0] == 0
    assert compare(capsys, baseline, report(tmp_path / "bug", runs["bug"]))[0] == 1

    weights = {"w": torch.linspace(-1, 1, 50), "b": torch.zeros(3)}
    first = save_checkpoint(tmp_path / "c1" / "step-4", weights, {"test_id": NODEID, "step": 4})
    nudged = {"w": weights["w"] + 1e-3, "b": weights["b"]}
    second = save_checkpoint(tmp_path / "c2" / "step-4", nudged, {"test_id": NODEID, "step": 4})
    assert compare(capsys, first, first)[0] == 0
    code, out = compare(capsys, first, second, "--atol", "1e-6")
    assert code == 1 and "w:" in out and "Mismatched elements: 50 / 50" in out
    assert compare(capsys, first, second.with_suffix(".safetensors"), "--atol", "2e-3")[0] == 0
