"""Peak memory of a ``pytest --repro`` session against the number of replicas.

The parent keeps at most two replicas' fingerprints at once and each replica is its own
process, so neither the parent's peak nor a replica's peak may grow with ``--repro-runs``.
Prints ``name=value`` lines (kB of peak resident memory).

    python benchmarks/bench_memory.py [--runs 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, resource, sys
import pytest
code = pytest.main(sys.argv[1:])
print("PEAK" + json.dumps({
    "parent_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "largest_child_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "exit": int(code)}))
"""


def measure(runs: int) -> dict[str, int]:
    args = [
        sys.executable,
        "-c",
        PROBE,
        "suites/test_transformer.py",
        "suites/test_mlp.py",
        "--repro",
        f"--repro-runs={runs}",
        "--repro-jobs=2",
        "--repro-report=none",
        "--repro-baseline=off",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("PEAK"))
    return json.loads(line[4:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    peaks = {}
    for runs in args.runs:
        result = measure(runs)
        if result["exit"] != 0:
            sys.exit(f"--repro-runs={runs} failed (exit {result['exit']})")
        peaks[runs] = result
        print(f"runs_{runs}_parent_peak_kb={result['parent_kb']}")
        print(f"runs_{runs}_replica_peak_kb={result['largest_child_kb']}")
    first, last = peaks[args.runs[0]], peaks[args.runs[-1]]
    print(f"parent_peak_growth_ratio={last['parent_kb'] / first['parent_kb']:.2f}")
    print(f"replica_peak_growth_ratio={last['largest_child_kb'] / first['largest_child_kb']:.2f}")


if __name__ == "__main__":
    main()
