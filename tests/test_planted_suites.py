"""The real suites, end to end: the planted failures are caught where they were planted, the
reference suites are reproducible, and without ``--repro`` the planted files are not collected.

The sessions are fresh processes started from the repository root, exactly as a user runs them,
shared with test_localization.py (tests/suite_sessions.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pytest_runs import Finished

ROOT = Path(__file__).resolve().parent.parent
PLANTED = ROOT / "suites" / "nondeterministic"

UNSEEDED = "suites/nondeterministic/test_unseeded_numpy.py::test_unseeded_numpy_data"
INDEX_PUT = "suites/nondeterministic/test_index_put_accumulate.py::test_index_put_accumulate"
LATE = "suites/nondeterministic/test_late_divergence.py::test_divergence_after_first_epoch"
SET_ITERATION = "suites/nondeterministic/test_set_iteration.py::test_vocabulary_from_set"
REFERENCE_TESTS = {
    "suites/test_cnn.py::test_cnn_augmented_workers",
    "suites/test_lstm.py::test_lstm_sgd[16]",
    "suites/test_lstm.py::test_lstm_sgd[32]",
    "suites/test_mlp.py::test_mlp_adam",
    "suites/test_transformer.py::test_transformer_dropout",
}


#: The planted suites this file checks, named on the command line (the folder holds more).
PLANTED_FILES = [
    "suites/nondeterministic/test_unseeded_numpy.py",
    "suites/nondeterministic/test_index_put_accumulate.py",
    "suites/nondeterministic/test_late_divergence.py",
    "suites/nondeterministic/test_set_iteration.py",
]


def epoch_steps() -> int:
    """EPOCH_STEPS of the late-divergence suite (read, not imported: it is a test module)."""
    source = (PLANTED / "test_late_divergence.py").read_text()
    return int(re.search(r"^EPOCH_STEPS = (\d+)", source, re.MULTILINE).group(1))


@pytest.fixture(scope="module")
def sessions(suite_sessions) -> dict[str, Finished]:
    """The shared sessions (tests/suite_sessions.py): the planted suites run once for this file
    and test_localization.py."""
    return suite_sessions


# ----------------------------------------------------------------------------- planted


def test_every_planted_test_fails(sessions):
    planted = sessions["planted"]
    assert planted.ret == pytest.ExitCode.TESTS_FAILED
    tests = planted.tests()
    these = {UNSEEDED, INDEX_PUT, LATE, SET_ITERATION}  # not thread races: they always part
    assert these <= set(tests)
    assert all(tests[nodeid]["status"] == "diverged" for nodeid in these)
    totals = planted.report()["totals"]
    assert totals["tests"] == len(tests) and totals["failed"] >= len(these)


def test_unseeded_numpy_diverges_at_step_0(sessions):
    planted = sessions["planted"]
    divergence = planted.tests()[UNSEEDED]["divergence"]
    assert (divergence["step"], divergence["key"]) == (0, "model.fc1.weight")
    text = planted.failure("test_unseeded_numpy_data")
    assert "first divergence: step 0, model.fc1.weight (float32, shape (64, 20))" in text
    assert "the nondeterminism is inside the run" in text
    assert (
        text.strip().splitlines()[-1].strip()
        == f"pytest --repro --repro-seed=0 --repro-runs=2 {UNSEEDED}"
    )


def test_index_put_accumulate_diverges_in_the_model(sessions):
    # thread scheduling decides when (and in which tensor) the bits first differ
    planted = sessions["planted"]
    test = planted.tests()[INDEX_PUT]
    divergence = test["divergence"]
    assert 0 <= divergence["step"] < test["steps"] == 5
    assert divergence["key"].startswith("model.")
    assert "the nondeterminism is inside the run" in test["diagnosis"]
    assert f"first divergence: step {divergence['step']}, {divergence['key']}" in planted.failure(
        "test_index_put_accumulate"
    )


def test_late_divergence_appears_after_the_first_epoch(sessions):
    planted = sessions["planted"]
    divergence = planted.tests()[LATE]["divergence"]
    assert epoch_steps() == 4
    assert (divergence["step"], divergence["key"]) == (epoch_steps(), "model.fc1.weight")
    growth = divergence["growth"]
    assert growth[0]["step"] == epoch_steps() and growth[-1]["step"] == 9  # steps=10
    assert "first divergence: step 4, model.fc1.weight" in planted.failure(
        "test_divergence_after_first_epoch"
    )


def test_set_iteration_is_diagnosed_as_process_level_state(sessions):
    planted = sessions["planted"]
    test = planted.tests()[SET_ITERATION]
    assert test["divergence"]["step"] == 0
    assert test["diagnosis"].startswith("only process-level state differs")
    assert "PYTHONHASHSEED" in test["diagnosis"]
    text = planted.failure("test_vocabulary_from_set")
    assert "first divergence: step 0," in text
    assert "diagnosis: only process-level state differs" in text


def test_planted_summary_table(sessions):
    output = sessions["planted"].output
    summary = output.split("repro summary", 1)[1]
    assert re.search(r"\n\d+ tests: \d+ not reproducible", summary)
    assert re.search(re.escape(UNSEEDED) + r" .* diverged .*step 0: model\.fc1\.weight", summary)
    assert re.search(re.escape(LATE) + r" .* diverged .*step 4: model\.fc1\.weight", summary)


# ----------------------------------------------------------------------------- reference


def test_reference_suites_are_reproducible(sessions):
    # the five reference suites at least (the folder may gain more marked tests)
    reference = sessions["reference"]
    assert reference.ret == pytest.ExitCode.OK, reference.output
    tests = reference.tests()
    assert REFERENCE_TESTS <= set(tests)
    allowed = "suites/test_allowed_nondeterminism.py::test_embedding_bag_accumulation"
    assert {t["status"] for n, t in tests.items() if n != allowed} == {"identical"}
    # the committed baselines still match bit for bit: recording (fingerprints, statistics)
    # and the replicas' scheduling may get faster, never different (issue 12)
    modes = {n: (t.get("baseline") or {}).get("mode") for n, t in tests.items() if n != allowed}
    assert set(modes.values()) == {"bitwise"}, modes
    assert "unused baseline" not in reference.output  # every committed baseline has its test
    if allowed in tests:  # known nondeterminism, accepted with its rationale and tolerance
        assert tests[allowed]["status"] == "allowed"
        assert "aten::index_put" in tests[allowed]["allowed_nondeterminism"]
    assert all(test["steps"] > 0 and test["keys"] > 0 for test in tests.values())
    assert re.search(rf"\b{len(tests)} passed in\b", reference.output)
    counts = reference.output.split("repro summary", 1)[1]
    assert re.search(
        rf"\n{len(tests)} tests: \d+ reproducible(, 1 reproducible within an allowance)?;", counts
    )
    assert "suites/nondeterministic/" not in reference.output


def test_plain_run_is_green_and_collects_no_planted_test(sessions):
    plain = sessions["plain"]
    assert plain.ret == pytest.ExitCode.OK, plain.output
    assert re.search(r"\b\d+ passed in\b", plain.output)
    assert not re.search(r"\b(failed|error)\b", plain.output.splitlines()[-1])
    for nodeid in REFERENCE_TESTS:
        assert f"{nodeid} PASSED" in plain.output
    assert "suites/nondeterministic/" not in plain.output
    assert "repro summary" not in plain.output


def test_planted_folder_is_collected_when_named(sessions):
    collected = sessions["named_folder"]
    assert collected.ret == pytest.ExitCode.OK, collected.output
    for path in PLANTED_FILES:
        assert f"{path}::" in collected.output
