"""Options of the plugin, all under one prefix (``--repro-*``; ini ``repro_*``), parsed and
validated once into :class:`Options` -- a bad value is a usage error before any work starts."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from repro_check.core.seeding import DEFAULT_BASE_SEED
from repro_check.orchestration.baseline import DEFAULT_ATOL, DEFAULT_RTOL
from repro_check.orchestration.gate import MISSING_POLICIES

CACHE_KEY = "repro/base_seed"
UNLIMITED_SPILL = 2**62  # checkpoints need every tensor of the last step


def add_options(parser: pytest.Parser) -> None:
    """Every option under one prefix: ``--repro-*`` on the command line, ``repro_*`` in ini."""
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
        "--repro-warm-start",
        choices=("on", "off"),
        default=None,
        help="start the replica interpreters before collection, torch imported, and hand "
        "them their tests after it (default on; ini repro_warm_start); off: every worker "
        "starts as a plain `python -m pytest` after collection",
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
        "--repro-timeout",
        default=None,
        metavar="SECONDS",
        help="a replica that runs one test longer is stopped and the test fails, naming the "
        "last recorded step (default 1800; 0: no limit; ini repro_timeout; marker timeout=)",
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
        "--repro-missing-baseline",
        choices=MISSING_POLICIES,
        default=None,
        help="a test without a baseline: fail (default; CI then catches a deleted baseline), "
        "create it and pass (existing baselines are still checked), or warn and pass "
        "(ini repro_missing_baseline)",
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
        "--repro-variants",
        default=None,
        metavar="LIST",
        help="also run every marked test in other environments and judge their drift against "
        "a float64 run: comma-separated, from threads=N, isa=default|avx2|avx512, mkldnn=off, "
        "deterministic, float64, compile, cuda, cuda:deterministic, tf32=on, mps ('+' "
        "combines); unsupported ones are skipped with the reason (ini repro_variants; marker "
        "variants=[...]; 'none' skips the markers' variants too)",
    )
    group.addoption(
        "--repro-variant-runs",
        type=int,
        default=None,
        metavar="N",
        help="replicas per variant, compared bit for bit within the variant (default: "
        "--repro-runs; ini repro_variant_runs)",
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
        help="where replica, variant and sweep processes start: locally, or on a Dask cluster "
        "(--repro-dask-scheduler=ADDRESS, else a LocalCluster on loopback); GPU variants go "
        "to workers started with --resources GPU=1",
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
        "--repro-crossed",
        default=None,
        metavar="A,B",
        help="sensitivity sweep: also run every seed of source A with every seed of B, "
        "for a two-way variance split with their interaction",
    )
    group.addoption(
        "--repro-crossed-seeds",
        default=None,
        metavar="KAxKB",
        help="seeds per source of the crossed design (default KxK)",
    )
    group.addoption(
        "--repro-only-run",
        default=None,
        metavar="SOURCE:K",
        help="run one run of a sweep (the command printed for each run)",
    )
    group.addoption(
        "--repro-resume-at",
        type=int,
        default=None,
        metavar="K",
        help="check every marked test resumes equivalently from a checkpoint after step K "
        "(repro.checkpoint / repro.restore; as the marker's resume_at=K)",
    )
    group.addoption(
        "--repro-catalog",
        default=None,
        metavar="PATH",
        help="SQLite run catalog to record this session in (default REPORT_DIR/catalog.sqlite; "
        "a shared path collects several projects' sessions; 'none' to skip; ini repro_catalog)",
    )
    group.addoption("--repro-worker", default=None, help=argparse_suppress())
    parser.addini(
        "repro_catalog", "run catalog path (default REPORT_DIR/catalog.sqlite)", default=""
    )
    parser.addini("repro_runs", "replicas per test under --repro", default="2")
    parser.addini("repro_seed", "base seed (N, last or random)", default=str(DEFAULT_BASE_SEED))
    parser.addini("repro_mode", "subprocess or inprocess", default="subprocess")
    parser.addini("repro_warm_start", "on or off", default="on")
    parser.addini(
        "repro_variants", "backend variants for every marked test (comma-separated)", default=""
    )
    parser.addini("repro_variant_runs", "replicas per variant (default: repro_runs)", default="")
    parser.addini("repro_report", "report folder", default="reports")
    parser.addini(
        "repro_timeout", "seconds a replica may spend in one test (0: no limit)", default="1800"
    )
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
    parser.addini(
        "repro_missing_baseline",
        "a test without a baseline: fail, create or warn",
        default=MISSING_POLICIES[0],
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
    missing_baseline: str = MISSING_POLICIES[0]
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    #: Backend variants for every marked test (canonical names; the marker may add more).
    variants: tuple[str, ...] = ()
    variant_runs: int = 2
    #: Seconds a replica may spend in one test (None: no limit).
    timeout: float | None = 1800.0
    #: --repro-resume-at: a resume check after this step for every marked test.
    resume_at: int | None = None
    #: The run catalog to record the session in (None: none).
    catalog: Path | None = None
    #: Start worker interpreters before collection (repro_check.orchestration.warm).
    warm_start: bool = True

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        def pick(name: str) -> str:
            value = config.getoption(f"repro_{name}")
            return str(value) if value is not None else str(config.getini(f"repro_{name}"))

        runs = _positive_int(pick("runs"), "--repro-runs")
        seed_text = pick("seed").strip().lower()
        if seed_text == "last":
            base_seed = _last_seed(config)
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
        jobs = (
            _positive_int(str(jobs_opt), "--repro-jobs")
            if jobs_opt is not None
            else default_jobs(runs, _xdist_workers(config))
        )
        report = pick("report").strip()
        if not report:
            raise pytest.UsageError(
                "--repro-report is empty: give a folder (e.g. --repro-report=reports) or 'none'"
            )
        if config.getoption("repro_save_checkpoints") and report.lower() == "none":
            raise pytest.UsageError(
                "--repro-save-checkpoints needs a report folder (checkpoints go to "
                "REPORT_DIR/checkpoints/), but --repro-report=none; drop one of the two"
            )
        validate_sweep_options(config)
        mode = pick("mode")
        if mode not in ("subprocess", "inprocess"):
            raise pytest.UsageError(f"repro_mode={mode!r}: expected subprocess or inprocess")
        return cls(
            enabled=bool(config.getoption("repro")),
            runs=runs,
            base_seed=base_seed,
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
            missing_baseline=_choice(
                pick("missing_baseline").strip(), MISSING_POLICIES, "repro_missing_baseline"
            ),
            timeout=_non_negative_float(pick("timeout"), "--repro-timeout") or None,
            atol=_non_negative_float(pick("atol"), "repro_atol"),
            rtol=_non_negative_float(pick("rtol"), "repro_rtol"),
            variants=_variants(pick("variants")),
            variant_runs=_positive_int(pick("variant_runs"), "--repro-variant-runs")
            if pick("variant_runs").strip()
            else runs,
            resume_at=_resume_at(config.getoption("repro_resume_at")),
            warm_start=_choice(pick("warm_start").strip(), ("on", "off"), "repro_warm_start")
            == "on",
            catalog=catalog_path(
                pick("catalog"),
                config.rootpath,
                None if report.lower() == "none" else Path(config.rootpath, report),
            ),
        )


def _resume_at(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise pytest.UsageError(f"--repro-resume-at={value}: must be a step >= 0")
    return value


def catalog_path(text: str, rootpath: Path, report_dir: Path | None) -> Path | None:
    """The run catalog: ``--repro-catalog`` (relative to the rootdir, as the report folder),
    else ``REPORT_DIR/catalog.sqlite``; None for 'none', or when there is no report folder."""
    text = text.strip()
    if text.lower() == "none":
        return None
    if text:
        return Path(rootpath, text)
    return report_dir / "catalog.sqlite" if report_dir is not None else None


def _variants(text: str) -> tuple[str, ...]:
    from repro_check.orchestration.variants import NO_VARIANTS, VariantError, parse_variants

    if text.strip().lower() == NO_VARIANTS:
        return (NO_VARIANTS,)
    try:
        return tuple(v.name for v in parse_variants([text]))
    except VariantError as exc:
        raise pytest.UsageError(str(exc)) from None


def _last_seed(config: pytest.Config) -> int:
    """``--repro-seed=last``: the base seed of the previous session (pytest's cache)."""
    cache = getattr(config, "cache", None)
    cached = cache.get(CACHE_KEY, None) if cache is not None else None
    if cached is None:
        return DEFAULT_BASE_SEED
    if isinstance(cached, bool) or not isinstance(cached, int) or not 0 <= cached < 2**64:
        raise pytest.UsageError(
            f"--repro-seed=last: the cached seed ({CACHE_KEY} in .pytest_cache) is {cached!r}, "
            f"not a seed; pass --repro-seed=N, or clear the cache with --cache-clear"
        )
    return cached


def validate_sweep_options(config: pytest.Config) -> None:
    """Sweep options that would fail late (or silently do nothing) are refused up front."""
    address = config.getoption("repro_dask_scheduler")
    if address and config.getoption("repro_executor") == "dask":
        from repro_check.orchestration.cluster import check_scheduler

        try:
            check_scheduler(address)
        except ConnectionError as exc:
            raise pytest.UsageError(str(exc)) from None
    threads = config.getoption("repro_sweep_threads")
    if threads is not None and threads < 1:
        raise pytest.UsageError(f"--repro-sweep-threads={threads}: must be at least 1")
    seeds = config.getoption("repro_seeds")
    if seeds is not None and seeds < 1:
        raise pytest.UsageError(f"--repro-seeds={seeds}: must be at least 1")
    sources = config.getoption("repro_sources")
    if sources is not None and not [s for s in sources.split(",") if s.strip()]:
        raise pytest.UsageError(
            f"--repro-sources={sources!r} names no source; e.g. --repro-sources=init,data"
        )
    if sources is not None and any(not s.strip() for s in sources.split(",")):
        raise pytest.UsageError(
            f"--repro-sources={sources!r} has an empty name; separate names by single commas"
        )


def default_jobs(runs: int, sessions: int = 1) -> int:
    """Replica processes at once: as many as the cores allow *given the threads each uses*.

    torch uses every core by default; two such replicas side by side oversubscribe the CPU, and
    OpenMP's spinning threads then make both several times slower than running them in turn.
    Replicas must keep the user's thread count (it changes the numbers), so they share cores
    only when OMP_NUM_THREADS leaves room. ``sessions`` pytest-xdist workers share the cores:
    each gets its part.
    """
    cores = max(1, (os.cpu_count() or 1) // max(1, sessions))
    try:
        threads = int(os.environ.get("OMP_NUM_THREADS", "") or cores)
    except ValueError:
        threads = cores
    return max(1, min(runs, cores // max(1, threads)))


def warm_starts(config: pytest.Config, options: Options, subprocess: bool = True) -> bool:
    """Whether this process starts worker interpreters before collection: warm starts are on
    and it will start local workers after it (``subprocess``: its replicas are not in this
    process; not an xdist controller, --collect-only or Dask)."""
    xdist_controller = (
        getattr(config.option, "dist", "no") != "no"
        and bool(getattr(config.option, "tx", None))
        and not hasattr(config, "workerinput")
    )
    return (
        options.warm_start
        and subprocess
        and config.getoption("repro_executor", "local") != "dask"
        and not config.option.collectonly
        and not xdist_controller
    )


def _xdist_workers(config: pytest.Config) -> int:
    """How many pytest-xdist workers share this machine (1 outside xdist)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return 1
    try:
        return max(1, int(workerinput.get("workercount", 1)))
    except (TypeError, ValueError):
        return 1


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
