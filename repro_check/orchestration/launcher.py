"""Starting replica processes: the worker spec file, the worker's pytest command line, pools.

A worker is a fresh ``python -m pytest`` over the test files, with ``--repro-worker=SPEC``: the
spec (JSON, schema-versioned) says which tests and runs to execute, with which seeds, and where
to stream results. Everything the front end knows of pytest's configuration that a worker needs
is in :class:`WorkerSettings`, so the command line is built (and unit-tested) without pytest.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_check.core.atomic import write_json
from repro_check.orchestration.executor import ReplicaPool, WorkerJob, python_executable, worker_env
from repro_check.orchestration.investigation import TraceWindow
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec, RunSpec

WORKER_SCHEMA = "repro-check/worker-spec"
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent.parent)


def slug(nodeid: str) -> str:
    """A short, fixed-length folder name for a test id (temporary folders only)."""
    import hashlib

    return hashlib.sha1(nodeid.encode()).hexdigest()[:12]


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


@dataclass
class WorkerLauncher:
    settings: WorkerSettings
    tmpdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="repro-check-")))

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
        return command

    def job(
        self,
        nodeids: Sequence[str],
        spec: ReplicaSpec,
        tag: str,
        runs: Sequence[RunSpec] | None = None,
        skip: Sequence[tuple[str, str]] | None = None,
        metrics_only: bool = False,
    ) -> WorkerJob:
        folder = self.tmpdir / tag
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / "spec.json"
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
                "runs": [run.to_json() for run in runs or [RunSpec(str(spec.index))]],
                "metrics_only": metrics_only,
                "deterministic": self.settings.deterministic,
                "skip": list(skip or []),
            },
        )
        return WorkerJob(
            spec=spec,
            command=self.command(nodeids, spec_path),
            env=worker_env(spec, [PACKAGE_PARENT]),
            cwd=str(self.settings.invocation_dir),
            channel=folder / "channel.jsonl",
            stdout=folder / "stdout.txt",
            stderr=folder / "stderr.txt",
        )

    def pool(self, nodeids: Sequence[str], specs: Sequence[ReplicaSpec], tag: str) -> ReplicaPool:
        """One worker per replica spec, each running every test in ``nodeids``; started."""
        jobs = [self.job(nodeids, spec, f"{tag}-{spec.index}") for spec in specs]
        workers = min(self.settings.jobs, len(jobs))
        pool = ReplicaPool(jobs, ThreadPoolExecutor(max_workers=workers))
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
        folder = f"investigate-{slug(nodeid)}-{attempt}"
        specs, jobs = [], []
        for index, original in enumerate(originals):
            spec = ReplicaSpec(
                index,
                dict(original.env),
                original.num_threads,
                f"rerun of replica {original.index}",
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
        pool = ReplicaPool(jobs, ThreadPoolExecutor(max_workers=workers))
        pool.start()
        try:
            return [pool.result(nodeid, spec.index) for spec in specs]
        finally:
            pool.close()

    def close(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)
