"""Faults and bad input (issue 10): a broken replica never takes the session down, and nothing
ends in a raw traceback.

Decisions are unit-tested on plain data (fake worker processes, fake clocks); the faults that
only exist for real -- a segfault, os._exit, a hang, SIGTERM of the parent, a full disk -- run in
real processes: one ``pytest --repro`` session holds every replica fault at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from pytest_runs import Finished, clean_env, running

from repro_check.cli import main as cli_main
from repro_check.core.checkpoint import load_checkpoint, save_checkpoint
from repro_check.core.context import RunContext
from repro_check.core.paths import HASH_MARK, UnsafePathError, id_to_name, inside, nodeid_path
from repro_check.core.record import Recorder, RunRecord
from repro_check.core.seeding import SeedPlan, root_seed_for_test
from repro_check.core.spill import SpillWriter
from repro_check.orchestration.case import Case, MarkerError, SessionSettings, parse_marker
from repro_check.orchestration.channel import ChannelWriter
from repro_check.orchestration.checkpoints import save_last_step
from repro_check.orchestration.cluster import check_scheduler
from repro_check.orchestration.executor import (
    EXIT_NO_SPACE,
    ReplicaPool,
    WorkerJob,
    summarize_output,
)
from repro_check.orchestration.investigation import parameter_order_differs
from repro_check.orchestration.launcher import (
    OWNER_FILE,
    WorkerLauncher,
    WorkerSettings,
    remove_stale_folders,
    session_folder,
)
from repro_check.orchestration.replay import VerdictPipeline
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec, default_specs
from repro_check.orchestration.serving import RequestSender, make_request_file
from repro_check.orchestration.verdict import IDENTICAL, STRUCTURAL
from repro_check.reporting.verdicts import failure_message

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


# ----------------------------------------------------------------------------- the replica pool


@dataclass
class ScriptedJob(WorkerJob):
    """A worker without a process: writes its scripted channel lines, then "exits" with
    ``status``; with ``hang`` it waits until killed (as a hung test does)."""

    script: list = field(default_factory=list)
    status: int = 0
    hang: bool = False
    _killed: threading.Event = field(default_factory=threading.Event)

    def run(self) -> int:
        writer = ChannelWriter(self.channel)
        for document in self.script:
            writer.write(document)
        writer.close()
        if self.hang:
            self._killed.wait(30)
            return -9
        return self.status

    def kill(self) -> None:
        self.cancelled = True
        self._killed.set()

    terminate = kill


def passed(nodeid: str, replica: int = 0) -> dict:
    return ReplicaResult(nodeid, replica, "passed", run_id=str(replica)).to_json()


def start(nodeid: str, at: float = 0.0, timeout: float | None = None) -> dict:
    return {"event": "start", "nodeid": nodeid, "run": "0", "time": at, "timeout": timeout}


def step(k: int) -> dict:
    return {"event": "step", "step": k}


def scripted(tmp_path: Path, nodeids, script, status=0, attempt=0, **kw) -> ScriptedJob:
    folder = tmp_path / f"job-{attempt}"
    folder.mkdir()
    return ScriptedJob(
        ReplicaSpec(0, {"PYTHONHASHSEED": "0"}),
        [],
        {},
        str(tmp_path),
        folder / "channel.jsonl",
        folder / "output.txt",
        nodeids=tuple(nodeids),
        attempt=attempt,
        script=script,
        status=status,
        **kw,
    )


class Relauncher:
    """Hands out the next scripted job when the pool restarts a dead worker."""

    def __init__(self, tmp_path: Path, *scripts):
        self.tmp_path, self.scripts, self.calls = tmp_path, list(scripts), []

    def __call__(self, job, done):
        self.calls.append(sorted(done))
        script, status = self.scripts.pop(0)
        left = [n for n in job.nodeids if (n, "0") not in done]
        return scripted(self.tmp_path, left, script, status, attempt=job.attempt + 1)


def test_a_worker_that_dies_in_a_test_fails_only_that_test_and_is_restarted(tmp_path):
    first = scripted(
        tmp_path,
        ["a", "b", "c"],
        [start("a"), step(0), passed("a"), start("b"), step(0), step(1)],
        status=-signal.SIGSEGV,
    )
    relaunch = Relauncher(tmp_path, ([start("c"), passed("c")], 0))
    pool = ReplicaPool([first], relaunch=relaunch)
    pool.start()
    try:
        assert pool.result("a", 0).outcome == "passed"
        crashed = pool.result("b", 0)
        assert pool.result("c", 0).outcome == "passed"  # in the restarted worker
    finally:
        pool.close()
    assert crashed.outcome == "crashed"
    assert "killed by SIGSEGV before finishing this test" in crashed.error
    assert "after recording step 1" in crashed.error
    assert relaunch.calls == [[("a", "0"), ("b", "0")]]


def test_a_hung_test_is_stopped_and_named_with_its_last_step(tmp_path):
    clock = iter(range(0, 10**6, 50)).__next__  # every look at the clock: 50 s later
    job = scripted(tmp_path, ["d"], [start("d", at=0.0, timeout=5.0), step(0), step(1)], hang=True)
    pool = ReplicaPool([job], clock=clock)
    pool.start()
    try:
        result = pool.result("d", 0)
    finally:
        pool.close()
    assert result.outcome == "crashed"
    assert result.error.startswith("timed out after 5 s in replica 0 at step 1 (last recorded)")
    assert "--repro-timeout=SECONDS" in result.error


def test_the_worker_watchdog_report_names_the_test_frame(tmp_path):
    report = (
        "Timeout (0:00:03)!\nThread 0x1 (most recent call first):\n"
        '  File "/x/threading.py", line 1 in run\n\n'
        "Thread 0x2 (most recent call first):\n"
        '  File "/t/test_x.py", line 39 in test_d_hangs\n'
        f'  File "/v/site-packages{os.sep}_pytest{os.sep}python.py", line 187 in call\n'
    )
    job = scripted(tmp_path, ["d"], [start("d", timeout=3.0), step(2)], status=1)
    job.timeout_file = tmp_path / "timeout.txt"
    job.timeout_file.write_text(report)
    pool = ReplicaPool([job])
    pool.start()
    try:
        error = pool.result("d", 0).error
    finally:
        pool.close()
    assert error.startswith("timed out after 3 s in replica 0 at step 2 (last recorded)")
    assert "line 39 in test_d_hangs\n  ... 1 more frames" in error
    assert "threading.py" not in error


def test_a_fatal_error_is_shown_as_where_it_happened():
    text = "\n".join(
        [
            "some test output",
            "Fatal Python error: Segmentation fault",
            "",
            "Current thread 0x1 (most recent call first):",
            '  File "/t/test_x.py", line 25 in test_b_segfault',
            f'  File "/v{os.sep}pluggy{os.sep}_callers.py", line 1 in call',
            "",
            "Extension modules: torch._C (total: 1)",
        ]
    )
    shown = summarize_output(text)
    assert shown[:2] == ["some test output", "Fatal Python error: Segmentation fault"]
    assert shown[-2:] == [
        '  File "/t/test_x.py", line 25 in test_b_segfault',
        "  ... 1 more frames",
    ]


def test_a_test_the_worker_did_not_collect_says_so(tmp_path):
    job = scripted(tmp_path, ["x[1]"], [{"event": "collected", "missing": ["x[1]"], "count": 0}], 5)
    pool = ReplicaPool([job])
    pool.start()
    try:
        result = pool.result("x[1]", 0)
    finally:
        pool.close()
    assert result.outcome == "crashed"
    assert "replica 0 did not collect this test" in result.error
    assert "it collected no test at all" in result.error


def test_no_space_stops_the_worker_without_restarts(tmp_path):
    job = scripted(tmp_path, ["a", "b"], [start("a")], status=EXIT_NO_SPACE)
    relaunch = Relauncher(tmp_path)
    pool = ReplicaPool([job], relaunch=relaunch)
    pool.start()
    try:
        first, second = pool.result("a", 0), pool.result("b", 0)
    finally:
        pool.close()
    assert first.outcome == second.outcome == "crashed" and relaunch.calls == []
    assert "no space left on the device" in second.error


def test_a_worker_crashing_in_every_test_is_not_restarted_forever(tmp_path):
    names = ["t0", "t1", "t2", "t3", "t4"]
    relaunch = Relauncher(
        tmp_path, *[([start(n)], -signal.SIGABRT) for n in names[1:3]], ([start("t3")], 0)
    )
    pool = ReplicaPool(
        [scripted(tmp_path, names, [start("t0")], -signal.SIGABRT)], relaunch=relaunch
    )
    pool.start()
    try:
        results = [pool.result(n, 0) for n in names]
    finally:
        pool.close()
    assert len(relaunch.calls) == 2  # after t0 and t1; t2 is the third crash in a row
    assert "crashed in 3 tests in a row" in results[3].error


@dataclass
class ServingJob(WorkerJob):
    """A serving worker without a process (pytest-xdist): runs each test appended to its
    request file; dies (SIGSEGV) in ``crash_on``; holds ``hold`` until ``release`` is set."""

    crash_on: str = ""
    hold: str = ""
    release: threading.Event = field(default_factory=threading.Event)
    ran: list = field(default_factory=list)
    collected: tuple = ()  # the tests it collects (default: all it holds)

    def run(self) -> int:
        from repro_check.orchestration.serving import follow_requests

        writer = ChannelWriter(self.channel)
        run = str(self.spec.index)
        have = set(self.collected or self.nodeids)
        missing = sorted(set(self.nodeids) - have)
        count = len(have & set(self.nodeids))
        writer.write({"event": "collected", "missing": missing, "count": count})
        try:
            for nodeid in follow_requests(self.requests, poll_s=0.001):
                if nodeid not in have:
                    continue  # as the real worker: the parent knows it from "collected"
                self.ran.append(nodeid)
                writer.write({"event": "start", "nodeid": nodeid, "run": run, "time": 0.0})
                if nodeid == self.crash_on:
                    return -signal.SIGSEGV
                if nodeid == self.hold:
                    self.release.wait(30)
                writer.write(passed(nodeid, self.spec.index))
            return 0
        finally:
            writer.close()

    def kill(self) -> None:
        self.cancelled = True
        self.release.set()
        sender = RequestSender(self.requests)  # the pool's may be closed by now
        sender.stop()
        sender.close()

    terminate = kill


def serving(tmp_path: Path, index: int, nodeids, attempt: int = 0, **kw) -> ServingJob:
    folder = tmp_path / f"serve-{index}-{attempt}"
    folder.mkdir()
    make_request_file(folder / "requests")
    return ServingJob(
        ReplicaSpec(index, {"PYTHONHASHSEED": str(index)}),
        [],
        {},
        str(tmp_path),
        folder / "channel.jsonl",
        folder / "output.txt",
        nodeids=tuple(nodeids),
        attempt=attempt,
        requests=folder / "requests",
        **kw,
    )


def test_serving_workers_run_tests_on_request_a_limited_number_at_once(tmp_path):
    first = serving(tmp_path, 0, ["a", "b"], hold="a")
    second = serving(tmp_path, 1, ["a", "b"])
    pool = ReplicaPool([first, second], concurrency=1)
    pool.start()
    try:
        pool.request("a")
        deadline = time.monotonic() + 10
        while not first.ran and time.monotonic() < deadline:
            time.sleep(0.001)
        assert first.ran == ["a"]
        time.sleep(0.05)
        assert not second.ran  # one at a time: replica 1 waits its turn
        first.release.set()
        assert [pool.result("a", i).outcome for i in (0, 1)] == ["passed", "passed"]
        assert pool.result("b", 1).outcome == "passed"  # asked for out of order: still run
        assert pool.result("b", 0).outcome == "passed"
    finally:
        pool.close()
    assert first.ran == ["a", "b"] and second.ran == ["a", "b"]
    assert all(job.process is None and job.cancelled for job in (first, second))


def test_a_restarted_serving_worker_is_asked_again_for_what_the_dead_one_had_queued(tmp_path):
    first = serving(tmp_path, 0, ["a", "b", "c"], crash_on="b")
    restarted: list[ServingJob] = []

    def relaunch(job, done):
        restarted.append(serving(tmp_path, 0, job.nodeids, attempt=job.attempt + 1))
        return restarted[-1]

    pool = ReplicaPool([first], relaunch=relaunch, concurrency=3)
    pool.start()
    try:
        for nodeid in "abc":
            pool.request(nodeid)  # b and c are queued in the worker that dies in b
        assert pool.result("a", 0).outcome == "passed"
        crashed = pool.result("b", 0)
        assert pool.result("c", 0).outcome == "passed"
    finally:
        pool.close()
    assert crashed.outcome == "crashed" and "killed by SIGSEGV" in crashed.error
    assert first.ran == ["a", "b"]
    assert [job.ran for job in restarted] == [["c"]]  # c again, b not: it failed already


def in_time(call, timeout: float = 20.0):
    """``call()``'s value, or a failure if it does not return in time (a hang)."""
    box: list = []
    worker = threading.Thread(target=lambda: box.append(call()), daemon=True)
    worker.start()
    worker.join(timeout)
    assert box, f"no result after {timeout} s: the pool hangs"
    return box[0]


def test_a_serving_worker_is_not_stopped_while_a_test_waits_for_it(tmp_path):
    first = serving(tmp_path, 0, ["s", "t"])
    second = serving(tmp_path, 1, ["s", "t"])
    pool = ReplicaPool([first, second], concurrency=1)
    pool.start()
    try:
        assert pool.result("s", 0).outcome == "passed"
        # replica 1's result for s is never read (the verdict needed no more), then t comes
        outcomes = in_time(lambda: [pool.result("t", i).outcome for i in (0, 1)])
    finally:
        pool.close()
    assert outcomes == ["passed", "passed"]
    assert second.ran == ["s", "t"]


def test_a_serving_worker_that_collected_nothing_is_answered_not_waited_for(tmp_path):
    job = serving(tmp_path, 0, ["a"], collected=("elsewhere",))
    pool = ReplicaPool([job], concurrency=1)
    pool.start()
    try:
        result = in_time(lambda: pool.result("a", 0))
    finally:
        pool.close()
    assert result.outcome == "crashed" and "did not collect this test" in result.error


def test_a_test_answered_without_the_worker_is_never_sent_to_it(tmp_path):
    first = serving(tmp_path, 0, ["s", "m", "u"], collected=("s", "u"))
    second = serving(tmp_path, 1, ["s", "m", "u"])
    pool = ReplicaPool([first, second], concurrency=1)
    pool.start()
    try:
        assert pool.result("s", 0).outcome == "passed"  # (s, 1) is never read
        missing = in_time(lambda: pool.result("m", 0))
        outcomes = in_time(lambda: [pool.result("u", i).outcome for i in (0, 1)])
    finally:
        pool.close()
    assert "did not collect this test" in missing.error
    assert outcomes == ["passed", "passed"]
    assert first.ran == ["s", "u"]


def test_a_serving_worker_dying_frees_the_turn_another_waits_for(tmp_path):
    first = serving(tmp_path, 0, ["a"], crash_on="a")
    second = serving(tmp_path, 1, ["a"])
    pool = ReplicaPool([first, second], concurrency=1)  # no relaunch: it stays dead
    pool.start()
    try:
        assert pool.result("a", 1).outcome == "passed"  # waits for replica 0's turn to end
        crashed = pool.result("a", 0)
    finally:
        pool.close()
    assert crashed.outcome == "crashed" and "killed by SIGSEGV" in crashed.error


# ----------------------------------------------------------------------------- real faults

FAULTS_FILE = "test_replica_faults.py"
FAULTS = """
import ctypes
import os
import time

import pytest
import torch


def train(repro):
    model = torch.nn.Linear(3, 2)
    for step in range(repro.steps):
        repro.record(step, model=model)


@pytest.mark.repro(steps=2)
def test_a_first(repro):
    train(repro)


@pytest.mark.repro(steps=2)
def test_b_segfault(repro):
    train(repro)
    if repro.replica == 1:
        ctypes.string_at(0)  # a real segmentation fault


@pytest.mark.repro(steps=2)
def test_c_after_the_crash(repro):
    train(repro)


@pytest.mark.repro(steps=3, timeout=2)
def test_d_hangs(repro):
    model = torch.nn.Linear(3, 2)
    repro.record(0, model=model)
    repro.record(1, model=model)
    if repro.replica == 0:
        time.sleep(120)
    repro.record(2, model=model)


@pytest.mark.parametrize("x", [1], ids=[f"pid{os.getpid()}"])  # differs in every process
@pytest.mark.repro(steps=1)
def test_e_id_of_this_process(repro, x):
    train(repro)


@pytest.mark.skip(reason="not this time")
@pytest.mark.repro(steps=1)
def test_f_skipped(repro):
    train(repro)


@pytest.mark.repro(steps=2)
def test_g_last(repro):
    train(repro)


@pytest.mark.repro(steps=2)
def test_h_quantized_and_empty(repro):
    q = torch.quantize_per_tensor(torch.linspace(-1, 1, 4), 0.1, 3, torch.qint8)
    for step in range(repro.steps):
        repro.record(step, q=q, empty=torch.empty(0, 5))
"""


def run_pytest(path: Path, *args: str, env: dict | None = None) -> Finished:
    process = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=path,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Finished(process.returncode, process.stdout + process.stderr, path / "reports")


@pytest.fixture(scope="module")
def faults_session(tmp_path_factory) -> Finished:
    """One ``pytest --repro`` session in which replicas segfault, hang and fail to collect."""
    path = tmp_path_factory.mktemp("faults")
    (path / FAULTS_FILE).write_text(FAULTS)
    stale = path / "repro_baselines" / "test_replica_faults"
    stale.mkdir(parents=True)
    for name in ("test_f_skipped", "test_gone"):
        (stale / f"{name}.json").write_text("{}")
    return run_pytest(
        path,
        "--repro",
        "--repro-update",
        "--repro-save-checkpoints",
        "--repro-jobs=2",
        "-p",
        "no:cacheprovider",
        FAULTS_FILE,
    )


def test_a_segfault_fails_only_its_test_and_the_session_goes_on(faults_session):
    tests = faults_session.tests()
    text = faults_session.failure("test_b_segfault")
    assert "replica 1 (PYTHONHASHSEED=1) did not finish this test" in text
    assert "killed by SIGSEGV before finishing this test" in text
    assert "Fatal Python error: Segmentation fault" in text
    assert f'{FAULTS_FILE}", line 25 in test_b_segfault' in text  # where, not pytest frames
    for name in ("test_a_first", "test_c_after_the_crash", "test_g_last"):
        assert tests[f"{FAULTS_FILE}::{name}"]["status"] == "identical", name
    assert tests[f"{FAULTS_FILE}::test_b_segfault"]["crashed"]


def test_a_hang_is_stopped_at_its_time_limit(faults_session):
    text = faults_session.failure("test_d_hangs")
    assert "timed out after 2 s in replica 0 at step 1 (last recorded)" in text
    assert "in test_d_hangs" in text  # the stack of the hung test


def test_a_test_the_replicas_cannot_collect_says_so(faults_session):
    nodeid = next(n for n in faults_session.tests() if "test_e_id_of_this_process" in n)
    text = faults_session.failure(nodeid.split("::")[1])
    assert "replica 0 did not collect this test" in text


def test_quantized_and_empty_tensors_work_end_to_end(faults_session):
    test = faults_session.tests()[f"{FAULTS_FILE}::test_h_quantized_and_empty"]
    assert (test["status"], test["baseline"]["action"]) == ("identical", "written")
    folder = faults_session.report_dir / "checkpoints" / "test_replica_faults"
    for replica in (0, 1):
        manifest = folder / "test_h_quantized_and_empty" / f"replica-{replica}" / "step-1.json"
        tensors, _ = load_checkpoint(manifest)
        assert tensors["empty"].shape == (0, 5) and tensors["q"].dtype == torch.int8


def test_a_skipped_test_keeps_its_baseline(faults_session):
    unused = [line for line in faults_session.output.splitlines() if "unused baseline" in line]
    assert len(unused) == 1 and unused[0].endswith("test_gone.json"), unused


INPROCESS_EXIT = """
import os

import pytest
import torch


@pytest.mark.repro(steps=1)
def test_ok(repro):
    repro.record(0, x=torch.ones(2))


@pytest.mark.repro(steps=1)
def test_exits(repro):
    repro.record(0, x=torch.ones(2))
    if repro.replica == 1:
        os._exit(3)
"""


def test_in_process_a_test_that_exits_the_interpreter_ends_the_session_with_a_report(tmp_path):
    (tmp_path / "test_exit.py").write_text(INPROCESS_EXIT)
    done = run_pytest(
        tmp_path,
        "--repro",
        "--repro-mode=inprocess",
        "--repro-baseline=off",
        "-p",
        "no:cacheprovider",
    )
    assert done.ret == 3, done.output
    assert (
        "repro-check: test_exit.py::test_exits: the test called os._exit(3) in in-process "
        "replica 1, which ends the interpreter" in done.output
    )
    assert "--repro-mode=subprocess" in done.output
    assert "cannot show hash randomisation" in done.output  # the header says what it cannot see
    tests = done.tests()
    assert tests["test_exit.py::test_ok"]["status"] == "identical"
    assert tests["test_exit.py::test_exits"]["status"] == "error"
    assert tests["test_exit.py::test_exits"]["crashed"]


def test_a_full_disk_under_the_channel_is_named_not_blamed_on_the_test(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\n\n@pytest.mark.repro(steps=1)\ndef test_x(repro):\n    pass\n"
    )
    launcher = WorkerLauncher(WorkerSettings(tmp_path, tmp_path, 0, 0), tmpdir=tmp_path / "w")
    job = launcher.job(["test_x.py::test_x"], ReplicaSpec(0), "full")
    spec_path = job.channel.parent / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec["channel"] = "/dev/full"  # every write: ENOSPC, as on a full disk
    spec_path.write_text(json.dumps(spec))
    job.env = clean_env(**{k: v for k, v in job.env.items() if k == "PYTHONPATH"})
    assert job.run() == EXIT_NO_SPACE
    assert "no space left in /dev while writing the results channel (full)" in job.output_tail()


ORPHANS = """
import os
import time

import pytest


@pytest.mark.repro(steps=1)
def test_sleeps(repro):
    path = os.environ["PID_FILE"]
    with open(path + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_parent_leaves_no_workers_and_no_folders(tmp_path):
    (tmp_path / "test_orphans.py").write_text(ORPHANS)
    parents = {}
    for signum in (signal.SIGTERM, signal.SIGKILL):
        tmp = tmp_path / f"tmp-{signum.name}"
        tmp.mkdir()
        env = clean_env(TMPDIR=str(tmp), PID_FILE=str(tmp_path / f"{signum.name}.pid"))
        parents[signum] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "--repro", "--repro-runs=1", "-p", "no:cacheprovider"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    pid_files = {signum: tmp_path / f"{signum.name}.pid" for signum in parents}
    deadline = time.monotonic() + 120
    while not all(f.exists() for f in pid_files.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = {signum: int(f.read_text()) for signum, f in pid_files.items()}
    assert all(running(pid) for pid in workers.values())
    for signum, parent in parents.items():
        parent.send_signal(signum)
    for signum, parent in parents.items():
        assert parent.wait(timeout=30) == -signum
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in workers.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(pid) for pid in workers.values())  # no orphans
    assert list((tmp_path / "tmp-SIGTERM").glob("repro-check-*")) == []  # cleaned on the way out
    left = list((tmp_path / "tmp-SIGKILL").glob("repro-check-*"))  # SIGKILL: nothing can run
    assert len(left) == 1
    fresh = session_folder(str(tmp_path / "tmp-SIGKILL"))  # the next session cleans it
    assert list((tmp_path / "tmp-SIGKILL").glob("repro-check-*")) == [fresh]


def test_stale_folders_are_removed_only_when_their_owner_is_gone(tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    for name, pid in (("repro-check-dead", dead_pid), ("repro-check-alive", os.getpid())):
        (tmp_path / name).mkdir()
        (tmp_path / name / OWNER_FILE).write_text(str(pid))
    (tmp_path / "repro-check-foreign").mkdir()  # no owner file: not ours to remove
    assert remove_stale_folders(tmp_path) == [tmp_path / "repro-check-dead"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "repro-check-alive",
        "repro-check-foreign",
    ]


# ----------------------------------------------------------------------------- diagnosis


def adam_run(tmp_path: Path, name: str, reverse: bool = False, extra: str = "") -> RunRecord:
    """Three Adam steps; ``reverse`` hands the optimizer the parameters in reverse order (as
    building it from a set may); ``extra`` records one more key (a structural difference)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params[::-1] if reverse else params, lr=0.1)
    data = torch.Generator().manual_seed(1)
    recorder = Recorder(SpillWriter(tmp_path / f"{name}.bin", 2**20))
    for step in range(3):
        loss = model(torch.randn(8, 4, generator=data)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = {"model": model, "optimizer": optimizer, "loss": loss}
        recorder.record(step, {**state, **({extra: torch.ones(1)} if extra else {})})
    return recorder.close()


class ControlRerunner:
    """The control rerun reproduces replica 0 (only process state differed)."""

    def __init__(self, record: RunRecord):
        self.record, self.calls = record, []

    def __call__(self, nodeid, originals, window, attempt):
        self.calls.append((len(originals), window))
        return [ReplicaResult(nodeid, 0, "passed", record=self.record)]


def decide(tmp_path, reference, other, rerunner):
    pipeline = VerdictPipeline(
        SessionSettings(0), default_specs(2, subprocess=True), rerunner=rerunner
    )
    results = [
        ReplicaResult(NODEID, 0, "passed", record=reference),
        ReplicaResult(NODEID, 1, "passed", record=other),
    ]
    return pipeline.decide(Case(NODEID, NODEID), results)


def test_a_structural_mismatch_gets_the_control_replica_and_its_diagnosis(tmp_path):
    reference = adam_run(tmp_path, "a")
    rerun = ControlRerunner(adam_run(tmp_path, "c"))
    verdict = decide(tmp_path, reference, adam_run(tmp_path, "b", extra="vocab_word"), rerun)
    assert verdict.status == STRUCTURAL and rerun.calls == [(1, None)]
    assert verdict.diagnosis.startswith("only process-level state differs")
    assert "PYTHONHASHSEED" in verdict.diagnosis and "sorted(" in verdict.diagnosis
    assert "did different work" in failure_message(verdict)


def test_only_the_optimizer_indexing_differing_is_named_parameter_order(tmp_path):
    reference, swapped = adam_run(tmp_path, "a"), adam_run(tmp_path, "b", reverse=True)
    assert parameter_order_differs(reference, swapped)
    assert not parameter_order_differs(reference, adam_run(tmp_path, "c", extra="x"))
    verdict = decide(tmp_path, reference, swapped, ControlRerunner(adam_run(tmp_path, "d")))
    assert verdict.status == STRUCTURAL  # exp_avg of the weight (2, 4) vs of the bias (2,)
    assert verdict.diagnosis.startswith("parameter order differs: every model weight")
    assert "PYTHONHASHSEED" in verdict.diagnosis  # and the control says it is process state
    message = failure_message(verdict)
    assert "did different work" not in message and "parameter order differs" in message


# ----------------------------------------------------------------------------- bad input to record


class WithExtraState(torch.nn.Module):
    def __init__(self, extra):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.extra = extra

    def get_extra_state(self):
        return self.extra

    def set_extra_state(self, state):
        self.extra = state


def lbfgs() -> torch.optim.LBFGS:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), history_size=4)

    def closure():
        optimizer.zero_grad()
        loss = model(torch.ones(3, 2)).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return optimizer


def quantized_linear() -> torch.nn.Module:
    model = torch.ao.nn.quantized.Linear(3, 2)  # its weight starts as uninitialised memory
    weight = torch.quantize_per_tensor(torch.ones(2, 3), 0.5, 0, torch.qint8)
    model.set_weight_bias(weight, torch.zeros(2))
    return model


def unusual_state() -> dict:
    """Values record() refused or mangled before: all recorded now, with their keys."""
    torch.manual_seed(0)
    return {
        "q": torch.quantize_per_tensor(torch.randn(4), 0.1, 3, torch.qint8),
        "qc": torch.quantize_per_channel(
            torch.randn(2, 3), torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), 0, torch.qint8
        ),
        "empty": torch.empty(0, 5),
        "f8": torch.linspace(-2, 2, 6).to(torch.float8_e4m3fn),
        "model": WithExtraState({"count": torch.tensor(3)}),
        "qmodel": quantized_linear(),
        "optimizer": lbfgs(),
    }


def test_unusual_values_are_recorded_and_work_end_to_end(tmp_path):
    from repro_check.orchestration.baseline import build_baseline, check_baseline

    records = []
    for replica in range(2):
        recorder = Recorder(SpillWriter(tmp_path / f"u{replica}.bin", 2**20))
        recorder.record(0, unusual_state())
        records.append(recorder.close())
    keys = set(records[0].steps[0].entries)
    assert {"q", "q.q_scale", "q.q_zero_point", "qc.q_scales", "qc.q_axis", "empty"} <= keys
    assert {"model._extra_state.count", "qmodel._packed_params.dtype"} <= keys
    assert "optimizer.state.0.al.0" in keys  # LBFGS: filled entries kept, unset (None) left out
    results = [ReplicaResult(NODEID, i, "passed", record=r) for i, r in enumerate(records)]
    pipeline = VerdictPipeline(
        SessionSettings(0),
        default_specs(2, subprocess=True),
        checkpoint_dir=tmp_path / "checkpoints",
    )
    assert pipeline.decide(Case(NODEID, NODEID), results).status == IDENTICAL
    manifest = next((tmp_path / "checkpoints").rglob("step-0.json"))
    tensors, _ = load_checkpoint(manifest)
    assert tensors["empty"].shape == (0, 5) and tensors["q"].dtype == torch.int8
    document = build_baseline(NODEID, 1, 0, records[0], {}, (1e-5, 1e-3))
    assert check_baseline(document, records[1], {}, 1e-5, 1e-3, seed=1).status == "match"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (lambda: torch.empty(3, device="meta"), "'x' is a meta tensor"),
        (
            lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
            "'x' is a nested tensor (no single shape); record its components (x.unbind())",
        ),
        (lambda: torch.eye(2).to_sparse(), "'x' is a torch.sparse_coo tensor; record .to_dense()"),
        (lambda: 2**70, "'metric.x' is the integer 1180591620717411303424, which does not fit"),
        (
            lambda: WithExtraState("v1"),
            "cannot record 'x._extra_state' (what the module's get_extra_state() returned): "
            "a builtins.str",
        ),
    ],
    ids=["meta", "nested", "sparse", "int128", "extra-state"],
)
def test_values_that_cannot_be_compared_are_refused_naming_the_key(tmp_path, value, message):
    made = value()
    with pytest.raises((TypeError, ValueError)) as info:
        Recorder(SpillWriter(tmp_path / "x.bin", 2**20)).record(0, {"x": made})
    assert message in str(info.value)


def test_steps_out_of_order_repeated_or_negative_are_refused_with_their_numbers():
    for recorder in (Recorder(), None):  # compared runs, and plain pytest runs alike
        context = RunContext(SeedPlan(0), recorder=recorder)
        context.record(0, loss=1.0)
        context.record(5, loss=1.0)
        with pytest.raises(ValueError, match=r"step=5\) after step 5: each step is recorded once"):
            context.record(5, loss=1.0)
        with pytest.raises(ValueError, match=r"step=3\) after step 5: steps must increase"):
            context.record(3, loss=1.0)
        with pytest.raises(ValueError, match=r"step=-1\): steps must be >= 0"):
            RunContext(SeedPlan(0), recorder=recorder).record(-1, loss=1.0)


# ----------------------------------------------------------------------------- options


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_dask_scheduler_is_a_usage_error_before_any_work(tmp_path):
    address = f"tcp://127.0.0.1:{closed_port()}"
    with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler"):
        check_scheduler(address)
    with pytest.raises(ConnectionError, match="expected HOST:PORT"):
        check_scheduler("tcp://scheduler-without-port")
    (tmp_path / "test_never.py").write_text("def test_never():\n    raise SystemExit(99)\n")
    args = ["--repro-sensitivity", "--repro-executor=dask", f"--repro-dask-scheduler={address}"]
    done = run_pytest(tmp_path, *args, "-p", "no:cacheprovider")
    assert done.ret == pytest.ExitCode.USAGE_ERROR, done.output
    assert f"--repro-dask-scheduler={address}: cannot reach the Dask scheduler" in done.output


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": -1}, "timeout must be >= 0"),
        ({"timeout": "60"}, "timeout must be a number of seconds"),
        ({"timeout": True}, "timeout must be a number of seconds"),
        ({"timeout": float("nan")}, "timeout must be a number of seconds"),
    ],
)
def test_a_bad_marker_timeout_names_the_test(kwargs, message):
    with pytest.raises(MarkerError, match=message) as info:
        parse_marker("t.py::test_x", (), kwargs)
    assert "t.py::test_x" in str(info.value)
    assert parse_marker("t.py::test_x", (), {"timeout": 90}).timeout == 90.0


def test_time_limits_reach_the_worker_spec(tmp_path):
    settings = WorkerSettings(tmp_path, tmp_path, 0, 0, timeout=30.0)
    launcher = WorkerLauncher(settings, tmpdir=tmp_path / "w", timeouts={"b": 5.0, "c": 0.0})
    job = launcher.job(["a", "b", "c"], ReplicaSpec(0), "limits")
    spec = json.loads((job.channel.parent / "spec.json").read_text())
    assert spec["timeouts"] == {"a": 30.0, "b": 5.0, "c": None}  # 0: no limit
