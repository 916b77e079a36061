"""``pytest --repro-sensitivity``: the seed-sensitivity sweep, as a pytest session.

Every marked test is run K times per randomness source, each run varying only that source's
seed (``repro.seed_for(source)``), plus K runs varying all of them. Runs execute in worker
processes through an executor (``--repro-jobs`` at once; a Dask client's executor with
``--repro-executor=dask``), results stream into ``REPORT_DIR/sensitivity/runs.jsonl`` so an
interrupted sweep resumes, and the analysis (repro_check.reporting.sensitivity) writes the report.
"""

from __future__ import annotations

import os
import shlex
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from repro_check.core.outcomes import outcome_specs
from repro_check.orchestration.executor import ReplicaPool
from repro_check.orchestration.launcher import WorkerLauncher
from repro_check.orchestration.replicas import ReplicaSpec, RunSpec
from repro_check.orchestration.sweep import (
    BACKEND,
    BITFLIP,
    DEFAULT_SOURCES,
    STORE_NAME,
    SweepStore,
    parse_crossed,
    plan_runs,
    prediction_agreement,
    result_row,
    run_inputs,
    runs_frame,
    source_files_of,
    split_round_robin,
)
from repro_check.pytest_plugin.items import (
    ReproFailure,
    is_repro_item,
    steps_for,
    sweep_root_seed,
    target_of,
    uses_hypothesis,
)
from repro_check.pytest_plugin.options import Options, warm_starts
from repro_check.pytest_plugin.parent import live_progress, worker_settings
from repro_check.pytest_plugin.seeded import SeededSession
from repro_check.pytest_plugin.worker import runtime_summary
from repro_check.reporting.progress import SWEEP_DELAY_S
from repro_check.reporting.terminal import SessionReport, plural, write_environment


class SensitivityFailure(ReproFailure):
    """Runs of a sweep raised: the test itself is broken (the sweep data is still reported)."""


class SensitivitySession(SeededSession):
    """``--repro-sensitivity``: plans the sweep, runs it through worker processes (always:
    sweeps never run in this process), collects one row per run, writes the report."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        self.base_seed = options.base_seed
        self.launcher = WorkerLauncher(worker_settings(config, options))
        self.report = SessionReport()
        self.pool: ReplicaPool | None = None
        self.k = int(config.getoption("repro_seeds"))
        names = config.getoption("repro_sources")
        self.sources = (
            [s.strip() for s in names.split(",") if s.strip()] if names else list(DEFAULT_SOURCES)
        )
        self.only = config.getoption("repro_only_run")
        self.threads = int(config.getoption("repro_sweep_threads"))
        # Sweep workers use --repro-sweep-threads each (1): one worker per core fits.
        self.jobs = int(config.getoption("repro_jobs") or os.cpu_count() or 1)
        self.crossed_options = (
            config.getoption("repro_crossed"),
            config.getoption("repro_crossed_seeds"),
        )
        try:
            crossed, shape = parse_crossed(*self.crossed_options, self.k)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.runs = plan_runs(self.sources, self.k, self.only, crossed, shape)
        if not self.runs:
            raise pytest.UsageError(
                f"--repro-only-run={self.only}: no such run; runs are named SOURCE:K with K "
                f"in 0..{self.k - 1} and SOURCE in {', '.join([*self.sources, 'all'])}"
            )
        folder = (options.report_dir or Path(config.rootpath, "reports")) / "sensitivity"
        if self.only:  # one run, replayed for real, reported apart from the sweep it came from
            folder = folder / f"only-{self.only.replace(':', '-')}"
        self.folder = folder
        self.store = SweepStore(folder / STORE_NAME, self.base_seed)
        self.rows: list[dict[str, Any]] = []
        self.resumed = 0
        self._done: dict[tuple[str, str], dict[str, Any]] = {}
        #: What decides each test's numbers (compared with stored runs on resume).
        self.inputs: dict[str, dict[str, Any]] = {}
        self.store_messages: list[str] = []
        self._dask: tuple[Any, Any] | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if warm_starts(self.config, self.options):  # sweeps always run in fresh processes
            workers = len(split_round_robin(self.runs, self.jobs))
            self.launcher.warm_up([self.worker_spec(index) for index in range(workers)])

    def worker_spec(self, index: int) -> ReplicaSpec:
        # One torch thread per worker, whatever --repro-jobs is: workers then do not fight
        # over cores, and a run's numbers do not depend on how many ran beside it.
        return ReplicaSpec(index, num_threads=self.threads, label=f"sweep worker {index}")

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [
            f"repro-check sensitivity: base seed {self.base_seed}; {plural(self.k, 'run')} x "
            f"{', '.join(dict.fromkeys([*self.sources, 'all']))}; {self.jobs} at once; "
            f"results in {self.store.path}"
        ]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if session.config.option.collectonly:
            return
        items = [item for item in session.items if is_repro_item(item)]
        nodeids = [item.nodeid for item in items]
        if not nodeids:
            self.launcher.warm.close()
            return
        self.launcher.for_tests(uses_hypothesis(items))
        for item in items:
            self.inputs[item.nodeid] = run_inputs(
                source_files=source_files_of(Path(item.path), Path(self.config.rootpath)),
                steps=steps_for(item),
                root_seed=sweep_root_seed(item, self.base_seed),
                threads=self.threads,
                deterministic=self.options.deterministic,
            )
        if not self.only:
            stored = self.store.load(self.inputs, {run.run_id for run in self.runs})
            self._done, self.store_messages = stored.done, stored.messages
        skip = [
            (nodeid, run.run_id)
            for nodeid in nodeids
            for run in self.runs
            if (nodeid, run.run_id) in self._done
        ]
        buckets = split_round_robin(self.runs, self.jobs)
        jobs = []
        run_jobs = {}
        for index, bucket in enumerate(buckets):
            spec = self.worker_spec(index)
            jobs.append(
                self.launcher.job(
                    nodeids, spec, f"sweep-{index}", runs=bucket, skip=skip, metrics_only=True
                )
            )
            run_jobs.update({run.run_id: index for run in bucket})
        if self.config.getoption("repro_executor") != "dask":  # local processes
            self.launcher.start_warm(jobs)
        self.pool = ReplicaPool(
            jobs, self._executor(len(jobs)), run_jobs=run_jobs, relaunch=self.launcher.relaunch
        )
        self.pool.start()

    def _executor(self, workers: int) -> Executor:
        """Local threads that each babysit one worker process, or a Dask cluster's executor
        (the worker processes then start on the Dask workers, which must see this folder)."""
        if self.config.getoption("repro_executor") != "dask":
            return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="repro-sweep")
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise pytest.UsageError(
                "--repro-executor=dask needs Dask: pip install 'repro-check[dask]'"
            ) from None
        address = self.config.getoption("repro_dask_scheduler")
        if address:
            self._dask = (Client(address), None)
        else:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            self._dask = (Client(cluster), cluster)
        return self._dask[0].get_executor()

    def run_command(self, item: pytest.Item, run: RunSpec) -> str:
        return " ".join(
            [
                "pytest",
                "--repro-sensitivity",
                f"--repro-seed={self.base_seed}",
                f"--repro-seeds={self.k}",
                f"--repro-sweep-threads={self.threads}",
                f"--repro-sources={','.join(self.sources)}",
                f"--repro-only-run={run.run_id}",
                *(
                    [f"--repro-crossed={self.crossed_options[0]}"]
                    if self.crossed_options[0]
                    else []
                ),
                *(
                    [f"--repro-crossed-seeds={self.crossed_options[1]}"]
                    if self.crossed_options[1]
                    else []
                ),
                *(
                    [f"--repro-steps={self.config.getoption('repro_steps')}"]
                    if self.config.getoption("repro_steps") is not None
                    else []
                ),
                shlex.quote(target_of(item)),
            ]
        )

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if not is_repro_item(pyfuncitem):
            return None
        assert self.pool is not None
        root = sweep_root_seed(pyfuncitem, self.base_seed)
        failures = []
        live = live_progress(
            pyfuncitem,
            f"repro sweep {pyfuncitem.nodeid}",
            len(self.runs),
            "runs",
            delays=SWEEP_DELAY_S,
            done=sum((pyfuncitem.nodeid, run.run_id) in self._done for run in self.runs),
        )
        for run in self.runs:
            done = self._done.get((pyfuncitem.nodeid, run.run_id))
            if done is not None:
                self.resumed += 1
                row = done
            else:
                result = self.pool.result(pyfuncitem.nodeid, run.run_id, live.tick)
                row = result_row(
                    result,
                    base_seed=self.base_seed,
                    root_seed=root,
                    command=self.run_command(pyfuncitem, run),
                    run=run,
                    inputs=self.inputs.get(pyfuncitem.nodeid),
                )
                note = self.store.append(row)
                if note:
                    self.store_messages.append(note)
            self.rows.append(row)
            if row["status"] == "failed":
                failures.append(row)
            if done is None:
                live.advance(failed=int(row["status"] == "failed"))
        live.finish()
        if failures:
            first = failures[0]
            raise SensitivityFailure(
                f"repro-check: {len(failures)} of {len(self.runs)} sweep runs of "
                f"{pyfuncitem.nodeid} failed (they are counted in the report, not dropped).\n"
                f"first failure, run {first['run_id']}:\n{first['error']}\n"
                f"rerun it:\n  {first['command']}"
            )
        return True

    def sources_unused(self) -> dict[str, list[str]]:
        unused: dict[str, list[str]] = {}
        for row in self.rows:
            if row["status"] == "failed":
                continue
            asked = set(row.get("sources_used", [])) | {"global", "all", BITFLIP, BACKEND}
            for source in self.sources:
                if source not in asked:
                    unused.setdefault(row["test"], [])
                    if source not in unused[row["test"]]:
                        unused[row["test"]].append(source)
        return unused

    def analysis(self) -> Any:
        from repro_check.reporting.sensitivity import analyze

        outcomes, problems = outcome_specs(self.rows)
        return analyze(
            runs_frame(self.rows),
            sources_unused=self.sources_unused(),
            outcomes=outcomes,
            notes=[*self.store_messages, *problems],
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.rows:
            return
        from repro_check.reporting.sensitivity import terminal_table

        terminalreporter.section("repro sensitivity")
        analysis = self.analysis()
        terminalreporter.write_line(terminal_table(analysis))
        failed = sum(r["status"] == "failed" for r in self.rows)
        nan = sum(r["status"] == "nan" for r in self.rows)
        terminalreporter.write_line(
            f"{plural(len(self.rows), 'run')} ({self.resumed} resumed from {self.store.path}), "
            f"{failed} failed, {nan} with NaN metrics; base seed {self.base_seed}"
        )
        plots = sum(p.suffix == ".png" for p in self.report.paths)
        files = ", ".join(p.name for p in self.report.paths if p.suffix != ".png")
        self.report.footer(terminalreporter, f"{self.folder}/ ({files}, {plots} plots)")

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.pool is not None:
            self.pool.close()
        if self._dask is not None:
            client, cluster = self._dask
            client.close()
            if cluster is not None:
                cluster.close()
        if not self.rows:
            return
        from repro_check.reporting.sensitivity import write_report

        try:
            info = {
                "command": " ".join(
                    ["pytest", *map(shlex.quote, self.config.invocation_params.args)]
                ),
                "base_seed": self.base_seed,
                "deterministic": self.options.deterministic,
                "environment": runtime_summary(),
                "environment_file": "environment.json",
                "k": self.k,
                "sources": self.sources,
                "jobs": self.jobs,
            }
            self.report.paths = write_report(
                self.analysis(),
                self.folder,
                session=info,
                disagreement=prediction_agreement(self.rows),
            )
            self.report.paths.append(write_environment(self.folder, self.config.rootpath))
        except OSError as exc:
            self.report.error = f"repro-check: could not write the sensitivity report: {exc}"

    def pytest_unconfigure(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.launcher.close()
