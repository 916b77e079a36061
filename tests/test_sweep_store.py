"""Sweep decisions without pytest sessions: the plan, paired seeds, declared outcomes, the rows,
and resuming from runs.jsonl (stale inputs, torn and bad lines)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from repro_check.core.context import RunContext
from repro_check.core.outcomes import OutcomeError, outcome_entry, outcome_specs
from repro_check.core.seeding import SeedPlan, pairing_id, root_seed_for_test
from repro_check.orchestration.replicas import ReplicaResult, RunSpec
from repro_check.orchestration.sweep import (
    ALL_OFFSET,
    SweepStore,
    parse_crossed,
    plan_runs,
    result_row,
    run_inputs,
    runs_frame,
    source_files_of,
)

# ------------------------------------------------------------------------------------ plan


def test_all_runs_use_seeds_no_single_source_run_uses():
    runs = {run.run_id: run for run in plan_runs(["init", "data"], 3)}
    assert runs["init:0"].perturbations == {"init": 1}
    assert runs["all:0"].perturbations == {"all": ALL_OFFSET + 1}
    root = 12345
    init_seeds = {
        SeedPlan(root, runs[f"init:{k}"].perturbations).seed_for("init") for k in range(3)
    }
    all_seeds = {SeedPlan(root, runs[f"all:{k}"].perturbations).seed_for("init") for k in range(3)}
    assert not init_seeds & all_seeds  # Var(all) is estimated from independent runs


def test_crossed_plan_runs_every_pair_of_seeds():
    runs = plan_runs(["init"], 2, crossed=("init", "data"), crossed_k=(3, 2))
    crossed = [r for r in runs if r.label == "init+data"]
    assert len(crossed) == 6
    assert {tuple(r.perturbations.values()) for r in crossed} == {
        (i, j) for i in (1, 2, 3) for j in (1, 2)
    }
    assert crossed[3].run_id == "init+data:3" and crossed[3].perturbations == {"init": 2, "data": 2}
    assert parse_crossed("init,data", "3x2", 8) == (("init", "data"), (3, 2))
    assert parse_crossed(None, None, 8) == (None, None)
    for sources, shape, match in [
        ("init", None, "two sources"),
        ("init,init", None, "two different"),
        ("init,all", None, "not one seed stream"),
        ("init,data", "3by2", "K_AxK_B"),
        ("init,data", "1x4", "2 x 2"),
        (None, "2x2", "needs --repro-crossed"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_crossed(sources, shape, 8)


def test_variants_share_their_root_seed():
    assert pairing_id("t.py::test_m[a-1]") == pairing_id("t.py::test_m[b]") == "t.py::test_m"
    assert pairing_id("t.py::Class::test_m[x[0]]") == "t.py::Class::test_m"
    assert pairing_id("t.py::test_a", "mlp") == pairing_id("t.py::test_b", "mlp") == "pair:mlp"
    roots = {root_seed_for_test(0, pairing_id(t)) for t in ("t.py::test_m[a]", "t.py::test_m[b]")}
    assert len(roots) == 1


# ------------------------------------------------------------------------------------ outcomes


def test_record_outcome_and_seeds_land_in_run_info():
    context = RunContext(SeedPlan(7, {"init": 2}))
    seed = context.seed_for("init")
    context.record_outcome("accuracy", 0.75, higher_is_better=True, n_examples=400)
    context.record_outcome("bleu", 31)
    assert context.run_info["seeds"] == {"init": seed}
    assert context.run_info["outcomes"] == {
        "accuracy": {"value": 0.75, "higher_is_better": True, "n_examples": 400},
        "bleu": {"value": 31.0, "higher_is_better": None, "n_examples": None},
    }


@pytest.mark.parametrize(
    "args,match",
    [
        (("", 1.0, None, None), "non-empty"),
        (("acc", "0.5", None, None), "must be a number"),
        (("acc", True, None, None), "must be a number"),
        (("acc", 0.5, "yes", None), "True or False"),
        (("acc", 0.5, None, 0), "integer >= 1"),
        (("acc", 75.0, None, 100), "proportion"),
    ],
)
def test_bad_outcomes_are_refused_with_the_argument_named(args, match):
    with pytest.raises(OutcomeError, match=match):
        outcome_entry(*args)


def test_outcome_specs_keep_the_first_declaration_and_say_so():
    rows = [
        {"test": "t", "outcomes": {"acc": {"value": 0.5, "higher_is_better": True}}},
        {"test": "t", "outcomes": {"acc": {"value": 0.6, "higher_is_better": False}}},
    ]
    specs, problems = outcome_specs(rows)
    assert specs == {"t": {"acc": {"higher_is_better": True, "n_examples": None}}}
    assert len(problems) == 1 and "differently" in problems[0]


# ------------------------------------------------------------------------------------ rows


def _result(run_id: str = "init:0", **run_info) -> ReplicaResult:
    return ReplicaResult(
        "t.py::test_m[a]",
        0,
        "passed",
        metrics={"metric.loss": 0.3},
        run_id=run_id,
        run_info={"seeds": {"init": 11, "global": 12}, **run_info},
    )


def test_declared_outcomes_are_measured_and_recorded_scalars_stay_diagnostics():
    outcomes = {"accuracy": {"value": 0.8, "higher_is_better": True, "n_examples": 100}}
    run = RunSpec("init:0", {"init": 1})
    row = result_row(_result(outcomes=outcomes), base_seed=0, root_seed=5, command="c", run=run)
    assert row["status"] == "ok" and row["seeds"] == {"init": 11, "global": 12}
    assert "outcomes" not in row["run_info"] and row["perturbation"] == 1
    frame = runs_frame([row])
    assert frame.loc[0, "metric.accuracy"] == 0.8
    assert frame.loc[0, "diag.loss"] == 0.3 and "metric.loss" not in frame.columns
    assert (frame.loc[0, "seed.init"], frame.loc[0, "seed.global"]) == (11, 12)
    legacy = runs_frame([result_row(_result(), base_seed=0, root_seed=5, command="c")])
    assert legacy.loc[0, "metric.loss"] == 0.3  # nothing declared: recorded scalars count


def test_a_nan_outcome_marks_the_run_and_a_crossed_run_keeps_its_cell():
    nan = {"accuracy": {"value": float("nan"), "higher_is_better": None, "n_examples": None}}
    row = result_row(_result(outcomes=nan), base_seed=0, root_seed=5, command="c")
    assert row["status"] == "nan" and row["outcomes"]["accuracy"]["value"] == "nan"
    assert math.isnan(runs_frame([row]).loc[0, "metric.accuracy"])
    run = RunSpec("init+data:3", {"init": 2, "data": 2}, label="init+data")
    crossed = result_row(_result("init+data:3"), base_seed=0, root_seed=5, command="c", run=run)
    assert (crossed["source"], crossed["k"], crossed["k_a"], crossed["k_b"]) == (
        "init+data",
        3,
        1,
        1,
    )


# ------------------------------------------------------------------------------------ resume


def _inputs(tmp_path: Path, steps: int = 10) -> dict:
    test = tmp_path / "test_m.py"
    if not test.exists():
        test.write_text("def test_m(repro): pass\n")
    return run_inputs(source_files=[test], steps=steps, root_seed=5, threads=1, deterministic=False)


def _store_with_rows(tmp_path: Path, inputs: dict, n: int = 3) -> SweepStore:
    store = SweepStore(tmp_path / "runs.jsonl", base_seed=0)
    for k in range(n):
        run = RunSpec(f"init:{k}", {"init": k + 1})
        row = result_row(
            _result(f"init:{k}"), base_seed=0, root_seed=5, command="c", run=run, inputs=inputs
        )
        store.append(row)
    return store


def test_unchanged_inputs_resume_every_run(tmp_path):
    inputs = _inputs(tmp_path)
    store = _store_with_rows(tmp_path, inputs)
    stored = store.load({"t.py::test_m[a]": inputs})
    assert len(stored.done) == 3 and stored.messages == []
    assert store.load({"t.py::other": inputs}).done == {}  # another test's rows: not ours


def test_changed_test_source_or_steps_redo_the_runs_and_say_why(tmp_path):
    inputs = _inputs(tmp_path)
    store = _store_with_rows(tmp_path, inputs)
    (tmp_path / "test_m.py").write_text("def test_m(repro): lr = 0.2\n")
    changed = _inputs(tmp_path, steps=20)
    stored = store.load({"t.py::test_m[a]": changed})
    assert stored.done == {}
    (message,) = stored.redo
    assert "3 stored runs" in message and "will be redone" in message
    assert "the test's source" in message and "steps 10 -> 20" in message
    (fewer,) = store.load({"t.py::test_m[a]": changed}, run_ids={"init:0", "all:0"}).redo
    assert "1 stored run in" in fewer  # only the runs of this plan are counted


def test_rows_without_inputs_are_redone(tmp_path):
    store = _store_with_rows(tmp_path, None, n=1)  # an older repro-check
    stored = store.load({"t.py::test_m[a]": _inputs(tmp_path)})
    assert stored.done == {} and "older repro-check" in stored.redo[0]


def test_torn_last_line_is_repaired_before_appending(tmp_path):
    inputs = _inputs(tmp_path)
    store = _store_with_rows(tmp_path, inputs, n=2)
    with open(store.path, "ab") as handle:
        handle.write(b'{"test": "t.py::test_m[a]", "run_id": "ini')  # killed mid-write
    stored = SweepStore(store.path, 0).load({"t.py::test_m[a]": inputs})
    assert len(stored.done) == 2
    assert "line 3" in stored.problems[0] and "cut off" in stored.problems[0]
    fresh = SweepStore(store.path, 0)
    row = result_row(_result("init:2"), base_seed=0, root_seed=5, command="c", inputs=inputs)
    note = fresh.append(row)
    assert note is not None and "cut-off last line" in note
    lines = store.path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    assert fresh.append(row) is None  # repaired once per store


def test_a_whole_last_row_without_newline_is_kept(tmp_path):
    inputs = _inputs(tmp_path)
    store = _store_with_rows(tmp_path, inputs, n=1)
    store.path.write_bytes(store.path.read_bytes().rstrip(b"\n"))
    fresh = SweepStore(store.path, 0)
    assert fresh.append(json.loads(store.path.read_text()) | {"run_id": "init:1"}) is None
    assert len(fresh.load({"t.py::test_m[a]": inputs}).done) == 2


def test_bad_rows_are_reported_with_their_line_number(tmp_path):
    inputs = _inputs(tmp_path)
    store = _store_with_rows(tmp_path, inputs, n=2)
    lines = store.path.read_text().splitlines()
    newer = json.loads(lines[1]) | {"schema_version": 99, "run_id": "init:9"}
    store.path.write_text(
        "\n".join([lines[0], "{not json", json.dumps({"foo": 1}), json.dumps(newer), lines[1]])
        + "\n"
    )
    stored = store.load({"t.py::test_m[a]": inputs})
    assert len(stored.done) == 2
    assert [p.split(": ", 1)[0].rsplit(", ", 1)[1] for p in stored.problems] == [
        "line 2",
        "line 3",
        "line 4",
    ]
    assert "not valid JSON" in stored.problems[0] and "newer repro-check" in stored.problems[2]


def test_source_files_are_the_module_and_its_conftests(tmp_path):
    (tmp_path / "conftest.py").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "conftest.py").write_text("")
    test = tmp_path / "sub" / "test_x.py"
    test.write_text("")
    assert source_files_of(test, tmp_path) == [
        test,
        tmp_path / "sub" / "conftest.py",
        tmp_path / "conftest.py",
    ]
    before = _inputs(tmp_path)
    (tmp_path / "conftest.py").write_text("x = 1")
    inputs = run_inputs(
        source_files=source_files_of(test, tmp_path),
        steps=10,
        root_seed=5,
        threads=1,
        deterministic=False,
    )
    assert inputs["test source"] != before["test source"]
