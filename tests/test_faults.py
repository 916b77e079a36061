"""Faults and bad input (issue 10): a broken replica never takes the session down, and nothing
ends in a raw traceback.

Decisions are unit-tested on plain data (fake worker processes, fake clocks); the faults that
only exist for real -- a segfault, os._exit, a hang, SIGTERM of the parent, a full disk -- run in
real processes: one ``pytest --repro`` session holds every replica fault at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repro_check.cli import main as cli_main
from repro_check.core.checkpoint import load_checkpoint, save_checkpoint
from repro_check.core.paths import HASH_MARK, UnsafePathError, id_to_name, inside, nodeid_path
from repro_check.core.record import Recorder, RunRecord
from repro_check.core.seeding import SeedPlan, root_seed_for_test
from repro_check.core.spill import SpillWriter
from repro_check.orchestration.case import Case, SessionSettings
from repro_check.orchestration.checkpoints import save_last_step
from repro_check.orchestration.replay import VerdictPipeline
from repro_check.orchestration.replicas import ReplicaResult, default_specs
from repro_check.orchestration.verdict import IDENTICAL

NODEID = "tests/test_model.py::test_train"

# ----------------------------------------------------------------------------- paths


def test_id_to_name_keeps_safe_ids_and_hashes_the_rest_injectively():
    assert id_to_name("test_width[3]") == "test_width[3]"
    names = {id_to_name(text) for text in ("a b", "a::b", "a_b", "a/b", "a\\b", "a_b" + "~x")}
    assert len(names) == 6
    assert id_to_name("a_b") == "a_b"
    assert all(HASH_MARK in name for name in names - {"a_b"})
    for hidden in (".", "..", ".hidden", ""):
        name = id_to_name(hidden)
        assert not name.startswith(".") and name not in ("", ".", "..")


def test_long_ids_fit_a_path_component_and_stay_distinct():
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert id_to_name(long_a) != id_to_name(long_b)
    assert max(len(id_to_name(t).encode()) for t in (long_a, long_b, "é" * 300)) <= 255


def test_test_path_never_leads_out_of_its_folder():
    assert nodeid_path("tests/test_x.py::test_a[1]") == Path("tests", "test_x", "test_a[1]")
    for nodeid in ("../outside/test_x.py::t", "/abs/test_x.py::t", "a/../../b.py::t"):
        assert ".." not in nodeid_path(nodeid).parts and not nodeid_path(nodeid).is_absolute()
    assert nodeid_path("a.txt::t") != nodeid_path("a.txt.py::t")


def test_a_symlinked_folder_is_not_followed_out_of_the_report_folder(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (report / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="outside"):
        inside(report / "checkpoints", report / "checkpoints" / "t" / "replica-0", "checkpoints")
    linked_report = tmp_path / "linked"
    linked_report.symlink_to(report)  # a link above the checked folder is the user's choice
    (report / "own").mkdir()
    assert inside(linked_report / "own", linked_report / "own" / "x", "x")


def small_run(tmp_path: Path, name: str, **state_at_step) -> RunRecord:
    """A 2-step record of a tiny model (plus any extra state), spilled for checkpoints."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    recorder = Recorder(SpillWriter(tmp_path / f"{name}.bin", 2**20))
    for step in range(2):
        recorder.record(step, {"model": model, **state_at_step})
    return recorder.close()


def test_checkpoints_through_a_symlink_are_refused_with_a_note(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (tmp_path / "outside").mkdir()
    (report / "checkpoints").symlink_to(tmp_path / "outside")
    pipeline = VerdictPipeline(
        SessionSettings(0), default_specs(2, subprocess=True), checkpoint_dir=report / "checkpoints"
    )
    results = [
        ReplicaResult(NODEID, i, "passed", record=small_run(tmp_path, f"r{i}")) for i in (0, 1)
    ]
    verdict = pipeline.decide(Case(NODEID, NODEID), results)
    assert verdict.status == IDENTICAL
    assert len(verdict.notes) == 2 and "checkpoint not saved: refusing to write" in verdict.notes[0]
    assert list((tmp_path / "outside").iterdir()) == []


def test_distinct_ids_get_distinct_checkpoint_folders(tmp_path):
    ids = ["t.py::test[a b]", "t.py::test[a::b]", "t.py::test[a_b]", "t.py::" + "x" * 300]
    folders = set()
    for nodeid in ids:
        result = ReplicaResult(nodeid, 0, "passed", record=small_run(tmp_path, "ck"))
        manifest = save_last_step(tmp_path / "checkpoints", result, {})
        assert manifest is not None and load_checkpoint(manifest)[1]["test_id"] == nodeid
        folders.add(manifest.parent)
    assert len(folders) == len(ids)


# ----------------------------------------------------------------------------- checkpoint CLI


def run_cli(*args: str) -> tuple[int, str]:
    """``repro-check ...`` in this process (main() is what the console script calls)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(list(args))
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.pop("file_bytes"), "'file_bytes' must be an integer (the size"),
        (lambda m: m.update(file_bytes="12"), "found str '12'"),
        (lambda m: m.update(file_bytes=True), "found bool True"),
        (lambda m: m.update(file_xxh3=7), "'file_xxh3' must be a string"),
        (lambda m: m.update(tensors=[]), "'tensors' must be an object"),
        (lambda m: m["tensors"].update(w="abc"), "tensors['w'] must be a fingerprint list"),
    ],
    ids=["missing", "string", "bool", "digest", "tensors", "fingerprint"],
)
def test_a_bad_manifest_is_exit_2_with_the_field_named(tmp_path, edit, field):
    save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {})
    manifest = tmp_path / "c.json"
    document = json.loads(manifest.read_text())
    edit(document)
    manifest.write_text(json.dumps(document))
    for args in (("verify", "c.safetensors"), ("diff", "c.safetensors", "c.safetensors")):
        code, err = run_cli("checkpoint", *[str(tmp_path / a) if "." in a else a for a in args])
        assert code == 2 and field in err and "Traceback" not in err


def test_an_unexpected_error_is_exit_2_with_a_hint_to_report_it(monkeypatch):
    import repro_check.commands.checkpoint as command

    def broken(args):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(command, "run_verify", broken)
    code, err = run_cli("checkpoint", "verify", "x.safetensors")
    assert code == 2
    assert "internal error: RuntimeError: planted bug" in err and "please report it" in err
    monkeypatch.setenv("REPRO_CHECK_DEBUG", "1")
    with pytest.raises(RuntimeError, match="planted bug"):
        run_cli("checkpoint", "verify", "x.safetensors")


# ----------------------------------------------------------------------------- seeds


def test_seed_names_and_test_ids_no_longer_collide():
    # these two names shared one 32-bit xxh32 hash, and so one seed stream
    assert SeedPlan(5).seed_for("source_23161") != SeedPlan(5).seed_for("source_113779")
    assert root_seed_for_test(0, "source_23161") != root_seed_for_test(0, "source_113779")
    legacy = root_seed_for_test(0, "source_23161", scheme=1)
    assert legacy == root_seed_for_test(0, "source_113779", scheme=1)


def test_an_old_baseline_is_read_and_the_changed_root_seed_named(tmp_path):
    from repro_check.orchestration.baseline import build_baseline, check_baseline

    record = small_run(tmp_path, "b")
    old_seed = root_seed_for_test(0, NODEID, scheme=1)
    document = build_baseline(NODEID, old_seed, 0, record, {}, (1e-5, 1e-3))
    check = check_baseline(document, record, {}, 1e-5, 1e-3, seed=root_seed_for_test(0, NODEID))
    assert "the root seed changed" in check.seed_note and "--repro-update" in check.seed_note
    assert "--repro-seed=0 now gives root seed" in check.seed_note
    other_base = build_baseline(NODEID, root_seed_for_test(3, NODEID), 3, record, {}, (0, 0))
    check = check_baseline(other_base, record, {}, 0, 0, seed=root_seed_for_test(0, NODEID))
    assert check.seed_note.startswith("the seed differs")  # a different --repro-seed
