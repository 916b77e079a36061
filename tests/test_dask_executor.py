"""Sensitivity sweeps, replicas and backend variants on a real Dask cluster (loopback only),
through the same executor interface as the local process pool; a GPU variant only on a worker
with a GPU resource."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parent.parent

SWEEP_TEST = """
import pytest, torch

@pytest.mark.repro(steps=3)
def test_tiny(repro):
    generator = repro.generator("data")
    x = torch.randn(32, 4, generator=generator)
    y = (x.sum(1) > 0).long()
    with repro.seeded("init"):
        model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(repro.steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        repro.record(step, model=model, loss=loss)
"""


def start_sweep(folder: Path, executor: str) -> tuple[subprocess.Popen, Path]:
    folder.mkdir()
    (folder / "test_tiny.py").write_text(SWEEP_TEST)
    report = folder / f"report-{executor}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "test_tiny.py",
            "--repro-sensitivity",
            "--repro-seeds=2",
            "--repro-sources=init",
            f"--repro-executor={executor}",
            f"--repro-report={report}",
            "-p",
            "no:cacheprovider",
            "-q",
        ],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, report


def sweep_rows(process: subprocess.Popen, report: Path) -> list[dict]:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-5000:]
    lines = (report / "sensitivity" / "runs.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda row: row["run_id"])


def test_dask_local_cluster_gives_the_same_runs_as_local_processes(tmp_path):
    started = {name: start_sweep(tmp_path / name, name) for name in ("dask", "local")}  # at once
    on_dask, local = (sweep_rows(*started[name]) for name in ("dask", "local"))
    assert [r["run_id"] for r in on_dask] == ["all:0", "all:1", "init:0", "init:1"]
    assert all(r["status"] == "ok" for r in on_dask)
    # Same seeds, same machine: every run's metrics are bit-for-bit those of the local pool.
    assert [r["metrics"] for r in on_dask] == [r["metrics"] for r in local]
    # And the perturbation really changed something between runs of one source.
    assert on_dask[2]["metrics"] != on_dask[3]["metrics"]


# ------------------------------------------------- replicas and variants on a Dask cluster

VARIANT_TEST = SWEEP_TEST.replace("steps=3", "steps=3, variants=['threads=1']")


def test_a_gpu_variant_goes_to_the_worker_with_a_gpu_resource(tmp_path):
    import os

    from distributed import Client, Scheduler, SpecCluster, Worker

    from repro_check.orchestration.cluster import ResourceExecutor, has_gpu_workers
    from repro_check.orchestration.executor import WorkerJob
    from repro_check.orchestration.replicas import ReplicaSpec

    worker = {"cls": Worker, "options": {"nthreads": 1}}
    gpu = {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    with SpecCluster(scheduler=scheduler, workers={"cpu": worker}) as cpu_only:
        with Client(cpu_only) as client:
            assert not has_gpu_workers(client)

    def job(name: str, settings: dict) -> WorkerJob:
        return WorkerJob(
            ReplicaSpec(0, settings=settings),
            [sys.executable, "-c", "pass"],
            dict(os.environ),
            str(tmp_path),
            tmp_path / f"{name}.jsonl",
            tmp_path / f"{name}.out",
            tmp_path / f"{name}.err",
        )

    workers = {"cpu": worker, "gpu": gpu}
    with SpecCluster(scheduler=scheduler, workers=workers) as cluster, Client(cluster) as client:
        assert has_gpu_workers(client)
        gpu_address = next(
            address
            for address, info in client.scheduler_info()["workers"].items()
            if (info.get("resources") or {}).get("GPU")
        )
        executor = ResourceExecutor(client)
        for attempt in range(3):  # the CPU job may land anywhere; the GPU job never elsewhere
            on_gpu = executor.submit(job(f"gpu{attempt}", {"device": "cuda"}).run)
            assert on_gpu.result(timeout=60) == 0
            assert set(client.who_has(on_gpu)[on_gpu.key]) == {gpu_address}
        assert executor.submit(job("cpu", {}).run).result(timeout=60) == 0


def test_replicas_and_variants_run_on_a_local_dask_cluster(tmp_path):
    (tmp_path / "test_tiny.py").write_text(VARIANT_TEST)
    report = tmp_path / "report"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "test_tiny.py",
            "--repro",
            "--repro-executor=dask",
            "--repro-runs=1",
            "--repro-variant-runs=1",
            "--repro-baseline=off",
            f"--repro-report={report}",
            "-p",
            "no:cacheprovider",
            "-q",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    test = json.loads((report / "report.json").read_text())["tests"][0]
    outcomes = {o["name"]: o["status"] for o in test["variants"]["outcomes"]}
    assert outcomes["float64"] == "judge"
    assert outcomes["threads=1"] in ("identical", "agrees")
    assert (report / "records" / "test_tiny" / "test_tiny.json").is_file()
