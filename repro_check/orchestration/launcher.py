"""Starting replica processes: the worker spec file, the worker's pytest command line, pools.

A worker is a fresh ``python -m pytest`` over the test files, with ``--repro-worker=SPEC``: the
spec (JSON, schema-versioned) says which tests and runs to execute, with which seeds, and where
to stream results. Everything the front end knows of pytest's configuration that a worker needs
is in :class:`WorkerSettings`, so the command line is built (and unit-tested) without pytest.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_check.core.atomic import write_json
from repro_check.core.paths import NoSpaceError, id_to_name, is_no_space
from repro_check.orchestration.executor import (
    Pair,
    ReplicaPool,
    WorkerJob,
    cleanup_on_sigterm,
    kill_all_workers,
    python_executable,
)
from repro_check.orchestration.investigation import TraceWindow
from repro_check.orchestration.processes import process_env, worker_env
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec, RunSpec
from repro_check.orchestration.serving import make_request_file
from repro_check.orchestration.warm import WarmStock

WORKER_SCHEMA = "repro-check/worker-spec"
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent.parent)


SESSION_PREFIX = "repro-check-"
OWNER_FILE = "owner.pid"  # the pid of the session that owns a folder
#: A replica test running longer is stopped and fails (--repro-timeout; 0: no limit).
DEFAULT_TIMEOUT_S = 1800.0


def session_folder(root: str | None = None) -> Path:
    """A fresh folder for this session's replica files, owned by this process; the folders of
    sessions that died without cleaning up (SIGKILL) are removed first."""
    parent = Path(root or tempfile.gettempdir())
    remove_stale_folders(parent)
    try:
        folder = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=parent))
        (folder / OWNER_FILE).write_text(str(os.getpid()))
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpaceError(parent / SESSION_PREFIX, "the session folder") from None
        raise
    return folder


def remove_stale_folders(parent: Path) -> list[Path]:
    """Remove ``repro-check-*`` folders whose owning process is gone; returns them."""
    removed = []
    for folder in parent.glob(SESSION_PREFIX + "*"):
        try:
            pid = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        if not pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker pytest needs from the parent's configuration."""

    rootpath: Path
    invocation_dir: Path
    base_seed: int
    spill_bytes: int
    jobs: int = 1
    inipath: Path | None = None
    import_mode: str = "prepend"
    steps_override: int | None = None
    deterministic: bool = False
    #: The plugin is not auto-loaded in the parent (``-p repro_check.pytest_plugin`` or
    #: PYTEST_DISABLE_PLUGIN_AUTOLOAD): the worker must load it explicitly too.
    load_plugin: bool = False
    #: Seconds a test may run in a replica before it is stopped (None: no limit).
    timeout: float | None = DEFAULT_TIMEOUT_S
    #: Load hypothesis's pytest plugin in the workers. Only a test written with ``@given``
    #: needs it, and importing it costs ~0.9 s of each worker's ~2.3 s start-up.
    hypothesis_plugin: bool = True


@dataclass
class WorkerLauncher:
    settings: WorkerSettings
    tmpdir: Path = field(default_factory=session_folder)
    #: Per-test time limits where a marker sets one (else ``settings.timeout``).
    timeouts: dict[str, float | None] = field(default_factory=dict)
    _uninstall: Callable[[], None] | None = field(default=None, repr=False)
    #: Called while a rerun waits for its processes (the front end's progress display).
    on_wait: Callable[[], None] | None = None
    #: Interpreters started before collection (:meth:`warm_up`), for the session's pool.
    warm: WarmStock = field(default_factory=WarmStock)

    def warm_up(self, specs: Sequence[ReplicaSpec]) -> None:
        """Start one interpreter per replica now, with the environment its worker will have,
        so that ``import torch`` overlaps this session's collection (:mod:`.warm`)."""
        cwd = str(self.settings.invocation_dir)
        for spec in specs:
            self.warm.add(python_executable(), process_env(worker_env(spec, [PACKAGE_PARENT])), cwd)
        self._cleanup_on_sigterm()

    def start_warm(self, jobs: Sequence[WorkerJob]) -> None:
        """Reserve for each job the warm interpreter that fits it, if one does; stop those that
        fit none (the environment changed since :meth:`warm_up`): nothing else can use them."""
        for job in jobs:  # each job's run() hands it the command line, on the pool's thread
            job.warm = self.warm.reserve(job.command, process_env(job.env), job.cwd)
        self.warm.close()

    def command(self, nodeids: Sequence[str], spec_path: Path) -> list[str]:
        s = self.settings
        files = sorted({str(s.rootpath / nodeid.split("::")[0]) for nodeid in nodeids})
        command = [
            python_executable(),
            "-m",
            "pytest",
            *files,
            f"--repro-worker={spec_path}",
            f"--rootdir={s.rootpath}",
            *("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly"),
            *("-o", "addopts=", "-q", "--no-header", "-p", "no:warnings"),
            f"--import-mode={s.import_mode}",
        ]
        if s.inipath is not None:
            command.append(f"--config-file={s.inipath}")
        if s.steps_override is not None:
            command.append(f"--repro-steps={s.steps_override}")
        if s.load_plugin:
            command += ["-p", "repro_check.pytest_plugin"]
        if not s.hypothesis_plugin:
            command += ["-p", "no:hypothesispytest"]
        return command

    def job(
        self,
        nodeids: Sequence[str],
        spec: ReplicaSpec,
        tag: str,
        runs: Sequence[RunSpec] | None = None,
        skip: Sequence[tuple[str, str]] | None = None,
        metrics_only: bool = False,
        attempt: int = 0,
        serve: bool = False,
    ) -> WorkerJob:
        """``serve``: the worker runs the tests the parent requests (:mod:`.serving`)."""
        folder = self.tmpdir / (tag if not attempt else f"{tag}-restart-{attempt}")
        spec_path = folder / "spec.json"
        runs = list(runs or [RunSpec(str(spec.index))])
        requests = folder / "requests" if serve else None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if requests is not None:
                make_request_file(requests)
            self._write_spec(spec_path, nodeids, spec, runs, skip, metrics_only, requests)
        except OSError as exc:
            if is_no_space(exc):
                raise NoSpaceError(spec_path, "a worker spec") from None
            raise
        self._cleanup_on_sigterm()
        return WorkerJob(
            spec=spec,
            command=self.command(nodeids, spec_path),
            env=worker_env(spec, [PACKAGE_PARENT]),
            cwd=str(self.settings.invocation_dir),
            channel=folder / "channel.jsonl",
            output=folder / "output.txt",
            nodeids=tuple(nodeids),
            runs=tuple(runs),
            skip=frozenset((str(n), str(r)) for n, r in skip or []),
            metrics_only=metrics_only,
            tag=tag,
            attempt=attempt,
            timeout_file=folder / "timeout.txt",
            requests=requests,
        )

    def relaunch(self, job: WorkerJob, done: set[Pair]) -> WorkerJob:
        """A fresh worker for what a dead one left: the same replica and runs, its finished
        (and crashed) pairs skipped."""
        left = job.pairs() - done
        nodeids = [nodeid for nodeid in job.nodeids if any(n == nodeid for n, _ in left)]
        return self.job(
            nodeids,
            job.spec,
            job.tag,
            runs=job.runs,
            skip=sorted(job.skip | done),
            metrics_only=job.metrics_only,
            attempt=job.attempt + 1,
            serve=job.requests is not None,
        )

    def for_tests(self, uses_hypothesis: bool) -> None:
        """Tailor the workers to the session's collected tests (before any starts)."""
        self.settings = dataclasses.replace(self.settings, hypothesis_plugin=uses_hypothesis)

    def timeout_for(self, nodeid: str) -> float | None:
        timeout = self.timeouts.get(nodeid, self.settings.timeout)
        return timeout if timeout and math.isfinite(timeout) else None  # 0 or inf: no limit

    def _cleanup_on_sigterm(self) -> None:
        if self._uninstall is None:
            self._uninstall = cleanup_on_sigterm(self.kill_now)

    def kill_now(self) -> None:
        """The parent is being terminated: kill every worker, remove the session folder."""
        kill_all_workers()
        self.warm.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def _write_spec(
        self,
        spec_path: Path,
        nodeids: Sequence[str],
        spec: ReplicaSpec,
        runs: Sequence[RunSpec],
        skip: Sequence[tuple[str, str]] | None,
        metrics_only: bool,
        requests: Path | None,
    ) -> None:
        folder = spec_path.parent
        write_json(
            spec_path,
            {
                "schema": WORKER_SCHEMA,
                "schema_version": 1,
                "replica": spec.to_json(),
                "base_seed": self.settings.base_seed,
                "nodeids": list(nodeids),
                "channel": str(folder / "channel.jsonl"),
                "spill_path": str(folder / "spill.bin"),
                "spill_bytes": self.settings.spill_bytes,
                "runs": [run.to_json() for run in runs],
                "metrics_only": metrics_only,
                "deterministic": self.settings.deterministic,
                "skip": [list(pair) for pair in skip or []],
                "timeouts": {nodeid: self.timeout_for(nodeid) for nodeid in nodeids},
                "timeout_file": str(folder / "timeout.txt"),
                **({"requests": str(requests)} if requests is not None else {}),
            },
        )

    def pool(
        self,
        nodeids: Sequence[str],
        specs: Sequence[ReplicaSpec],
        tag: str,
        extra: Sequence[tuple[Sequence[str], ReplicaSpec]] = (),
        executor: Executor | None = None,
        serve: bool = False,
    ) -> ReplicaPool:
        """One worker per replica spec, each running every test in ``nodeids``, and one per
        ``extra`` spec (a backend variant's replica) running its own tests; started. The
        workers run through ``executor`` (default: local threads, --repro-jobs at once).

        ``serve``: the workers start at once and run each test when a result for it is asked
        for (pytest-xdist, where the tests a worker gets are not known in advance); still at
        most --repro-jobs of them work at a time."""
        jobs = [self.job(nodeids, spec, f"{tag}-{spec.index}", serve=serve) for spec in specs]
        jobs += [self.job(ids, spec, f"{tag}-{spec.index}", serve=serve) for ids, spec in extra]
        workers = min(self.settings.jobs, len(jobs))
        if serve:  # every process runs from the start; the pool bounds how many are busy
            assert executor is None, "serving workers take requests through local pipes"
            executor = ThreadPoolExecutor(max_workers=len(jobs))
        elif executor is None:
            executor = ThreadPoolExecutor(max_workers=workers)
        if serve:  # local processes: those started early can be them
            self.start_warm(jobs)
        pool = ReplicaPool(jobs, executor, relaunch=self.relaunch, concurrency=workers)
        pool.start()
        return pool

    def rerun(
        self,
        nodeid: str,
        originals: Sequence[ReplicaSpec],
        window: TraceWindow | None,
        attempt: int,
    ) -> list[ReplicaResult]:
        """The investigation's rerunner: fresh processes with the originals' settings."""
        folder = f"investigate-{id_to_name(nodeid)}-{attempt}"
        reruns = 0
        while (self.tmpdir / folder).exists():  # one folder per rerun (variants rerun a test often)
            reruns += 1
            folder = f"investigate-{id_to_name(nodeid)}-{attempt}.{reruns}"
        specs, jobs = [], []
        for index, original in enumerate(originals):
            spec = ReplicaSpec(
                index,
                dict(original.env),
                original.num_threads,
                f"rerun of replica {original.index}",
                settings=dict(original.settings),
            )
            trace: dict[str, Any] | None = None
            if window is not None:
                path = self.tmpdir / folder / f"trace-{index}.jsonl"
                trace = {
                    "start_after": window.start_after,
                    "stop_at": window.stop_at,
                    "path": str(path),
                }
            specs.append(spec)
            jobs.append(
                self.job(
                    [nodeid], spec, f"{folder}/{index}", runs=[RunSpec(str(index), trace=trace)]
                )
            )
        workers = min(self.settings.jobs, len(jobs))
        pool = ReplicaPool(jobs, ThreadPoolExecutor(max_workers=workers), relaunch=self.relaunch)
        pool.start()
        try:
            return [pool.result(nodeid, spec.index, self.on_wait) for spec in specs]
        finally:
            pool.close()

    def close(self) -> None:
        self.warm.close()
        if self._uninstall is not None:
            self._uninstall()
            self._uninstall = None
        shutil.rmtree(self.tmpdir, ignore_errors=True)
