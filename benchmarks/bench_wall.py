"""Wall time of ``pytest --repro suites/`` against plain ``pytest suites/``, serial and under
pytest-xdist. Prints ``name=value`` lines (best of ``--repeat``):

* ``plain_pytest_s`` -- ``pytest suites/``: every test once, in this process;
* ``repro_replicas_s`` / ``repro_vs_plain_ratio`` -- ``pytest --repro --repro-variants=none``:
  two replicas per test in fresh processes, compared bit for bit and against the committed
  baselines (goal, issue 12: ratio <= 1.2);
* ``repro_full_s`` / ``repro_full_vs_plain_ratio`` -- ``pytest --repro`` as the README runs it:
  also the suites' backend variants (three other CPU environments and a float64 run of one
  test, each in fresh processes) and the first-drift-op traces;
* ``repro_inprocess_s`` / ``repro_inprocess_vs_plain_ratio`` -- replicas in this process;
* ``repro_xdist_s`` / ``xdist_vs_serial_ratio`` -- ``pytest --repro -n 2`` (replicas only)
  against the serial session (goal: <= 1.0), and ``xdist_full_vs_serial_ratio`` with variants;
* ``tiny50_xdist_vs_serial_ratio`` -- the same for 50 tiny tests (a 4x2 linear layer, 2 steps
  each) in a generated project: where per-test process start-up would dominate.

    python benchmarks/bench_wall.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = [sys.executable, "-m", "pytest", "suites/", "-q", "-p", "no:cacheprovider"]
REPRO = [*BASE, "--repro", "--repro-report=none"]
REPLICAS_ONLY = [*REPRO, "--repro-variants=none"]


TINY_TESTS = """
    import pytest
    import torch


    @pytest.mark.parametrize("case", range(50))
    @pytest.mark.repro(steps=2)
    def test_tiny(repro, case):
        model = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(8, 4, generator=repro.generator("data"))
        for step in range(repro.steps):
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            repro.record(step, model=model, loss=loss)
"""


def wall(args: list[str], cwd: Path = ROOT) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"command failed: {' '.join(args)}\n{result.stdout[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    def best(command: list[str]) -> float:
        return min(wall(command) for _ in range(args.repeat))

    plain = best(BASE)
    replicas = best(REPLICAS_ONLY)
    xdist = best([*REPLICAS_ONLY, "-n", "2"])
    full = best(REPRO)
    xdist_full = best([*REPRO, "-n", "2"])
    inprocess = best([*REPLICAS_ONLY, "--repro-mode=inprocess"])
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "pytest.ini").write_text("[pytest]\n")
        (project / "test_tiny.py").write_text(textwrap.dedent(TINY_TESTS))
        tiny = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--repro"]
        tiny += ["--repro-baseline=off", "--repro-report=none"]
        tiny_serial = min(wall(tiny, project) for _ in range(args.repeat))
        tiny_xdist = min(wall([*tiny, "-n", "2"], project) for _ in range(args.repeat))
    print(f"plain_pytest_s={plain:.2f}")
    print(f"repro_replicas_s={replicas:.2f}")
    print(f"repro_vs_plain_ratio={replicas / plain:.2f}")
    print(f"repro_full_s={full:.2f}")
    print(f"repro_full_vs_plain_ratio={full / plain:.2f}")
    print(f"repro_inprocess_s={inprocess:.2f}")
    print(f"repro_inprocess_vs_plain_ratio={inprocess / plain:.2f}")
    print(f"repro_xdist_s={xdist:.2f}")
    print(f"xdist_vs_serial_ratio={xdist / replicas:.2f}")
    print(f"repro_xdist_full_s={xdist_full:.2f}")
    print(f"xdist_full_vs_serial_ratio={xdist_full / full:.2f}")
    print(f"tiny50_serial_s={tiny_serial:.2f}")
    print(f"tiny50_xdist_s={tiny_xdist:.2f}")
    print(f"tiny50_xdist_vs_serial_ratio={tiny_xdist / tiny_serial:.2f}")


if __name__ == "__main__":
    main()
