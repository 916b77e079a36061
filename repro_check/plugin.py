"""The pytest plugin: ``pytest --repro``.

A thin adapter over the orchestration layer. Without ``--repro`` a ``@pytest.mark.repro`` test
runs once, seeded, as a plain test. With it, every marked test runs as several replicas -- by
default each in a fresh interpreter (one worker process per replica for the whole session) --
and the parent compares what they recorded, step by step.

Options live under one prefix (``--repro-*`` on the command line, ``repro_*`` in the ini file);
``-p no:repro`` disables the plugin.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from repro_check.core.atomic import read_json, write_json
from repro_check.core.context import DEFAULT_STEPS, RunContext
from repro_check.core.record import MetricRecorder, Recorder, RunRecord
from repro_check.core.seeding import DEFAULT_BASE_SEED, SeedPlan, root_seed_for_test
from repro_check.core.spill import SpillWriter
from repro_check.orchestration.baseline import DEFAULT_ATOL, DEFAULT_RTOL
from repro_check.orchestration.executor import (
    ReplicaPool,
    WorkerJob,
    append_channel,
    python_executable,
    worker_env,
)
from repro_check.orchestration.localize import localize_from_reruns
from repro_check.orchestration.replicas import (
    ReplicaResult,
    ReplicaSpec,
    RunSpec,
    default_specs,
)
from repro_check.orchestration.verdict import (
    ALLOWED,
    BASELINE_MISMATCH,
    BASELINE_MISSING,
    DIVERGED,
    FAILING,
    IDENTICAL,
    SINGLE,
    SKIPPED,
    TestVerdict,
    judge,
)
from repro_check.report import (
    RenderedVerdict,
    failure_message,
    human_bytes,
    render,
    summary_table,
    write_reports,
)

MARKER = "repro"
WORKER_SCHEMA = "repro-check/worker-spec"
CACHE_KEY = "repro/base_seed"
UNLIMITED_SPILL = 2**62  # checkpoints need every tensor of the last step
LOCALIZE_AUTO_S = 30.0  # auto-localise when one replica of the test took less than this
LOCALIZE_ATTEMPTS = 3
WHOLE_RUN = 2**62  # a trace window that closes only when the test ends
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)

context_key = pytest.StashKey[RunContext]()
run_key = pytest.StashKey["RunSpec"]()
replica_key = pytest.StashKey[int]()
started_key = pytest.StashKey[float]()  # when the logged (last) in-process replica began


class ReproFailure(AssertionError):
    """A marked test is not reproducible; its message is the whole report (no traceback)."""


# ----------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("repro", "repro-check: determinism verification")
    group.addoption(
        "--repro",
        action="store_true",
        default=False,
        help="run @pytest.mark.repro tests as replicas and compare them bitwise",
    )
    group.addoption(
        "--repro-runs",
        type=int,
        default=None,
        metavar="N",
        help="replicas per test (default 2; ini repro_runs)",
    )
    group.addoption(
        "--repro-seed",
        default=None,
        metavar="N|last|random",
        help=f"base seed; each test's root seed derives from it and the test id "
        f"(default {DEFAULT_BASE_SEED}; ini repro_seed)",
    )
    group.addoption(
        "--repro-steps",
        type=int,
        default=None,
        metavar="N",
        help="override every marker's steps= (e.g. train longer in a sweep)",
    )
    group.addoption(
        "--repro-mode",
        choices=("subprocess", "inprocess"),
        default=None,
        help="replicas in fresh interpreters (default) or in this process (faster)",
    )
    group.addoption(
        "--repro-jobs",
        type=int,
        default=None,
        metavar="N",
        help="replica processes run at once (default: as many as the cores allow given each "
        "replica's torch threads; sweeps: one per core)",
    )
    group.addoption(
        "--repro-report",
        default=None,
        metavar="DIR",
        help="folder for report.json and report.md (default reports/; ini "
        "repro_report; 'none' to skip)",
    )
    group.addoption(
        "--repro-spill-mb",
        type=int,
        default=None,
        metavar="MB",
        help="per-replica budget of raw tensor bytes kept for detailed diffs (default 512)",
    )
    group.addoption(
        "--repro-save-checkpoints",
        action="store_true",
        default=False,
        help="save each replica's last recorded step as safetensors + JSON "
        "manifest under REPORT_DIR/checkpoints/",
    )
    group.addoption(
        "--repro-update",
        action="store_true",
        default=False,
        help="write or accept the baselines of the tests that run (they pass)",
    )
    group.addoption(
        "--repro-baseline",
        choices=("check", "off"),
        default=None,
        help="compare with committed baselines (default check; ini repro_baseline)",
    )
    group.addoption(
        "--repro-baseline-dir",
        default=None,
        metavar="DIR",
        help="keep baselines under DIR (relative to the rootdir) instead of "
        "repro_baselines/ beside each test file",
    )
    group.addoption(
        "--repro-atol",
        type=float,
        default=None,
        help="absolute tolerance when environments differ (ini repro_atol)",
    )
    group.addoption(
        "--repro-rtol",
        type=float,
        default=None,
        help="relative tolerance when environments differ (ini repro_rtol)",
    )
    group.addoption(
        "--repro-localize",
        choices=("auto", "always", "never"),
        default="auto",
        help="on a divergence, rerun both replicas tracing every aten op of the "
        "divergent step and name the op (auto: when a replica takes < 30 s)",
    )
    group.addoption(
        "--repro-audit",
        action="store_true",
        default=False,
        help="trace each marked test once and list the ops whose CUDA kernels are "
        "nondeterministic, with the lines that call them (works on CPU)",
    )
    group.addoption(
        "--repro-deterministic",
        action="store_true",
        default=False,
        help="run with torch.use_deterministic_algorithms(True), deterministic cuDNN "
        "and CUBLAS_WORKSPACE_CONFIG=:4096:8",
    )
    group.addoption(
        "--repro-sensitivity",
        action="store_true",
        default=False,
        help="seed-sensitivity sweep: K runs per source, each varying only that "
        "source's seed; writes md/tex/csv/json/png to REPORT_DIR/sensitivity",
    )
    group.addoption(
        "--repro-seeds",
        type=int,
        default=8,
        metavar="K",
        help="runs per source in a sensitivity sweep (default 8)",
    )
    group.addoption(
        "--repro-sources",
        default=None,
        metavar="NAMES",
        help="comma-separated sources to perturb (default init,data,global; also "
        "bitflip, and backend: thread count / deterministic mode with fixed "
        "seeds); 'all' is always added",
    )
    group.addoption(
        "--repro-executor",
        choices=("local", "dask"),
        default="local",
        help="where sweep runs execute: local processes, or a Dask cluster "
        "(--repro-dask-scheduler=ADDRESS, else a LocalCluster on loopback)",
    )
    group.addoption(
        "--repro-dask-scheduler",
        default=None,
        metavar="ADDRESS",
        help="Dask scheduler address for --repro-executor=dask",
    )
    group.addoption(
        "--repro-sweep-threads",
        type=int,
        default=1,
        metavar="N",
        help="torch threads per sweep run (default 1: parallel workers do not oversubscribe "
        "the cores, and results do not depend on --repro-jobs)",
    )
    group.addoption(
        "--repro-only-run",
        default=None,
        metavar="SOURCE:K",
        help="run one run of a sweep (the command printed for each run)",
    )
    group.addoption("--repro-worker", default=None, help=argparse_suppress())
    parser.addini("repro_runs", "replicas per test under --repro", default="2")
    parser.addini("repro_seed", "base seed (N, last or random)", default=str(DEFAULT_BASE_SEED))
    parser.addini("repro_mode", "subprocess or inprocess", default="subprocess")
    parser.addini("repro_report", "report folder", default="reports")
    parser.addini("repro_spill_mb", "spill budget per replica in MB", default="512")
    parser.addini("repro_baseline", "check or off", default="check")
    parser.addini(
        "repro_allow",
        "known nondeterminism, one per line: 'aten::op: why; atol=1e-5'",
        type="linelist",
        default=[],
    )
    parser.addini(
        "repro_baseline_dir", "folder for baselines (default: beside the tests)", default=""
    )
    parser.addini("repro_atol", "absolute tolerance across environments", default=str(DEFAULT_ATOL))
    parser.addini("repro_rtol", "relative tolerance across environments", default=str(DEFAULT_RTOL))


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


@dataclass
class Options:
    enabled: bool
    runs: int
    base_seed: int
    seed_source: str
    mode: str
    jobs: int
    report_dir: Path | None
    spill_bytes: int
    save_checkpoints: bool
    update: bool = False
    localize: str = "auto"
    deterministic: bool = False
    baseline: str = "check"
    baseline_dir: str = ""
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        def pick(name: str) -> str:
            value = config.getoption(f"repro_{name}")
            return str(value) if value is not None else str(config.getini(f"repro_{name}"))

        runs = _positive_int(pick("runs"), "--repro-runs")
        seed_text = pick("seed").strip().lower()
        if seed_text == "last":
            cached = config.cache.get(CACHE_KEY, None) if getattr(config, "cache", None) else None
            base_seed = int(cached) if cached is not None else DEFAULT_BASE_SEED
        elif seed_text == "random":
            base_seed = random.SystemRandom().randrange(2**32)
        else:
            try:
                base_seed = int(seed_text)
            except ValueError:
                raise pytest.UsageError(
                    f"--repro-seed={seed_text!r}: expected an integer, 'last' or 'random'"
                ) from None
        jobs_opt = config.getoption("repro_jobs")
        jobs = _positive_int(str(jobs_opt), "--repro-jobs") if jobs_opt else default_jobs(runs)
        report = pick("report")
        mode = pick("mode")
        if mode not in ("subprocess", "inprocess"):
            raise pytest.UsageError(f"repro_mode={mode!r}: expected subprocess or inprocess")
        return cls(
            enabled=bool(config.getoption("repro")),
            runs=runs,
            base_seed=base_seed,
            seed_source=seed_text,
            mode=mode,
            jobs=jobs,
            report_dir=None if report.lower() == "none" else Path(config.rootpath, report),
            spill_bytes=UNLIMITED_SPILL
            if config.getoption("repro_save_checkpoints")
            else _positive_int(pick("spill_mb"), "--repro-spill-mb", minimum=0) * 2**20,
            save_checkpoints=bool(config.getoption("repro_save_checkpoints")),
            update=bool(config.getoption("repro_update")),
            localize=str(config.getoption("repro_localize")),
            deterministic=bool(config.getoption("repro_deterministic")),
            baseline=_choice(pick("baseline"), ("check", "off"), "repro_baseline"),
            baseline_dir=pick("baseline_dir"),
            atol=_non_negative_float(pick("atol"), "repro_atol"),
            rtol=_non_negative_float(pick("rtol"), "repro_rtol"),
        )


def default_jobs(runs: int) -> int:
    """Replica processes at once: as many as the cores allow *given the threads each uses*.

    torch uses every core by default; two such replicas side by side oversubscribe the CPU, and
    OpenMP's spinning threads then make both several times slower than running them in turn.
    Replicas must keep the user's thread count (it changes the numbers), so they share cores
    only when OMP_NUM_THREADS leaves room.
    """
    cores = os.cpu_count() or 1
    try:
        threads = int(os.environ.get("OMP_NUM_THREADS", "") or cores)
    except ValueError:
        threads = cores
    return max(1, min(runs, cores // max(1, threads)))


def _choice(text: str, choices: tuple[str, ...], name: str) -> str:
    if text not in choices:
        raise pytest.UsageError(f"{name}={text!r}: expected one of {', '.join(choices)}")
    return text


def _non_negative_float(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"{name}={text!r}: expected a number") from None
    if not value >= 0:
        raise pytest.UsageError(f"{name}={value}: must be >= 0")
    return value


def _positive_int(text: str, flag: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise pytest.UsageError(f"{flag}={text!r}: expected an integer") from None
    if value < minimum:
        raise pytest.UsageError(f"{flag}={value}: must be at least {minimum}")
    return value


# ----------------------------------------------------------------------------- configuration


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "repro(steps=10): a training test whose recorded state must be reproducible "
        "(run with --repro to replay it as replicas and compare them bitwise)",
    )
    worker_spec = config.getoption("repro_worker")
    if worker_spec:
        config.pluginmanager.register(WorkerSession(config, Path(worker_spec)), "repro-worker")
        return
    options = Options.from_config(config)
    if config.getoption("repro_sensitivity"):
        from repro_check.plugin_sensitivity import SensitivitySession

        config.pluginmanager.register(SensitivitySession(config, options), "repro-sensitivity")
    elif options.enabled:
        config.pluginmanager.register(ParentSession(config, options), "repro-session")
    else:
        config.pluginmanager.register(PlainSession(options), "repro-plain")
    if config.getoption("repro_audit"):
        from repro_check.plugin_audit import AuditPlugin

        config.pluginmanager.register(AuditPlugin(config, options.report_dir), "repro-audit")


def _apply_backend(backend: Any) -> Any:
    """Switch thread count / deterministic mode for one sweep run; returns the undo."""
    if not backend:
        return lambda: None
    import torch

    threads = torch.get_num_threads()
    if "threads" in backend:
        torch.set_num_threads(int(backend["threads"]))
    undo_deterministic = _maybe_deterministic(bool(backend.get("deterministic")))

    def restore() -> None:
        undo_deterministic()
        torch.set_num_threads(threads)

    return restore


def _maybe_deterministic(enabled: bool) -> Any:
    """Enable deterministic mode when asked; always return a restore function."""
    if not enabled:
        return lambda: None
    from repro_check.core.determinism import enable_deterministic_mode

    return enable_deterministic_mode()


def allowed_ops(item: pytest.Item) -> dict[str, str]:
    """Known nondeterminism, with its rationale: the ini's ``repro_allow`` lines
    (``aten::op: why; atol=1e-5``), then the marker's ``allow={op: why}``."""
    allowed = {}
    for line in item.config.getini("repro_allow"):
        op, _, why = str(line).partition(":")
        if op.strip() == "aten" and why:  # "aten::op: why" splits at the first colon
            op, _, why = why.lstrip(":").partition(":")
            op = "aten::" + op
        allowed[op.strip()] = why.strip()
    marker = item.get_closest_marker(MARKER)
    allowed.update((marker.kwargs.get("allow") or {}) if marker else {})
    return allowed


def is_repro_item(item: pytest.Item) -> bool:
    return item.get_closest_marker(MARKER) is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Using the fixture opts a test in, as the marker does.
    for item in items:
        if "repro" in getattr(item, "fixturenames", ()) and not is_repro_item(item):
            item.add_marker(MARKER)


def marker_steps(item: pytest.Item) -> int:
    override = item.config.getoption("repro_steps")
    marker = item.get_closest_marker(MARKER)
    steps = marker.kwargs.get("steps", DEFAULT_STEPS) if marker else DEFAULT_STEPS
    steps = override if override is not None else steps
    if not isinstance(steps, int) or steps < 1:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.repro(steps={steps!r}) must be >= 1")
    return steps


@pytest.fixture
def repro(request: pytest.FixtureRequest) -> RunContext:
    """The RunContext of this replica: seeds (``seed``, ``seed_for``), ``steps``,
    ``dataloader_kwargs()`` and ``record(step, **state)``."""
    context = request.node.stash.get(context_key, None)
    if context is None:  # plugin hooks were bypassed (e.g. the fixture used from a class scope)
        raise RuntimeError("the repro fixture is only available to function-scoped tests")
    return context


class _SessionBase:
    """Seeding shared by every kind of session: seeds are set before any fixture runs."""

    base_seed: int

    def make_recorder(self, item: pytest.Item) -> Recorder | None:
        return None

    def replica_index(self, item: pytest.Item) -> int:
        return 0

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if not is_repro_item(item):
            return
        plan = SeedPlan(root_seed_for_test(self.base_seed, item.nodeid), self.perturbations(item))
        context = RunContext(
            plan,
            steps=marker_steps(item),
            replica=self.replica_index(item),
            recorder=self.make_recorder(item),
            test_id=item.nodeid,
        )
        item.stash[context_key] = context
        context.seed_globals()
        flip = self.bitflip(item)
        if flip is not None:
            context.arm_bitflip(flip)
        trace = self.trace(item)
        if trace:
            context.trace_window(trace["start_after"], trace["stop_at"], trace["path"])

    def perturbations(self, item: pytest.Item) -> dict[str, int]:
        return {}

    def bitflip(self, item: pytest.Item) -> int | None:
        return None

    def trace(self, item: pytest.Item) -> Any:
        return None


class PlainSession(_SessionBase):
    """No ``--repro``: marked tests run once, seeded; ``record`` only checks types."""

    def __init__(self, options: Options) -> None:
        self.base_seed = options.base_seed
        self._restore_determinism = _maybe_deterministic(options.deterministic)

    def pytest_unconfigure(self) -> None:
        self._restore_determinism()


# ----------------------------------------------------------------------------- worker side


class WorkerSession(_SessionBase):
    """Inside a replica process: run each listed test once per assigned run, and stream one
    result line per (test, run) to the channel file.

    A replica worker has one run; a sensitivity worker has many (one per perturbed seed plan),
    so ``import torch`` and collection are paid once per process, not once per run.
    """

    def __init__(self, config: pytest.Config, spec_path: Path) -> None:
        spec = read_json(spec_path, schema=WORKER_SCHEMA, max_version=1)
        self.config = config
        self.spec = ReplicaSpec.from_json(spec["replica"])
        self.base_seed = int(spec["base_seed"])
        self.nodeids = set(spec["nodeids"])
        self.channel = spec["channel"]
        self.runs = [RunSpec.from_json(run) for run in spec["runs"]]
        #: (test, run id) pairs already finished by an earlier, interrupted sweep.
        self.skip = {(str(n), str(r)) for n, r in spec.get("skip", [])}
        self.metrics_only = bool(spec.get("metrics_only", False))
        self.spill = SpillWriter(spec["spill_path"], int(spec["spill_bytes"]))
        _maybe_deterministic(bool(spec.get("deterministic", False)))
        if self.spec.num_threads is not None:
            import torch

            torch.set_num_threads(self.spec.num_threads)

    def perturbations(self, item: pytest.Item) -> dict[str, int]:
        return dict(item.stash[run_key].perturbations)

    def bitflip(self, item: pytest.Item) -> int | None:
        return item.stash[run_key].bitflip

    def trace(self, item: pytest.Item) -> Any:
        """The run's own trace window, else -- for a replica of a test that allows known
        nondeterminism, which is expected to diverge -- the whole run: the parent can then
        name the op from these traces without rerunning anything."""
        trace = item.stash[run_key].trace
        if trace or self.metrics_only or not allowed_ops(item):
            return trace
        name = hashlib.sha1(item.nodeid.encode()).hexdigest()[:12]
        return {
            "start_after": None,
            "stop_at": WHOLE_RUN,
            "path": str(Path(self.channel).parent / f"trace-{name}.jsonl"),
        }

    def replica_index(self, item: pytest.Item) -> int:
        return self.spec.index

    def make_recorder(self, item: pytest.Item) -> Recorder | MetricRecorder | None:
        return MetricRecorder() if self.metrics_only else Recorder(self.spill)

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        def wanted(item: pytest.Item) -> bool:
            return item.nodeid in self.nodeids and any(
                (item.nodeid, run.run_id) not in self.skip for run in self.runs
            )

        keep = [item for item in items if wanted(item)]
        dropped = [item for item in items if not wanted(item)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep

    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool:
        from _pytest.runner import runtestprotocol

        keep_parents = _ParentChain(item.listchain()[:-1])
        runs = [run for run in self.runs if (item.nodeid, run.run_id) not in self.skip]
        for position, run in enumerate(runs):
            item.stash[run_key] = run
            last = position == len(runs) - 1
            started = time.perf_counter()
            restore = _apply_backend(run.backend)
            try:
                reports = runtestprotocol(
                    item, log=False, nextitem=nextitem if last else keep_parents
                )  # type: ignore[arg-type]
            finally:
                restore()
            context = item.stash.get(context_key, None)
            outcome, error = outcome_of(reports)
            record = context.close() if context else None
            result = ReplicaResult(
                item.nodeid,
                self.spec.index,
                outcome,
                error,
                time.perf_counter() - started,
                record=record if isinstance(record, RunRecord) else None,
                sources_used=sorted(context.sources_used) if context else [],
                environment={} if self.metrics_only else runtime_snapshot(),
                run_id=run.run_id,
                metrics=record if isinstance(record, dict) else {},
                predictions=context.predictions if context else None,
                run_info={
                    **(context.run_info if context else {}),
                    **({"backend": dict(run.backend)} if run.backend else {}),
                },
            )
            append_channel(self.channel, result.to_json())
        return True

    def pytest_unconfigure(self) -> None:
        self.spill.close()


def outcome_of(reports: list[pytest.TestReport]) -> tuple[str, str]:
    for report in reports:
        if report.failed:
            return "failed", f"[{report.when}] {report.longreprtext}"
    for report in reports:
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            return "skipped", str(reason)
    return "passed", ""


def runtime_snapshot() -> dict[str, Any]:
    """The environment snapshot of this process (packages left out: they are in the report's
    environment.json, and listing them costs more than a training step)."""
    from repro_check.core import environment

    return environment.capture(include_packages=False)


def runtime_summary(snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides the numbers of this process, in brief, with the full snapshot's hash."""
    from repro_check.core import environment

    snapshot = snapshot or runtime_snapshot()
    summary = environment.summary(snapshot)
    summary["env_vars"] = snapshot.get("env_vars", {})
    summary["snapshot_hash"] = environment.snapshot_hash(snapshot)
    return summary


# ----------------------------------------------------------------------------- parent side


@dataclass
class _ParentChain:
    """Stands in for ``nextitem`` so that only the item's own (function-scoped) fixtures are
    torn down between in-process replicas; module and session fixtures stay."""

    chain: list[Any] = field(default_factory=list)

    def listchain(self) -> list[Any]:
        return self.chain


class ParentSession(_SessionBase):
    """``pytest --repro``: runs replicas, judges each marked test, reports."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        self.base_seed = options.base_seed
        self.subprocess = options.mode == "subprocess"
        self.specs = default_specs(options.runs, subprocess=self.subprocess)
        if options.deterministic:
            from repro_check.core.determinism import DETERMINISTIC_ENV

            self.specs = [
                ReplicaSpec(s.index, {**s.env, **DETERMINISTIC_ENV}, s.num_threads, s.label)
                for s in self.specs
            ]
        self._restore_determinism = _maybe_deterministic(options.deterministic)
        self.verdicts: list[RenderedVerdict] = []
        self.tmpdir = Path(tempfile.mkdtemp(prefix="repro-check-"))
        self.pool: ReplicaPool | None = None
        self._inprocess_results: dict[str, list[ReplicaResult]] = {}
        self._spills: dict[int, SpillWriter] = {}
        self._report_paths: list[Path] = []
        self._baselines_used: set[Path] = set()
        self._report_error = ""

    # --- header
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        how = (
            "fresh processes (" + "; ".join(s.describe() for s in self.specs) + ")"
            if self.subprocess
            else "this process"
        )
        mode = "; deterministic algorithms on" if self.options.deterministic else ""
        return [
            f"repro-check: base seed {self.base_seed} (rerun with --repro-seed={self.base_seed}); "
            f"{self.options.runs} replicas per test in {how}{mode}"
        ]

    # --- replica processes
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not self.subprocess or session.config.option.collectonly:
            return
        if hasattr(session.config, "workerinput"):
            return  # under xdist each test starts its own replicas (see _pool_for)
        nodeids = [item.nodeid for item in session.items if is_repro_item(item)]
        if nodeids:
            self.pool = self._start_pool(nodeids, self.specs, "session")

    def _start_pool(self, nodeids: list[str], specs: list[ReplicaSpec], tag: str) -> ReplicaPool:
        from concurrent.futures import ThreadPoolExecutor

        jobs = [self._worker_job(nodeids, spec, f"{tag}-{spec.index}") for spec in specs]
        pool = ReplicaPool(jobs, ThreadPoolExecutor(max_workers=min(self.options.jobs, len(jobs))))
        pool.start()
        return pool

    def _worker_job(
        self,
        nodeids: list[str],
        spec: ReplicaSpec,
        tag: str,
        runs: list[RunSpec] | None = None,
        skip: list[tuple[str, str]] | None = None,
        metrics_only: bool = False,
    ) -> WorkerJob:
        config = self.config
        folder = self.tmpdir / tag
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / "spec.json"
        write_json(
            spec_path,
            {
                "schema": WORKER_SCHEMA,
                "schema_version": 1,
                "replica": spec.to_json(),
                "base_seed": self.base_seed,
                "nodeids": nodeids,
                "channel": str(folder / "channel.jsonl"),
                "spill_path": str(folder / "spill.bin"),
                "spill_bytes": self.options.spill_bytes,
                "runs": [run.to_json() for run in runs]
                if runs
                else [RunSpec(str(spec.index)).to_json()],
                "metrics_only": metrics_only,
                "deterministic": self.options.deterministic,
                "skip": skip or [],
            },
        )
        files = sorted({str(config.rootpath / nodeid.split("::")[0]) for nodeid in nodeids})
        command = [
            python_executable(),
            "-m",
            "pytest",
            *files,
            f"--repro-worker={spec_path}",
            f"--rootdir={config.rootpath}",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-p",
            "no:randomly",
            "-o",
            "addopts=",
            "-q",
            "--no-header",
            "-p",
            "no:warnings",
            f"--import-mode={config.option.importmode}",
        ]
        if config.inipath is not None:
            command.append(f"--config-file={config.inipath}")
        if config.getoption("repro_steps") is not None:
            command.append(f"--repro-steps={config.getoption('repro_steps')}")
        if config.pluginmanager.get_plugin("repro") is None or os.environ.get(
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD"
        ):
            command += ["-p", "repro_check.plugin"]
        return WorkerJob(
            spec=spec,
            command=command,
            env=worker_env(spec, [PACKAGE_PARENT]),
            cwd=str(config.invocation_params.dir),
            channel=folder / "channel.jsonl",
            stdout=folder / "stdout.txt",
            stderr=folder / "stderr.txt",
        )

    # --- in-process replicas
    def replica_index(self, item: pytest.Item) -> int:
        return item.stash.get(replica_key, 0)

    def make_recorder(self, item: pytest.Item) -> Recorder | None:
        if self.subprocess:
            return None  # the parent does not run the body; the workers record
        index = self.replica_index(item)
        if index not in self._spills:
            self._spills[index] = SpillWriter(
                self.tmpdir / f"inprocess-{index}.bin", self.options.spill_bytes
            )
        return Recorder(self._spills[index])

    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        if self.subprocess or not is_repro_item(item):
            return None
        from _pytest.runner import runtestprotocol

        keep_parents = _ParentChain(item.listchain()[:-1])
        results = self._inprocess_results[item.nodeid] = []
        for index in range(len(self.specs) - 1):
            item.stash[replica_key] = index
            started = time.perf_counter()
            reports = runtestprotocol(item, log=False, nextitem=keep_parents)  # type: ignore[arg-type]
            results.append(self._inprocess_result(item, index, reports, started))
        item.stash[replica_key] = len(self.specs) - 1
        item.stash[started_key] = time.perf_counter()
        return None  # the default protocol runs (and reports) the last replica

    def _inprocess_result(
        self, item: pytest.Item, index: int, reports: list[pytest.TestReport], started: float
    ) -> ReplicaResult:
        context = item.stash.get(context_key, None)
        outcome, error = outcome_of(reports)
        return ReplicaResult(
            item.nodeid,
            index,
            outcome,
            error,
            time.perf_counter() - started,
            record=context.close() if context else None,
            sources_used=sorted(context.sources_used) if context else [],
            environment=runtime_snapshot() if index == 0 else {},
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        last = len(self.specs) - 1
        judged_here = (
            not self.subprocess and is_repro_item(item) and (self.replica_index(item) == last)
        )
        error = ""
        try:
            result = yield  # in subprocess mode pytest_pyfunc_call below replaced the body
        except Exception:  # the last replica raised: judged like any replica (skips pass through)
            if not judged_here:
                raise
            import traceback

            error, result = traceback.format_exc(limit=-8), None
        if judged_here:
            started = item.stash.get(started_key, time.perf_counter())
            results = self._inprocess_results.pop(item.nodeid, [])
            last_result = self._inprocess_result(item, last, [], started)
            if error:
                last_result.outcome, last_result.error = "failed", error
            results.append(last_result)
            self._judge(item, iter(results))
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if not self.subprocess or not is_repro_item(pyfuncitem):
            return None
        pool = self.pool
        own_pool = pool is None
        if pool is None:  # xdist worker, or collected late: replicas just for this test
            pool = self._start_pool([pyfuncitem.nodeid], self.specs, _slug(pyfuncitem.nodeid))
        try:
            results = (pool.result(pyfuncitem.nodeid, spec.index) for spec in self.specs)
            self._judge(pyfuncitem, results)
        finally:
            if own_pool:
                pool.close()
        return True

    # --- verdicts
    def _judge(self, item: pytest.Item, results: Any) -> None:
        plan_root = root_seed_for_test(self.base_seed, item.nodeid)
        if self.options.save_checkpoints and self.options.report_dir is not None:
            results = self._saving_checkpoints(results, plan_root)
        verdict = judge(item.nodeid, plan_root, self.base_seed, self.specs, results)
        verdict.rerun_command = self.rerun_command(item)
        verdict.accept_command = self.accept_command(item)
        verdict.allowed = allowed_ops(item)
        if verdict.status == DIVERGED and verdict.allowed:
            self._localize_from_replicas(verdict)
        if (
            verdict.status == DIVERGED
            and (self.subprocess or verdict.allowed)
            and not (verdict.localization)
        ):
            # In-process replicas are investigated too when an allowance must be checked:
            # the reruns are fresh processes either way.
            self._investigate(item, verdict)
        if verdict.status == DIVERGED and verdict.allowed:
            self._apply_allowance(verdict)
        if verdict.status in (IDENTICAL, SINGLE, ALLOWED) and self.options.baseline != "off":
            self._baseline_stage(item, verdict)
        verdict.reference = verdict.other = None  # drop records: memory stays flat
        self.verdicts.append(render(verdict))
        item.user_properties.append(("repro_verdict", verdict.status))
        item.user_properties.append(("repro_seed", str(verdict.seed)))
        if verdict.first_divergence():
            item.user_properties.append(("repro_first_divergence", verdict.first_divergence()))
        if verdict.status == SKIPPED:
            pytest.skip(f"skipped in the replicas: {verdict.error}")
        if verdict.failed:
            raise ReproFailure(failure_message(verdict))

    def _baseline_stage(self, item: pytest.Item, verdict: TestVerdict) -> None:
        """Write the baseline (--repro-update) or compare the run with it."""
        from repro_check.core.atomic import StoredFileError
        from repro_check.orchestration import baseline as bl

        reference = verdict.reference
        assert reference is not None and reference.record is not None
        path = bl.baseline_path(self.config.rootpath, item.nodeid, self.options.baseline_dir)
        self._baselines_used.add(path)
        shown = os.path.relpath(path, self.config.invocation_params.dir)
        atol, rtol = self.tolerances(item)
        snapshot = reference.environment or runtime_snapshot()
        if self.options.update and self._baseline_unchanged(
            path, reference.record, snapshot, verdict.seed
        ):
            verdict.baseline = {"path": shown, "action": "unchanged"}
            return
        if self.options.update:
            bl.write_baseline(
                path,
                bl.build_baseline(
                    item.nodeid,
                    verdict.seed,
                    self.base_seed,
                    reference.record,
                    snapshot,
                    (atol, rtol),
                ),
            )
            verdict.baseline = {"path": shown, "action": "written"}
            return
        if not path.exists():
            verdict.status = BASELINE_MISSING
            verdict.baseline = {"path": shown, "action": "missing"}
            return
        try:
            document = bl.load_baseline(path)
        except StoredFileError as exc:
            verdict.status = BASELINE_MISMATCH
            verdict.baseline = {"path": shown, "action": "unreadable", "error": str(exc)}
            return
        allowance = ", ".join(verdict.allowed) if verdict.status == ALLOWED else ""
        if allowance:
            atol = max(
                atol, *(_tolerance_in(why, "atol", atol) for why in verdict.allowed.values())
            )
        check = bl.check_baseline(
            document,
            reference.record,
            snapshot,
            atol,
            rtol,
            allowed_nondeterminism=allowance,
            seed=verdict.seed,
        )
        verdict.baseline = {
            "path": shown,
            "action": "checked",
            "created": document.get("created"),
            **check.to_json(),
        }
        if check.failed:
            verdict.status = BASELINE_MISMATCH

    @staticmethod
    def _baseline_unchanged(path: Path, record: Any, snapshot: dict[str, Any], seed: int) -> bool:
        """--repro-update leaves a baseline alone when it already matches bit for bit in the
        same environment: accepting one change must not touch every file (syrupy does the same)."""
        from repro_check.core.atomic import StoredFileError
        from repro_check.orchestration import baseline as bl

        if not path.exists():
            return False
        try:
            check = bl.check_baseline(bl.load_baseline(path), record, snapshot, 0.0, 0.0, seed=seed)
        except StoredFileError:
            return False
        return not check.failed and check.mode == "bitwise"

    def _localize_from_replicas(self, verdict: TestVerdict) -> None:
        """Tests with allowances trace their replicas whole: diff those traces directly."""
        pair = [verdict.reference, verdict.other]
        divergence = verdict.comparison.divergence if verdict.comparison else None
        if (
            divergence is None
            or any(r is None or not r.run_info.get("trace_path") for r in pair)
            or verdict.other_replica is None
        ):
            return
        originals = [self.specs[0], self.specs[verdict.other_replica]]
        verdict.localization = localize_from_reruns(pair, divergence.step, originals)  # type: ignore[arg-type]
        verdict.localization["from"] = "the replicas' own traces"

    def _apply_allowance(self, verdict: TestVerdict) -> None:
        """Pass a divergence localised to an allowed op when the replicas agree within the
        stated tolerance; otherwise say why the allowance did not apply."""
        from repro_check.core.compare import within_tolerance

        loc = verdict.localization
        op = str(loc.get("op") or "")
        matched = next((name for name in verdict.allowed if _same_op_name(name, op)), None)
        if loc.get("kind") != "nondeterministic-op" or matched is None:
            found = f"{loc.get('kind')} {op}".strip() if loc else "not localised"
            verdict.notes.append(
                f"allowed nondeterminism ({', '.join(verdict.allowed)}) does not cover this "
                f"divergence (localised: {found})"
            )
            return
        rationale = verdict.allowed[matched]
        atol = _tolerance_in(rationale, "atol", self.options.atol)
        rtol = _tolerance_in(rationale, "rtol", 0.0)
        reference, other = verdict.reference, verdict.other
        if reference is None or other is None or reference.record is None or other.record is None:
            return
        check = within_tolerance(reference.record, other.record, atol, rtol)
        if check.within:
            verdict.status = ALLOWED
            verdict.notes.append(f"allowed: {matched} ({rationale}); {check.message}")
        else:
            verdict.notes.append(f"{matched} is allowed ({rationale}), but {check.message}")

    def tolerances(self, item: pytest.Item) -> tuple[float, float]:
        """Marker ``atol``/``rtol`` first, then the command line, then the ini file."""
        marker = item.get_closest_marker(MARKER)
        kwargs = marker.kwargs if marker else {}
        return (
            float(kwargs.get("atol", self.options.atol)),
            float(kwargs.get("rtol", self.options.rtol)),
        )

    def accept_command(self, item: pytest.Item) -> str:
        parts = ["pytest", "--repro", "--repro-update", *self._case_options()]
        return " ".join([*parts, shlex.quote(self._target(item))])

    def _saving_checkpoints(self, results: Any, seed: int) -> Any:
        from repro_check.orchestration.checkpoints import save_last_step

        assert self.options.report_dir is not None
        for result in results:
            if result.record is not None and result.record.steps:
                save_last_step(
                    self.options.report_dir / "checkpoints",
                    result,
                    {
                        "seed": seed,
                        "base_seed": self.base_seed,
                        "replica_spec": self.specs[result.replica].to_json()
                        if result.replica < len(self.specs)
                        else {},
                    },
                )
            yield result

    def _investigate(self, item: pytest.Item, verdict: TestVerdict) -> None:
        """Rerun the two parting replicas once more, with the same process settings.

        The rerun of replica 0 is a *control*: if it matches replica 0's first run bit for bit
        while the other replica differs, only process-level state (hash randomisation) differs.
        When localisation is on, both reruns trace every aten op of the step where they part,
        and the two traces are diffed to find the op (or the line where data entered).
        Intermittent nondeterminism may part elsewhere (or not at all) in a rerun: the window
        follows the reruns' own first divergence, for up to LOCALIZE_ATTEMPTS attempts.
        """
        from repro_check.core.compare import compare_runs

        divergence = verdict.comparison.divergence if verdict.comparison else None
        # judge() keeps replica 0's result on the verdict until the verdict is stored.
        reference = verdict.reference.record if verdict.reference else None
        if divergence is None or reference is None or verdict.other_replica is None:
            return
        localize = self._should_localize(verdict)
        originals = [self.specs[0], self.specs[verdict.other_replica]]
        steps = [s.step for s in reference.steps]
        step = divergence.step
        for attempt in range(LOCALIZE_ATTEMPTS if localize else 1):
            reruns = self._traced_reruns(item, originals, steps, step, localize, attempt)
            control = reruns[0]
            if (  # the control only speaks for replicas that ran in processes of their own
                attempt == 0
                and self.subprocess
                and control.outcome == "passed"
                and control.record is not None
            ):
                verdict.diagnosis = self._process_state_finding(
                    compare_runs(reference, control.record).identical
                )
            if not localize:
                return
            found = localize_from_reruns(
                reruns, step, originals, window_start(steps, step, attempt)
            )
            found["attempts"] = attempt + 1
            if found.get("kind") != "identical" or verdict.localization.get("kind") in (
                None,
                "identical",
                "unavailable",
            ):  # a later attempt that saw nothing never replaces one that named the culprit
                verdict.localization = found
            parted = _rerun_divergence_step(reruns)
            if parted is None or parted == step:
                if parted == step or attempt == LOCALIZE_ATTEMPTS - 1:
                    return
                continue  # did not recur: try the same window again
            step = parted  # the reruns parted elsewhere: trace where they did

    def _traced_reruns(
        self,
        item: pytest.Item,
        originals: list[ReplicaSpec],
        steps: list[int],
        step: int,
        localize: bool,
        attempt: int,
    ) -> list[ReplicaResult]:
        from concurrent.futures import ThreadPoolExecutor

        window = {"start_after": window_start(steps, step, attempt), "stop_at": step}
        folder = self.tmpdir / f"investigate-{_slug(item.nodeid)}-{attempt}"
        specs, jobs = [], []
        for index, original in enumerate(originals[: 2 if localize else 1]):
            spec = ReplicaSpec(
                index,
                dict(original.env),
                original.num_threads,
                label=f"rerun of replica {original.index}",
            )
            trace = {**window, "path": str(folder / f"trace-{index}.jsonl")} if localize else None
            specs.append(spec)
            jobs.append(
                self._worker_job(
                    [item.nodeid],
                    spec,
                    f"{folder.name}/{index}",
                    runs=[RunSpec(str(index), trace=trace)],
                )
            )
        pool = ReplicaPool(jobs, ThreadPoolExecutor(max_workers=min(self.options.jobs, len(jobs))))
        pool.start()
        try:
            return [pool.result(item.nodeid, spec.index) for spec in specs]
        finally:
            pool.close()

    def _should_localize(self, verdict: TestVerdict) -> bool:
        mode = self.options.localize
        if mode == "never":
            return False
        # "auto": a rerun of two replicas is cheap next to the runs already made.
        return mode == "always" or verdict.duration / max(1, len(self.specs)) < LOCALIZE_AUTO_S

    def _process_state_finding(self, control_matches: bool) -> str:
        reference_spec = self.specs[0]
        differing = sorted(
            {
                key
                for spec in self.specs
                for key in spec.env
                if spec.env.get(key) != reference_spec.env.get(key)
            }
        )
        if control_matches:
            return (
                f"only process-level state differs: a control replica with replica 0's "
                f"settings ({reference_spec.describe()}) reproduced replica 0 bit for bit, "
                f"while replicas differing in {', '.join(differing) or 'process state'} "
                f"diverged. With PYTHONHASHSEED this is hash randomisation: iteration over a "
                f"set (or dict built from one) of str/bytes, or hash() of a string, decides "
                f"something in the run. Sort before iterating (sorted(set_of_names))."
            )
        return (
            "a control replica with replica 0's exact process settings also diverged from "
            "it: the nondeterminism is inside the run (thread scheduling in an op, an "
            "unseeded RNG, the data pipeline), not process-level state."
        )

    def _target(self, item: pytest.Item) -> str:
        path, _, rest = item.nodeid.partition("::")
        relative = os.path.relpath(self.config.rootpath / path, self.config.invocation_params.dir)
        return relative + ("::" + rest if rest else "")

    def _case_options(self) -> list[str]:
        """The options that decide what a case computes, and where its baseline lives."""
        parts = [f"--repro-seed={self.base_seed}"]
        if self.options.deterministic:
            parts.append("--repro-deterministic")
        if self.config.getoption("repro_steps") is not None:
            parts.append(f"--repro-steps={self.config.getoption('repro_steps')}")
        if not self.subprocess:
            parts.append("--repro-mode=inprocess")
        if self.config.getoption("repro_baseline_dir"):
            parts.append(f"--repro-baseline-dir={self.config.getoption('repro_baseline_dir')}")
        return parts

    def rerun_command(self, item: pytest.Item) -> str:
        seed, *others = self._case_options()
        parts = ["pytest", "--repro", seed, f"--repro-runs={self.options.runs}", *others]
        return " ".join([*parts, shlex.quote(self._target(item))])

    # --- summary and reports
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.verdicts:
            return
        terminalreporter.section("repro summary")
        terminalreporter.write_line(summary_table(self.verdicts))
        total = sum(v.json["bytes_fingerprinted"] for v in self.verdicts)
        failed = sum(v.json["status"] in FAILING for v in self.verdicts)
        terminalreporter.write_line(
            f"{len(self.verdicts)} tests, {failed} not reproducible or failing; "
            f"{human_bytes(total)} fingerprinted; base seed {self.base_seed}"
        )
        for verdict in self.verdicts:
            if verdict.json["nonfinite"] and verdict.json["status"] not in FAILING:
                terminalreporter.write_line(  # reproducible, yet worth knowing
                    f"warning: {verdict.json['nodeid']} reproducibly produced non-finite values "
                    f"(first: {verdict.json['nonfinite']})",
                    yellow=True,
                )
        for verdict in self.verdicts:
            for op, why in (verdict.json.get("allowed_nondeterminism") or {}).items():
                if verdict.json["status"] == ALLOWED:
                    terminalreporter.write_line(
                        f"allowed nondeterminism in {verdict.json['nodeid']}: {op} -- {why}"
                    )
        for path in self._unused_baselines():
            terminalreporter.write_line(
                f"unused baseline (no collected test uses it; delete it if the test is gone): "
                f"{os.path.relpath(path, self.config.invocation_params.dir)}",
                yellow=True,
            )
        self._report_footer(terminalreporter, ", ".join(map(str, self._report_paths)))

    def _report_footer(self, terminalreporter: Any, written: str) -> None:
        if self._report_paths:
            terminalreporter.write_line(f"report: {written}")
        if self._report_error:
            terminalreporter.write_line(self._report_error, red=True)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.pool is not None:
            self.pool.close()
        for spill in self._spills.values():
            spill.close()
        if getattr(self.config, "cache", None) is not None:
            self.config.cache.set(CACHE_KEY, self.base_seed)
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reports for everyone
            workeroutput["repro_verdicts"] = [v.to_json() for v in self.verdicts]
            workeroutput["repro_baselines_used"] = sorted(map(str, self._baselines_used))
            return
        if self.verdicts:
            self._write_step_summary()
        if self.verdicts and self.options.report_dir is not None:
            try:
                self._report_paths = write_reports(
                    self.options.report_dir, self.verdicts, session=self.session_info()
                )
                self._report_paths.append(self._write_environment(self.options.report_dir))
            except OSError as exc:
                self._report_error = (
                    f"repro-check: could not write the report to {self.options.report_dir}: "
                    f"{exc.strerror or exc}; choose another folder with --repro-report=DIR"
                )

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: gather the verdicts each worker judged."""
        output = getattr(node, "workeroutput", {}) or {}
        self.verdicts.extend(RenderedVerdict.from_json(v) for v in output.get("repro_verdicts", []))
        self._baselines_used.update(Path(p) for p in output.get("repro_baselines_used", []))

    def _unused_baselines(self) -> list[Path]:
        """Like syrupy's unused snapshots -- only when whole files were collected unfiltered."""
        from repro_check.orchestration.baseline import find_unused

        option = self.config.option
        filtered = (
            getattr(option, "keyword", "")
            or getattr(option, "markexpr", "")
            or any("::" in str(arg) for arg in self.config.args)
        )
        if filtered or self.options.baseline == "off" or not self._baselines_used:
            return []
        return find_unused({p.parent for p in self._baselines_used}, self._baselines_used)

    def _write_step_summary(self) -> None:
        """Append the summary to GitHub Actions' job summary when it is available."""
        target = os.environ.get("GITHUB_STEP_SUMMARY")
        if not target:
            return
        try:
            with open(target, "a", encoding="utf-8") as handle:
                handle.write("## repro-check\n\n" + summary_table(self.verdicts, "github") + "\n\n")
        except OSError:
            pass

    def _write_environment(self, directory: Path) -> Path:
        from repro_check.core import environment

        path = directory / "environment.json"
        environment.save(environment.capture(repo_dir=str(self.config.rootpath)), path)
        return path

    def session_info(self) -> dict[str, Any]:
        args = self.config.invocation_params.args
        return {
            "command": " ".join(["pytest", *map(shlex.quote, args)]),
            "base_seed": self.base_seed,
            "runs": self.options.runs,
            "mode": self.options.mode,
            "deterministic": self.options.deterministic,
            "replicas": [spec.to_json() for spec in self.specs],
            "environment": runtime_summary(),
            "environment_file": "environment.json",
        }

    def pytest_unconfigure(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self._restore_determinism()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if call.excinfo is not None and isinstance(call.excinfo.value, ReproFailure):
            report.longrepr = str(call.excinfo.value)
        return report


def window_start(steps: list[int], step: int, attempt: int) -> int | None:
    """The recorded step after which tracing starts (None: from the start of the test).

    The first attempt traces only the divergent step; retries trace from the start, because an
    intermittent divergence may part earlier in a rerun than in the original run.
    """
    position = steps.index(step) if step in steps else 0
    return steps[position - 1] if position and attempt == 0 else None


def _rerun_divergence_step(reruns: list[ReplicaResult]) -> int | None:
    """Where two traced reruns first part (None: they agree, or cannot be compared)."""
    from repro_check.core.compare import compare_runs

    if len(reruns) < 2 or any(r.record is None or r.outcome != "passed" for r in reruns):
        return None
    comparison = compare_runs(reruns[0].record, reruns[1].record)  # type: ignore[arg-type]
    if comparison.divergence is not None:
        return comparison.divergence.step
    if comparison.structural is not None:
        return comparison.structural.step
    return None


def _same_op_name(allowed: str, op: str) -> bool:
    """``aten::index_put`` allows aten::index_put, aten::index_put_ and their overloads."""

    def base(name: str) -> str:
        return name.split(".")[0].rstrip("_")

    return bool(op) and base(allowed) == base(op)


def _tolerance_in(rationale: str, name: str, default: float) -> float:
    import re

    match = re.search(rf"{name}\s*=\s*([0-9.eE+-]+)", rationale)
    return float(match.group(1)) if match else default


def _slug(nodeid: str) -> str:
    import hashlib

    return hashlib.sha1(nodeid.encode()).hexdigest()[:12]
