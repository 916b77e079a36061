"""Perturbed seeds: ``pytest --repro-sensitivity`` end to end, on tiny generated tests.

A sweep runs each marked test K times per source (each run varying only that source's seed),
plus K runs varying all of them, in worker processes; results stream into
``REPORT/sensitivity/runs.jsonl`` (the resume point) and the report folder gets md, tex, csv,
json and PNGs. Every session here is a fresh ``python -m pytest`` process (inline pytester runs
crash with torch). The main sweep runs once; the sessions that replay, resume or break it run
concurrently afterwards, and the independent ones alongside it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_runs import clean_env

COMMON = ["-p", "no:cacheprovider", "-p", "no:randomly"]

#: Linear model on data from repro.generator("data"), init under repro.seeded("init"); two
#: parametrized variants running identical code (they must come out paired and equal). The
#: accuracy is the declared outcome; the loss stays a diagnostic.
TINY = """
import pytest
import torch


@pytest.mark.parametrize("variant", ["a", "b"])
@pytest.mark.repro(steps=3)
def test_tiny(repro, variant):
    data = repro.generator("data")
    x = torch.randn(64, 4, generator=data)
    y = (x.sum(1) > 0).long()
    with repro.seeded("init"):
        model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(repro.steps):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(1) == y).float().mean()
        repro.record(step, loss=loss, accuracy=accuracy)
    repro.record_outcome("accuracy", accuracy, higher_is_better=True, n_examples=64)
    repro.record_predictions(logits)
"""
TINY_ID = "test_tiny.py::test_tiny[a]"
TINY_B = "test_tiny.py::test_tiny[b]"
SOURCES = ["init", "data", "bitflip"]
K = 3
RUNS = 2 * K * 4  # two variants x (init, data, bitflip, all) x K
SWEEP = ["--repro-sensitivity", f"--repro-seeds={K}", f"--repro-sources={','.join(SOURCES)}"]
#: The sweep after the test's code changed: only init (and all), to keep it short.
EDITED_SWEEP = ["--repro-sensitivity", f"--repro-seeds={K}", "--repro-sources=init"]

#: init:1 raises; data:1 records a NaN loss (the runs' perturbation is init/data = k + 1).
BROKEN = """
import pytest
import torch


@pytest.mark.repro(steps=2)
def test_broken(repro):
    if repro.plan.perturbations == {"init": 2}:
        raise RuntimeError("planted failure 4711")
    x = torch.randn(16, 4, generator=repro.generator("data"))
    with repro.seeded("init"):
        model = torch.nn.Linear(4, 1)
    for step in range(repro.steps):
        loss = model(x).pow(2).mean()
        if repro.plan.perturbations == {"data": 2}:
            loss = loss * float("nan")
        repro.record(step, loss=loss)
"""
BROKEN_ID = "test_broken.py::test_broken"

#: Only ever asks for "init": a sweep over "augment" measures nothing.
INIT_ONLY = """
import pytest
import torch


@pytest.mark.repro(steps=2)
def test_init_only(repro):
    with repro.seeded("init"):
        model = torch.nn.Linear(4, 1)
    x = torch.ones(8, 4)
    for step in range(repro.steps):
        repro.record(step, loss=model(x).pow(2).mean())
"""
INIT_ONLY_ID = "test_init_only.py::test_init_only"


@dataclass
class Sweep:
    ret: int
    output: str
    folder: Path  # REPORT/sensitivity

    def rows(self) -> list[dict]:
        """runs.jsonl, one dict per line, in the order written."""
        lines = (self.folder / "runs.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def by_run(self, test: str = TINY_ID) -> dict[str, dict]:
        return {row["run_id"]: row for row in self.rows() if row["test"] == test}

    def csv(self) -> list[dict]:
        with open(self.folder / "runs.csv", newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def document(self) -> dict:
        return json.loads((self.folder / "sensitivity.json").read_text(encoding="utf-8"))

    def warnings(self, kind: str) -> list[str]:
        return [w["message"] for w in self.document()["warnings"] if w["kind"] == kind]


def start(cwd: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *args, *COMMON],
        cwd=cwd,
        env=clean_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(processes: dict[str, tuple[subprocess.Popen, Path]]) -> dict[str, Sweep]:
    done = {}
    for name, (process, folder) in processes.items():
        try:
            output, _ = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other, _ in processes.values():
                other.kill()
            raise
        done[name] = Sweep(process.returncode, output, folder)
    return done


def report_folder(directory: Path, name: str) -> tuple[str, Path]:
    return f"--repro-report={directory / name}", directory / name / "sensitivity"


KEPT_ROWS = 5  # runs.jsonl lines kept for the partial resume


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Sweep]:
    tiny = tmp_path_factory.mktemp("tiny")
    (tiny / "test_tiny.py").write_text(TINY, encoding="utf-8")
    broken = tmp_path_factory.mktemp("broken")
    (broken / "test_broken.py").write_text(BROKEN, encoding="utf-8")
    unused = tmp_path_factory.mktemp("unused")
    (unused / "test_init_only.py").write_text(INIT_ONLY, encoding="utf-8")
    reports = tmp_path_factory.mktemp("sweep-reports")

    main_option, main_folder = report_folder(reports, "main")
    broken_option, broken_folder = report_folder(reports, "broken")
    unused_option, unused_folder = report_folder(reports, "unused")
    first = {
        "main": (start(tiny, [*SWEEP, main_option]), main_folder),
        "broken": (
            start(
                broken,
                [
                    "--repro-sensitivity",
                    "--repro-seeds=2",
                    "--repro-sources=init,data",
                    "--repro-jobs=1",
                    broken_option,
                ],
            ),
            broken_folder,
        ),
        "unused": (
            start(
                unused,
                [
                    "--repro-sensitivity",
                    "--repro-seeds=1",
                    "--repro-sources=init,augment",
                    "--repro-jobs=1",
                    unused_option,
                ],
            ),
            unused_folder,
        ),
    }
    done = finish(first)
    main = done["main"]
    assert main.ret == pytest.ExitCode.OK, main.output

    # Partial resume: a copy of the finished sweep that lost all but its first rows.
    partial_option, partial_folder = report_folder(reports, "partial")
    shutil.copytree(reports / "main", reports / "partial")
    store = partial_folder / "runs.jsonl"
    kept = store.read_text(encoding="utf-8").splitlines()[:KEPT_ROWS]
    store.write_text("\n".join(kept) + "\n", encoding="utf-8")
    # One run on its own, exactly as runs.csv prints it (its default report folder is fresh).
    command = shlex.split(
        next(r for r in main.csv() if r["run_id"] == "init:1" and r["test"] == TINY_ID)["command"]
    )
    assert command[0] == "pytest"
    # ... and as a user runs it when the sweep used the default folder: into the sweep's folder
    same_option, same_folder = report_folder(reports, "same-folder")
    shutil.copytree(reports / "main", reports / "same-folder")
    # The test's code changes between two sweeps into one folder: every run is redone.
    edited = tmp_path_factory.mktemp("edited")
    (edited / "test_tiny.py").write_text(TINY.replace("lr=0.5", "lr=0.4"), encoding="utf-8")
    edited_option, edited_folder = report_folder(reports, "edited")
    shutil.copytree(reports / "main", reports / "edited")
    one_worker = ["--repro-jobs=1"]  # the main sweep ran two; each worker imports torch
    second = {
        "resumed": (start(tiny, [*SWEEP, main_option, *one_worker]), main_folder),
        "partial": (start(tiny, [*SWEEP, partial_option, *one_worker]), partial_folder),
        "only": (start(tiny, command[1:]), tiny / "reports" / "sensitivity" / "only-init-1"),
        "same_folder": (start(tiny, [*command[1:], same_option]), same_folder),
        "edited": (start(edited, [*EDITED_SWEEP, edited_option, *one_worker]), edited_folder),
    }
    done.update(finish(second))
    return done


# ----------------------------------------------------------------------------- the main sweep


def test_sweep_writes_every_report_file(sweeps):
    main = sweeps["main"]
    assert re.search(r"\b2 passed in\b", main.output), main.output
    assert "repro sensitivity" in main.output
    for name in (
        "sensitivity.md",
        "sensitivity.tex",
        "runs.csv",
        "sensitivity.json",
        "runs.jsonl",
        "environment.json",
    ):
        assert (main.folder / name).stat().st_size > 0, name
    pngs = sorted(p.name for p in main.folder.glob("*.png"))
    for kind in ("sources", "expected_max"):
        assert any(name.endswith(f"__accuracy__{kind}.png") for name in pngs), pngs
    assert not any("__loss__" in name for name in pngs)  # the loss is a diagnostic
    assert all((main.folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    document = main.document()
    assert document["schema"] == "repro-check/sensitivity"
    assert set(pngs) <= set(document["files"])
    assert "\\begin{table}" in (main.folder / "sensitivity.tex").read_text()
    markdown = (main.folder / "sensitivity.md").read_text()
    assert TINY_ID in markdown and "bitflip" in markdown and "## A vs B" in markdown


def test_runs_csv_has_one_row_per_run_with_its_command(sweeps):
    main = sweeps["main"]
    rows = main.csv()
    assert len(rows) == RUNS == 24
    for test in (TINY_ID, TINY_B):
        assert sorted(r["run_id"] for r in rows if r["test"] == test) == sorted(
            f"{source}:{k}" for source in [*SOURCES, "all"] for k in range(K)
        )
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        command = shlex.split(row["command"])
        assert command[:2] == ["pytest", "--repro-sensitivity"]
        assert f"--repro-only-run={row['run_id']}" in command
        assert f"--repro-seeds={K}" in command and command[-1] == row["test"]
        assert math.isfinite(float(row["diag.loss"])) and "metric.loss" not in row
        assert 0 <= float(row["metric.accuracy"]) <= 1
        assert row["seed.init"] and row["seed.data"] and row["seed.global"]
    assert f"{RUNS} runs (0 resumed from" in main.output


def test_identical_variants_get_the_same_seeds_and_compare_as_equal(sweeps):
    main = sweeps["main"]
    rows = main.csv()
    seeds = {
        (r["test"], r["run_id"]): (r["seed.init"], r["seed.data"], r["root_seed"]) for r in rows
    }
    for run_id in {r["run_id"] for r in rows}:
        assert seeds[(TINY_ID, run_id)] == seeds[(TINY_B, run_id)], run_id
    (comparison,) = [c for c in main.document()["comparisons"] if c["metric"] == "accuracy"]
    paired = comparison["comparison"]["paired"]
    assert comparison["paired_seeds"] and paired["improvement"]["p"] == 0.5
    assert paired["improvement"]["ci_low"] < 0.5 < paired["improvement"]["ci_high"]
    diff = paired["mean_difference"]
    assert diff["low"] <= 0.0 <= diff["high"]
    assert paired["improvement"]["decision"] == "too few runs"
    assert "run 26 more" in (main.folder / "sensitivity.md").read_text()


def test_init_runs_differ_but_share_the_data_seed(sweeps):
    runs = sweeps["main"].by_run()
    seeds = {run_id: row["seeds"] for run_id, row in runs.items()}
    unperturbed = seeds["bitflip:0"]  # bitflip keeps every seed
    init = [seeds[f"init:{k}"] for k in range(K)]
    data = [seeds[f"data:{k}"] for k in range(K)]
    assert {s["data"] for s in init} == {unperturbed["data"]}
    assert len({s["init"] for s in init}) == K and unperturbed["init"] not in {
        s["init"] for s in init
    }
    assert {s["init"] for s in data} == {unperturbed["init"]}
    assert len({s["data"] for s in data}) == K
    # and the seeds matter: the init runs end with different losses
    assert len({runs[f"init:{k}"]["metrics"]["metric.loss"] for k in range(K)}) == K
    assert all(set(row["sources_used"]) == {"init", "data"} for row in runs.values())
    # `all` runs draw seeds of their own: no init or data seed of a one-source run
    all_seeds = [seeds[f"all:{k}"] for k in range(K)]
    assert not {s["init"] for s in all_seeds} & {s["init"] for s in init}
    assert not {s["data"] for s in all_seeds} & {s["data"] for s in data}


def test_a_printed_run_command_reproduces_its_metrics_bit_for_bit(sweeps):
    only = sweeps["only"]
    assert only.ret == pytest.ExitCode.OK, only.output
    assert "1 run (0 resumed" in only.output
    (rerun,) = only.rows()
    original = sweeps["main"].by_run()["init:1"]
    assert rerun["run_id"] == "init:1"
    assert rerun["metrics"] == original["metrics"]  # floats round-trip JSON exactly
    assert rerun["seeds"] == original["seeds"] and rerun["outcomes"] == original["outcomes"]
    assert rerun["predictions"] == original["predictions"]


def test_a_printed_run_command_leaves_the_sweep_report_alone(sweeps):
    same = sweeps["same_folder"]
    assert same.ret == pytest.ExitCode.OK, same.output
    assert len(same.csv()) == RUNS


def test_a_printed_run_command_reruns_even_where_the_sweep_ran(sweeps):
    assert "1 run (0 resumed" in sweeps["same_folder"].output


def test_bitflip_runs_record_the_nudged_weight(sweeps):
    runs = sweeps["main"].by_run()
    shapes = {"weight": 8, "bias": 2}  # Linear(4, 2)
    for k in range(K):
        flip = runs[f"bitflip:{k}"]["run_info"]["bitflip"]
        assert flip["parameter"] in shapes
        assert 0 <= flip["element"] < shapes[flip["parameter"]]
        assert flip["after"] != flip["before"]
        assert math.isclose(flip["after"], flip["before"], rel_tol=1e-6)
    assert all("bitflip" not in runs[f"init:{k}"]["run_info"] for k in range(K))


def test_predictions_are_compared_across_runs(sweeps):
    test = next(t for t in sweeps["main"].document()["tests"] if t["nodeid"] == TINY_ID)
    disagreement = test["disagreement"]
    assert set(disagreement) == {*SOURCES, "all"}
    assert disagreement["init"]["pairs"] == 3  # K choose 2
    assert 0 < disagreement["init"]["mean_disagreement"] <= 1


# ----------------------------------------------------------------------------- resuming


def test_rerunning_the_same_sweep_resumes_every_run(sweeps):
    resumed = sweeps["resumed"]
    assert resumed.ret == pytest.ExitCode.OK, resumed.output
    assert f"{RUNS} runs ({RUNS} resumed from" in resumed.output
    assert len(resumed.rows()) == RUNS  # nothing appended
    assert len(resumed.csv()) == RUNS


def test_a_truncated_store_resumes_the_rest(sweeps):
    partial = sweeps["partial"]
    assert partial.ret == pytest.ExitCode.OK, partial.output
    assert f"{RUNS} runs ({KEPT_ROWS} resumed from" in partial.output
    rows = partial.rows()
    assert len(rows) == RUNS
    assert len(partial.csv()) == RUNS
    # the runs made again are the same runs: bit-for-bit the metrics of the first sweep
    for row in rows[KEPT_ROWS:]:
        original = sweeps["main"].by_run(row["test"])[row["run_id"]]
        assert row["metrics"] == original["metrics"], row["run_id"]


def test_changed_test_code_reruns_every_run_and_says_why(sweeps):
    edited = sweeps["edited"]
    assert edited.ret == pytest.ExitCode.OK, edited.output
    runs = 2 * 2 * K  # two variants x (init, all) x K
    assert f"{runs} runs (0 resumed from" in edited.output
    output = " ".join(edited.output.split())
    assert f"{2 * K} stored runs in runs.jsonl will be redone: the test's source" in output
    new = {(r["test"], r["run_id"]): r for r in edited.rows()[RUNS:]}
    old = sweeps["main"].by_run()
    assert len(new) == runs
    assert new[(TINY_ID, "init:0")]["metrics"] != old["init:0"]["metrics"]  # lr changed


# ----------------------------------------------------------------------------- warnings


def test_failed_and_nan_runs_are_counted_and_the_test_fails(sweeps):
    broken = sweeps["broken"]
    assert broken.ret == pytest.ExitCode.TESTS_FAILED, broken.output
    assert "6 runs (0 resumed from" in broken.output
    assert "1 failed, 1 with NaN metrics" in broken.output
    assert f"1 of 6 sweep runs of {BROKEN_ID} failed" in broken.output
    assert "planted failure 4711" in broken.output
    rerun = re.search(r"rerun it:\n\s+(pytest .*)", broken.output)
    assert rerun, broken.output
    assert "--repro-only-run=init:1" in rerun.group(1)
    assert rerun.group(1).endswith(BROKEN_ID)
    status = {row["run_id"]: row["status"] for row in broken.csv()}
    assert status == {
        "init:0": "ok",
        "init:1": "failed",
        "data:0": "ok",
        "data:1": "nan",
        "all:0": "ok",
        "all:1": "ok",
    }
    assert any("1 of 2 runs of source 'init' failed" in w for w in broken.warnings("failed-runs"))
    assert any(
        "1 of 2 runs of source 'data' produced NaN" in w for w in broken.warnings("nan-runs")
    )


def test_unused_source_and_single_run_warnings(sweeps):
    unused = sweeps["unused"]
    assert unused.ret == pytest.ExitCode.OK, unused.output
    assert len(unused.csv()) == 3  # init, augment, all; K=1
    messages = unused.warnings("unused-source")
    assert len(messages) == 1 and "measures nothing for source 'augment'" in messages[0]
    assert "repro.seed_for('augment') was never called" in messages[0]
    no_spread = unused.warnings("no-spread")
    assert any("'init' has K=1 run: no spread" in w for w in no_spread), no_spread
    output = " ".join(unused.output.split())  # the terminal wraps nothing, but be safe
    assert "measures nothing for source 'augment'" in output
    assert "no spread" in output
