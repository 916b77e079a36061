"""Sensitivity sweeps on a real Dask LocalCluster (loopback only), through the same executor
interface as the local process pool."""

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


def sweep(tmp_path: Path, executor: str) -> list[dict]:
    (tmp_path / "test_tiny.py").write_text(SWEEP_TEST)
    report = tmp_path / f"report-{executor}"
    result = subprocess.run(
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
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    lines = (report / "sensitivity" / "runs.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda row: row["run_id"])


def test_dask_local_cluster_gives_the_same_runs_as_local_processes(tmp_path):
    on_dask = sweep(tmp_path, "dask")
    local = sweep(tmp_path, "local")
    assert [r["run_id"] for r in on_dask] == ["all:0", "all:1", "init:0", "init:1"]
    assert all(r["status"] == "ok" for r in on_dask)
    # Same seeds, same machine: every run's metrics are bit-for-bit those of the local pool.
    assert [r["metrics"] for r in on_dask] == [r["metrics"] for r in local]
    # And the perturbation really changed something between runs of one source.
    assert on_dask[2]["metrics"] != on_dask[3]["metrics"]
