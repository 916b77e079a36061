"""Sensitivity sweep execution: parallel speed-up and memory flat in K.

K=8 runs per source (init + all: 16 runs) of the reference sensitivity suite, trained for
1000 steps so that a run costs over a second (the reference 80 steps take ~0.2 s, and
then process start-up, not the runs, is what a sweep waits for), once with one worker process
(serial) and once with two (this machine's cores). Goal: ``sweep_parallel_vs_serial_ratio <=
0.6``. Then the parent's peak memory for K=4 and K=16,
which must not grow with K. Prints ``name=value`` lines.

    python benchmarks/bench_sweep.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "suites/test_seed_sensitivity.py"
PROBE = """
import json, resource, sys
import pytest
code = pytest.main(sys.argv[1:])
print("PEAK" + json.dumps({"kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                           "exit": int(code)}))
"""


STEPS = 1000


def sweep(k: int, jobs: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as report:
        args = [
            sys.executable,
            "-c",
            PROBE,
            TEST,
            "--repro-sensitivity",
            f"--repro-steps={STEPS}",
            f"--repro-seeds={k}",
            "--repro-sources=init",
            f"--repro-jobs={jobs}",
            f"--repro-report={report}",
            "-q",
            "-p",
            "no:cacheprovider",
        ]
        start = time.perf_counter()
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True).stdout
        elapsed = time.perf_counter() - start
    peak = json.loads(next(line for line in out.splitlines() if line.startswith("PEAK"))[4:])
    if peak["exit"] != 0:
        sys.exit(f"sweep K={k} jobs={jobs} failed:\n{out[-3000:]}")
    return elapsed, peak["kb"]


def main() -> None:
    serial, _ = sweep(8, 1)
    parallel, _ = sweep(8, 2)
    print(f"sweep_runs={2 * 8}")
    print(f"sweep_steps_per_run={STEPS}")
    print(f"sweep_serial_s={serial:.2f}")
    print(f"sweep_parallel_s={parallel:.2f}")
    print(f"sweep_parallel_vs_serial_ratio={parallel / serial:.2f}")
    _, small = sweep(4, 2)
    _, large = sweep(16, 2)
    print(f"parent_peak_kb_k4={small}")
    print(f"parent_peak_kb_k16={large}")
    print(f"parent_peak_growth_ratio_k16_vs_k4={large / small:.2f}")


if __name__ == "__main__":
    main()
