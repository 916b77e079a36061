"""Warm interpreters (repro_check.orchestration.warm): started before collection, handed a
worker's pytest command line later. A warm start must be indistinguishable from a fresh
``python -m pytest`` to the test it runs, must only ever be taken by a worker whose
environment it has, and must never outlive the session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from pytest_runs import clean_env, linear_sgd_test, running

from repro_check.orchestration.launcher import PACKAGE_PARENT, WorkerLauncher, WorkerSettings
from repro_check.orchestration.processes import process_env, worker_env
from repro_check.orchestration.replicas import ReplicaSpec
from repro_check.orchestration.warm import WarmInterpreter, WarmStock

PROBE = """
import json, os, sys


def test_probe():
    main = sys.modules["__main__"]
    seen = {
        "argv0": sys.argv[0],
        "argv": sys.argv[1:],
        "path": sys.path,
        "cwd": os.getcwd(),
        "main_spec": getattr(main.__spec__, "name", None),
        "hash": hash("repro-check"),
        "stdin": os.read(0, 16).decode(),  # fd 0 itself: pytest replaces sys.stdin
        "parent_env": os.environ.get("PROBE_MARK"),
    }
    with open(os.environ["PROBE_OUT"], "w") as handle:
        json.dump(seen, handle)
"""


def pytest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args]


def exits_within(process: subprocess.Popen, seconds: float) -> int | None:
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def test_a_warm_start_looks_to_the_test_exactly_like_python_dash_m_pytest(tmp_path):
    (tmp_path / "test_probe.py").write_text(PROBE)
    command = pytest_command("test_probe.py", "-q", "-p", "no:cacheprovider")
    seen = {}
    for how in ("fresh", "warm"):
        env = clean_env(PYTHONHASHSEED="7", PROBE_MARK="x", PROBE_OUT=str(tmp_path / how))
        if how == "fresh":
            process = subprocess.Popen(
                command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
            )
        else:
            stock = WarmStock()
            stock.add(sys.executable, env, str(tmp_path))
            warm = stock.reserve(command, env, str(tmp_path))
            assert warm is not None and len(stock) == 0
            process = warm.launch(command)
            assert process is not None
        output = process.communicate(timeout=120)[0].decode()
        assert process.returncode == 0, output
        seen[how] = json.loads((tmp_path / how).read_text())
    assert seen["warm"] == seen["fresh"]
    assert str(tmp_path) in seen["warm"]["path"] and "" not in seen["warm"]["path"]  # -m, not -c
    assert seen["warm"]["main_spec"] == "pytest.__main__"
    assert seen["warm"]["stdin"] == ""


def test_only_a_worker_with_the_same_command_environment_and_folder_takes_it(tmp_path):
    env = clean_env(PYTHONHASHSEED="0")
    stock = WarmStock()
    stock.add(sys.executable, env, str(tmp_path))
    waiting = stock._waiting[0].process
    command = pytest_command("t.py")
    assert stock.reserve(command, {**env, "PYTHONHASHSEED": "1"}, str(tmp_path)) is None
    assert stock.reserve(command, env, str(tmp_path / "elsewhere")) is None
    assert stock.reserve([sys.executable, "script.py"], env, str(tmp_path)) is None
    assert stock.reserve(["/other/python", "-m", "pytest"], env, str(tmp_path)) is None
    assert len(stock) == 1
    stock.close()  # what nobody took is stopped, not left waiting
    assert exits_within(waiting, 10) is not None
    assert len(stock) == 0


def test_one_that_waits_in_vain_exits_at_end_of_input(tmp_path):
    warm = WarmInterpreter(sys.executable, clean_env(), str(tmp_path)).start()
    process = warm.process
    process.stdin.close()  # what the parent's death does to its end of the pipe
    assert exits_within(process, 60) == 0
    assert warm.launch(pytest_command("t.py")) is None  # gone: the worker starts fresh


def test_one_that_died_while_waiting_is_not_handed_the_worker(tmp_path):
    stock = WarmStock()
    env = clean_env()
    stock.add(sys.executable, env, str(tmp_path))
    stock._waiting[0].process.kill()
    stock._waiting[0].process.wait()
    warm = stock.reserve(pytest_command("t.py"), env, str(tmp_path))
    assert warm is not None and len(stock) == 0
    assert warm.launch(pytest_command("t.py")) is None  # the job then starts it fresh


KILLED_PARENT = """
import sys, time
from repro_check.orchestration.warm import WarmStock
stock = WarmStock()
stock.add(sys.executable, dict(__import__("os").environ), ".")
print(stock._waiting[0].process.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_parent_killed_during_collection_leaves_no_warm_interpreter(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=PACKAGE_PARENT),
        stdout=subprocess.PIPE,
    )
    pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(pid)


def test_the_session_pool_starts_on_warm_interpreters_and_its_verdicts_stand(tmp_path):
    (tmp_path / "test_tiny.py").write_text(linear_sgd_test("test_tiny", 3))
    launcher = WorkerLauncher(WorkerSettings(tmp_path, tmp_path, 0, 0), tmpdir=tmp_path / "w")
    specs = [ReplicaSpec(0, {"PYTHONHASHSEED": "0"}), ReplicaSpec(1, {"PYTHONHASHSEED": "1"})]
    try:
        launcher.warm_up(specs)
        assert len(launcher.warm) == 2
        pool = launcher.pool(["test_tiny.py::test_tiny"], specs, "session", serve=True)
        try:
            results = [pool.result("test_tiny.py::test_tiny", spec.index) for spec in specs]
            assert all(job.started_warm for job in pool.jobs.values())
        finally:
            pool.close()
    finally:
        launcher.close()
    assert [r.outcome for r in results] == ["passed", "passed"], [r.error for r in results]
    first, second = (r.record for r in results)
    assert first is not None and second is not None
    assert [s.step for s in first.steps] == [0, 1, 2]
    assert first.steps[-1].entries == second.steps[-1].entries  # bit for bit
    assert len(launcher.warm) == 0


def test_a_worker_whose_environment_changed_since_warm_up_starts_fresh(tmp_path, monkeypatch):
    (tmp_path / "test_tiny.py").write_text(linear_sgd_test("test_tiny", 1))
    launcher = WorkerLauncher(WorkerSettings(tmp_path, tmp_path, 0, 0), tmpdir=tmp_path / "w")
    spec = ReplicaSpec(0, {"PYTHONHASHSEED": "0"})
    try:
        launcher.warm_up([spec])
        waiting = launcher.warm._waiting[0].process
        monkeypatch.setenv("SET_BY_A_CONFTEST", "1")  # e.g. during collection
        assert process_env(worker_env(spec, [PACKAGE_PARENT]))["SET_BY_A_CONFTEST"] == "1"
        pool = launcher.pool(["test_tiny.py::test_tiny"], [spec], "session", serve=True)
        try:
            result = pool.result("test_tiny.py::test_tiny", 0)
            assert not pool.jobs[0].started_warm
        finally:
            pool.close()
    finally:
        launcher.close()
    assert result.outcome == "passed", result.error
    assert exits_within(waiting, 10) is not None  # the unfit one was stopped at pool start


def test_where_torch_does_not_import_the_worker_starts_as_plain_python_dash_m_pytest(tmp_path):
    broken = tmp_path / "site"
    (broken / "torch").mkdir(parents=True)
    (broken / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    (tmp_path / "test_probe.py").write_text(
        "import os, sys\n\n\ndef test_probe():\n"
        "    with open(os.environ['PROBE_OUT'], 'w') as handle:\n"
        "        handle.write(repr(['torch' in sys.modules, sys.argv[0]]))\n"
    )
    env = clean_env(PYTHONPATH=str(broken), PROBE_OUT=str(tmp_path / "seen"))
    command = pytest_command("test_probe.py", "-q", "-p", "no:cacheprovider")
    stock = WarmStock()
    stock.add(sys.executable, env, str(tmp_path))
    process = stock.reserve(command, env, str(tmp_path)).launch(command)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0, output
    torch_loaded, argv0 = eval((tmp_path / "seen").read_text())
    assert not torch_loaded  # no half-imported torch left over: a fresh interpreter ran it
    assert argv0.endswith(os.path.join("pytest", "__main__.py"))


def test_a_job_cancelled_before_it_runs_stops_its_reserved_interpreter(tmp_path):
    launcher = WorkerLauncher(WorkerSettings(tmp_path, tmp_path, 0, 0), tmpdir=tmp_path / "w")
    spec = ReplicaSpec(0, {"PYTHONHASHSEED": "0"})
    try:
        launcher.warm_up([spec])
        waiting = launcher.warm._waiting[0].process
        job = launcher.job(["test_x.py::test_x"], spec, "cancelled", serve=True)
        launcher.start_warm([job])
        assert job.warm is not None and job.warm.process is waiting
        job.kill()  # e.g. the session is interrupted before the pool's thread starts it
        assert exits_within(waiting, 10) is not None
        assert job.run() == -signal.SIGTERM and job.process is None
    finally:
        launcher.close()


class FakeConfig:
    """What warm_starts reads of a pytest config."""

    def __init__(self, *, dist="no", tx=None, worker=False, collectonly=False, executor="local"):
        self.option = type("Option", (), {"dist": dist, "tx": tx, "collectonly": collectonly})()
        self._executor = executor
        if worker:
            self.workerinput = {"workercount": 2}

    def getoption(self, name, default=None):
        assert name == "repro_executor"
        return self._executor


@pytest.mark.parametrize(
    ("config", "warm_start", "subprocess", "expected"),
    [
        (FakeConfig(), True, True, True),
        (FakeConfig(), False, True, False),  # --repro-warm-start=off
        (FakeConfig(), True, False, False),  # in-process replicas: no workers
        (FakeConfig(collectonly=True), True, True, False),
        (FakeConfig(executor="dask"), True, True, False),  # workers start on the cluster
        (FakeConfig(dist="load", tx=["popen"] * 2), True, True, False),  # xdist controller
        (FakeConfig(dist="load", tx=["popen"] * 2, worker=True), True, True, True),
        (FakeConfig(dist="loadgroup"), True, True, True),  # --dist without -n: no xdist
    ],
)
def test_who_warms_up(config, warm_start, subprocess, expected):
    from repro_check.pytest_plugin.options import Options, warm_starts

    options = Options(True, 2, 0, "subprocess", 1, None, 0, False, warm_start=warm_start)
    assert warm_starts(config, options, subprocess) is expected
