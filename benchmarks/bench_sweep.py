"""Sensitivity sweep execution: parallel speed-up and memory flat in K.

K=8 runs per source (init + all: 16 runs, for each of the suite's two parametrized tests) of
the reference sensitivity suite, trained for 1000 steps (the reference 80 steps take ~0.05 s,
and then process start-up, not the runs, is what a sweep waits for), once with one worker
process (serial) and once with two (this machine's cores). Goal (issue 12):
``sweep_parallel_vs_serial_ratio <= 0.6``. What cannot be shared out bounds it: the parent's
start-up and collection before the workers start, and its analysis, plots and report after
they finish (~5 s together on the 2-core kind); ``sweep_long_parallel_vs_serial_ratio`` repeats
the comparison with runs 2.5x longer, where that fixed part weighs less. Then the parent's peak
memory for K=4 and K=16, which must not grow with K. Prints ``name=value`` lines.

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


def sweep(k: int, jobs: int, steps: int = STEPS) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as report:
        args = [
            sys.executable,
            "-c",
            PROBE,
            TEST,
            "--repro-sensitivity",
            f"--repro-steps={steps}",
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
    long_serial, _ = sweep(8, 1, int(2.5 * STEPS))
    long_parallel, _ = sweep(8, 2, int(2.5 * STEPS))
    print(f"sweep_long_serial_s={long_serial:.2f}")
    print(f"sweep_long_parallel_s={long_parallel:.2f}")
    print(f"sweep_long_parallel_vs_serial_ratio={long_parallel / long_serial:.2f}")
    _, small = sweep(4, 2)
    _, large = sweep(16, 2)
    print(f"parent_peak_kb_k4={small}")
    print(f"parent_peak_kb_k16={large}")
    print(f"parent_peak_growth_ratio_k16_vs_k4={large / small:.2f}")


if __name__ == "__main__":
    main()
