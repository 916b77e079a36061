"""``pytest --repro``: the hooks of the parent session.

The hooks only move data between pytest and the orchestration layer: they start the replica
pool after collection, hand each marked test's replica results to the
:class:`~repro_check.orchestration.replay.VerdictPipeline` (which decides everything), turn the
verdict into a pass, skip or failure, and write the summary and reports at the end.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from repro_check.core.paths import NoSpaceError, UnsafePathError, id_to_name, inside
from repro_check.core.record import Recorder
from repro_check.orchestration.case import SessionSettings
from repro_check.orchestration.executor import ReplicaPool
from repro_check.orchestration.gate import BaselineGate
from repro_check.orchestration.guards import on_interpreter_exit
from repro_check.orchestration.investigation import LOCALIZE_ATTEMPTS, TraceWindow
from repro_check.orchestration.launcher import WorkerLauncher, WorkerSettings
from repro_check.orchestration.replay import VerdictPipeline
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec, default_specs
from repro_check.orchestration.variant_stage import VariantStage
from repro_check.orchestration.verdict import SKIPPED
from repro_check.pytest_plugin.catalog import noting_reference
from repro_check.pytest_plugin.inprocess import InProcessReplicas, last_replica_error
from repro_check.pytest_plugin.items import (
    ReproFailure,
    case_for,
    is_repro_item,
    replica_key,
    replica_timeouts,
    uses_hypothesis,
)
from repro_check.pytest_plugin.options import CACHE_KEY, Options, warm_starts
from repro_check.pytest_plugin.resume import SessionResumes
from repro_check.pytest_plugin.seeded import SeededSession, maybe_deterministic
from repro_check.pytest_plugin.variants import (
    Cluster,
    extra_jobs,
    plan_session,
    results_of,
    variant_options,
)
from repro_check.pytest_plugin.worker import (
    runtime_snapshot,
    runtime_summary,
)
from repro_check.reporting.progress import (
    REPLICA_DELAY_S,
    LiveProgress,
    Progress,
    policy_for,
    rerun_note,
)
from repro_check.reporting.terminal import (
    SessionReport,
    checkpoint_lines,
    plural,
    summary_lines,
    write_step_summary,
)
from repro_check.reporting.verdicts import RenderedVerdict, failure_message, render


def worker_settings(config: pytest.Config, options: Options) -> WorkerSettings:
    """What a worker pytest must inherit from this one."""
    import os

    return WorkerSettings(
        rootpath=config.rootpath,
        invocation_dir=config.invocation_params.dir,
        base_seed=options.base_seed,
        spill_bytes=options.spill_bytes,
        jobs=options.jobs,
        inipath=config.inipath,
        import_mode=str(config.option.importmode),
        steps_override=config.getoption("repro_steps"),
        deterministic=options.deterministic,
        timeout=options.timeout,
        load_plugin=config.pluginmanager.get_plugin("repro") is None
        or bool(os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")),
    )


def live_progress(
    item: pytest.Item,
    label: str,
    total: int,
    unit: str,
    *,
    delays: Mapping[str, float] = REPLICA_DELAY_S,
    done: int = 0,
    estimate: bool = True,
) -> LiveProgress:
    """Progress of long work inside ``item``, through the terminal reporter (never in an xdist
    worker, whose output nobody sees)."""
    config = item.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if hasattr(config, "workerinput"):
        reporter = None
    verbosity = config.option.verbose
    policy = policy_for(bool(getattr(reporter, "isatty", False)), verbosity, delays)

    def resume() -> None:
        # pytest writes the outcome letter on the current line: give it "path/test_x.py " back
        # (with -v it starts a fresh line, with the test's name, by itself)
        if reporter is not None and verbosity <= 0:
            reporter.write_fspath_result(item.nodeid, "")

    capture = config.pluginmanager.get_plugin("capturemanager")
    progress = Progress(label, total, unit, policy, done=done, estimate=estimate)
    return LiveProgress(progress, reporter, capture, resume)


def session_settings(config: pytest.Config, options: Options) -> SessionSettings:
    return SessionSettings(
        base_seed=options.base_seed,
        runs=options.runs,
        deterministic=options.deterministic,
        steps_override=config.getoption("repro_steps"),
        inprocess=options.mode == "inprocess",
        baseline_dir=str(config.getoption("repro_baseline_dir") or ""),
        extra=variant_options(options),
    )


def replica_specs(options: Options) -> list[ReplicaSpec]:
    specs = default_specs(options.runs, subprocess=options.mode == "subprocess")
    if options.deterministic:
        from repro_check.core.determinism import DETERMINISTIC_ENV

        specs = [
            ReplicaSpec(s.index, {**s.env, **DETERMINISTIC_ENV}, s.num_threads, s.label)
            for s in specs
        ]
    return specs


def make_launcher(config: pytest.Config, options: Options) -> WorkerLauncher:
    """The session's replica launcher. A full disk, or a ``checkpoints`` folder that is a link
    out of the report folder, is a usage error before any work."""
    if options.save_checkpoints and options.report_dir is not None:
        folder = options.report_dir / "checkpoints"
        try:
            inside(folder, folder, "checkpoints")
        except UnsafePathError as exc:
            raise pytest.UsageError(str(exc)) from None
    try:
        return WorkerLauncher(worker_settings(config, options))
    except NoSpaceError as exc:
        raise pytest.UsageError(str(exc)) from None


class ParentSession(SeededSession):
    """``pytest --repro``: runs replicas, judges each marked test, reports."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        self.base_seed = options.base_seed
        self.subprocess = options.mode == "subprocess"
        self.specs = replica_specs(options)
        self.launcher = make_launcher(config, options)
        self._restore_determinism = maybe_deterministic(options.deterministic)
        self.gate = (
            BaselineGate(
                config.rootpath,
                config.invocation_params.dir,
                options.baseline_dir,
                update=options.update,
                missing=options.missing_baseline,
                steps_overridden=config.getoption("repro_steps") is not None,
            )
            if options.baseline != "off"
            else None
        )
        self.resumes = SessionResumes(self.launcher, self.specs[0], options)
        self.pipeline = VerdictPipeline(
            session_settings(config, options),
            self.specs,
            rerunner=self._rerun,
            gate=self.gate,
            localize_mode=options.localize,
            subprocess=self.subprocess,
            checkpoint_dir=options.report_dir / "checkpoints"
            if options.save_checkpoints and options.report_dir is not None
            else None,
            snapshot=runtime_snapshot,
            resumer=self.resumes.results,
            records_dir=options.report_dir,  # each test's record, for repro-check compare
        )
        self.report = SessionReport()
        self.cluster = Cluster()  # --repro-executor=dask: started at collection
        #: Per test: replica 0's per-key record digests (the run catalog's archive).
        self.key_tables: dict[str, Any] = {}
        self.pool: ReplicaPool | None = None
        self._live: LiveProgress | None = None  # progress of the test being judged
        self.launcher.on_wait = self._tick
        self.inprocess = InProcessReplicas(
            len(self.specs), self.launcher.tmpdir, options.spill_bytes
        )
        #: Every test collected or deselected: a baseline of one of them is not "unused".
        self._known: set[str] = set()
        self._guards = ExitStack()
        self._running_item: pytest.Item | None = None  # in-process: the test running now

    # --- header
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        how = (
            "fresh processes (" + "; ".join(s.describe() for s in self.specs) + ")"
            if self.subprocess
            else "this process"
        )
        mode = "; deterministic algorithms on" if self.options.deterministic else ""
        lines = [
            f"repro-check: base seed {self.base_seed} (rerun with --repro-seed={self.base_seed}); "
            f"{plural(self.options.runs, 'replica')} per test in {how}{mode}"
        ]
        if not self.subprocess:
            lines.append(
                "repro-check: in-process replicas share one PYTHONHASHSEED, so they cannot show "
                "hash randomisation (set iteration order); --repro-mode=subprocess can"
            )
        return lines

    # --- replica processes
    def pytest_deselected(self, items: Sequence[pytest.Item]) -> None:
        self._known.update(item.nodeid for item in items)  # not run now, but not gone either

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._known.update(item.nodeid for item in session.items)
        self.launcher.for_tests(uses_hypothesis(session.items))
        self.resumes.plan(session)
        self.launcher.timeouts = replica_timeouts(session.items)
        if not session.config.option.collectonly:
            self._plan_variants(session.items)
        if not self.subprocess or session.config.option.collectonly:
            return
        nodeids = [item.nodeid for item in session.items if is_repro_item(item)]
        if not nodeids:
            self.launcher.warm.close()
            return
        variants = extra_jobs(self.pipeline.variants.plan if self.pipeline.variants else [])
        executor = self.cluster.executor
        if executor is None:
            # Local replicas serve: all start now, on the interpreters warmed up at configure,
            # and run each test when this session reaches it, at most --repro-jobs at a time.
            # Under xdist that is the only way to share them: its tests are not known yet.
            self.pool = self.launcher.pool(
                nodeids, self.specs, "session", extra=variants, serve=True
            )
        elif not hasattr(session.config, "workerinput"):
            self.pool = self.launcher.pool(
                nodeids, self.specs, "session", extra=variants, executor=executor
            )
        # else: xdist on a Dask cluster, whose processes cannot be asked: each test starts
        # its own (see pytest_pyfunc_call)

    def _plan_variants(self, items: Sequence[pytest.Item]) -> None:
        """Backend variants (--repro-variants, marker variants=[...]) judged by the pipeline;
        replicas and variants on a Dask cluster under --repro-executor=dask."""
        self.cluster = Cluster.for_config(self.config, self.options.jobs)
        plan = plan_session(
            items, self.options, len(self.specs), gpu_workers=self.cluster.gpu_workers
        )
        if plan:
            self.pipeline.variants = VariantStage(
                plan, rerunner=self._rerun, localize_mode=self.options.localize
            )

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if not self.subprocess or not is_repro_item(pyfuncitem):
            return None
        pool = self.pool
        own_pool = pool is None
        if pool is None:  # xdist on Dask, or collected late: replicas just for this test
            plan = self.pipeline.variants.plan if self.pipeline.variants else []
            pool = self.launcher.pool(
                [pyfuncitem.nodeid],
                self.specs,
                id_to_name(pyfuncitem.nodeid),
                extra=extra_jobs(plan, only=pyfuncitem.nodeid),
            )
        self._live = live_progress(
            pyfuncitem, f"repro {pyfuncitem.nodeid}", len(self.specs), "replicas", estimate=False
        )
        try:
            self._judge(
                pyfuncitem,
                self._results(pool, pyfuncitem.nodeid, self._live),
                results_of(pool, pyfuncitem.nodeid, self._live.tick),
            )
        finally:
            self._live.finish()
            self._live = None
            if own_pool:
                pool.close()
        return True

    def _results(
        self, pool: ReplicaPool, nodeid: str, live: LiveProgress
    ) -> Iterator[ReplicaResult]:
        for spec in self.specs:
            result = pool.result(nodeid, spec.index, live.tick)
            live.advance(failed=int(result.outcome in ("failed", "crashed")))
            yield result

    # --- progress of long work
    def _tick(self) -> None:
        if self._live is not None:
            self._live.tick()

    def _rerun(
        self,
        nodeid: str,
        originals: Sequence[ReplicaSpec],
        window: TraceWindow | None,
        attempt: int,
    ) -> list[ReplicaResult]:
        """The investigation's rerunner, saying what it reruns (tracing takes a while)."""
        if self._live is not None:
            self._live.note(rerun_note(originals, window, attempt, LOCALIZE_ATTEMPTS))
        return self.launcher.rerun(nodeid, originals, window, attempt)

    # --- in-process replicas
    def replica_index(self, item: pytest.Item) -> int:
        return item.stash.get(replica_key, 0)

    def make_recorder(self, item: pytest.Item) -> Recorder | None:
        if self.subprocess:
            return None  # the parent does not run the body; the workers record
        return self.inprocess.recorder(self.replica_index(item))

    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        if self.subprocess or not is_repro_item(item):
            return None
        self._running_item = item
        self.inprocess.run_all_but_last(item)
        return None  # the default protocol runs (and reports) the last replica

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        judged_here = (
            not self.subprocess
            and is_repro_item(item)
            and self.replica_index(item) == self.inprocess.last
        )
        error = ""
        try:
            result = yield  # in subprocess mode pytest_pyfunc_call replaced the body
        except Exception:  # the last replica raised: judged like any replica (skips pass through)
            if not judged_here:
                raise
            error, result = last_replica_error(), None
        if judged_here:
            self._judge(item, self.inprocess.finish(item, error))
        return result

    # --- verdicts
    def _judge(
        self, item: pytest.Item, results: Iterable[ReplicaResult], variant_results: Any = None
    ) -> None:
        facts: dict[str, Any] = {}  # replica 0's record digests and data versions (catalog)
        results = noting_reference(results, facts)
        verdict = self.pipeline.decide(case_for(item, self.options), results, variant_results)
        rendered = render(verdict)
        if "key_table" in facts:
            self.key_tables[item.nodeid] = facts.pop("key_table")
        rendered.json.update(facts)
        self.report.verdicts.append(rendered)
        item.user_properties.append(("repro_verdict", verdict.status))
        item.user_properties.append(("repro_seed", str(verdict.seed)))
        if verdict.first_divergence():
            item.user_properties.append(("repro_first_divergence", verdict.first_divergence()))
        if verdict.status == SKIPPED:
            pytest.skip(f"skipped in the replicas: {verdict.error}")
        if verdict.failed:
            raise ReproFailure(failure_message(verdict))

    # --- summary and reports
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.report.verdicts:
            return
        terminalreporter.section("repro summary")
        for line, markup in summary_lines(self.report.verdicts, self.base_seed):
            terminalreporter.write_line(line, **markup)
        from repro_check.reporting.drift import variant_lines

        for line, markup in variant_lines(self.report.verdicts):
            terminalreporter.write_line(line, **markup)
        for path in unused_baselines(self.config, self.gate, self._known):
            terminalreporter.write_line(
                f"unused baseline (no collected test uses it; delete it if the test is gone): "
                f"{_shown(path, self.config)}",
                yellow=True,
            )
        self.report.footer(terminalreporter)
        if self.options.save_checkpoints and self.options.report_dir is not None:
            nodeids = [v.json["nodeid"] for v in self.report.verdicts]
            folder = self.options.report_dir / "checkpoints"
            for line in checkpoint_lines(folder, nodeids, self.config.invocation_params.dir):
                terminalreporter.write_line(line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.pool is not None:  # xdist stops its worker soon; else exits overlap the summary
            (self.pool.close if hasattr(self.config, "workerinput") else self.pool.stop)()
        self.inprocess.close()
        if getattr(self.config, "cache", None) is not None:
            self.config.cache.set(CACHE_KEY, self.base_seed)
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reports for everyone
            workeroutput["repro_verdicts"] = [v.to_json() for v in self.report.verdicts]
            used = self.gate.used if self.gate else set()
            workeroutput["repro_baselines_used"] = sorted(map(str, used))
            workeroutput["repro_collected"] = sorted(self._known)
            workeroutput["repro_key_tables"] = self.key_tables
            return
        if self.report.verdicts:
            write_step_summary(self.report.verdicts)
        if self.report.verdicts and self.options.report_dir is not None:
            self.report.write_files(
                self.options.report_dir, session_info(self), self.config.rootpath
            )

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: gather the verdicts each worker judged."""
        output = getattr(node, "workeroutput", {}) or {}
        self.report.verdicts.extend(
            RenderedVerdict.from_json(v) for v in output.get("repro_verdicts", [])
        )
        if self.gate is not None:
            self.gate.used.update(Path(p) for p in output.get("repro_baselines_used", []))
        self._known.update(output.get("repro_collected", []))
        self.key_tables.update(output.get("repro_key_tables", {}))

    def pytest_unconfigure(self) -> None:
        pool = [self.pool.close] if self.pool is not None else []
        with ExitStack() as closing:  # each runs (the last first) whatever the others raise
            for close in (self.launcher.close, self._restore_determinism, self.cluster.close):
                closing.callback(close)
            for close in (self._guards.close, self.resumes.close, *pool):
                closing.callback(close)

    # --- warm interpreters; in-process mode: a test that ends the interpreter
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if warm_starts(self.config, self.options, self.subprocess):  # not at configure: --help
            self.launcher.warm_up(self.specs)
        if not self.subprocess:
            self._guards.enter_context(on_interpreter_exit(partial(report_interpreter_exit, self)))


def unused_baselines(
    config: pytest.Config, gate: BaselineGate | None, known: set[str]
) -> list[Path]:
    """Like syrupy's unused snapshots -- only when whole files were collected unfiltered."""
    from repro_check.orchestration.baseline import find_unused

    option = config.option
    filtered = (
        getattr(option, "keyword", "")
        or getattr(option, "markexpr", "")
        or any("::" in str(arg) for arg in config.args)
    )
    if filtered or gate is None or not gate.used:
        return []
    # A test that was collected but did not run now (skipped, deselected) keeps its baseline.
    kept = {gate.path_for(nodeid) for nodeid in known} | gate.used
    return find_unused({p.parent for p in gate.used}, kept)


def session_info(session: ParentSession) -> dict[str, Any]:
    """The session facts report.json keeps: command, seeds, replicas, environment summary."""
    args = session.config.invocation_params.args
    return {
        "command": " ".join(["pytest", *map(shlex.quote, args)]),
        "base_seed": session.base_seed,
        "runs": session.options.runs,
        "mode": session.options.mode,
        "deterministic": session.options.deterministic,
        "replicas": [spec.to_json() for spec in session.specs],
        "environment": runtime_summary(),
        "environment_file": "environment.json",
    }


def report_interpreter_exit(session: ParentSession, status: int) -> None:
    """A test running in this process called ``os._exit``: it fails, the report is
    written, and the reason printed -- then the process ends as the test asked."""
    item = session._running_item
    index = session.replica_index(item) if item is not None else 0
    reason = (
        f"the test called os._exit({status}) in in-process replica {index}, which ends "
        f"the interpreter: the session stops here. Run it with --repro-mode=subprocess, "
        f"where a replica that exits fails only its own test."
    )
    if item is not None:
        crashed = ReplicaResult(item.nodeid, index, "crashed", error=reason)
        verdict = session.pipeline.decide(case_for(item, session.options), [crashed])
        session.report.verdicts.append(render(verdict))
    written = ""
    if session.report.verdicts and session.options.report_dir is not None:
        session.report.write_files(
            session.options.report_dir, session_info(session), session.config.rootpath
        )
        written = f"\nrepro-check: report written to {session.options.report_dir}"
    capman = session.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else nullcontext():
        name = item.nodeid if item is not None else "a test"
        sys.stderr.write(f"\nrepro-check: {name}: {reason}{written}\n")
        sys.stderr.flush()


def _shown(path: Path, config: pytest.Config) -> str:
    import os

    return os.path.relpath(path, config.invocation_params.dir)
