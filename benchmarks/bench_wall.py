"""Wall time of ``pytest --repro suites/`` (2 replicas, fresh processes) against plain
``pytest suites/``. Goal: ratio <= 2.5 (2x is the floor: every test runs twice).

    python benchmarks/bench_wall.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = [sys.executable, "-m", "pytest", "suites/", "-q", "-p", "no:cacheprovider"]


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"command failed: {' '.join(args)}\n{result.stdout[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    plain = min(wall(BASE) for _ in range(args.repeat))
    repro = min(wall(BASE + ["--repro", "--repro-report=none"]) for _ in range(args.repeat))
    inprocess = min(
        wall(
            BASE
            + ["--repro", "--repro-mode=inprocess", "--repro-variants=none", "--repro-report=none"]
        )
        for _ in range(args.repeat)
    )
    print(f"plain_pytest_s={plain:.2f}")
    print(f"repro_subprocess_s={repro:.2f}")
    print(f"repro_inprocess_s={inprocess:.2f}")
    print(f"repro_vs_plain_ratio={repro / plain:.2f}")
    print(f"repro_inprocess_vs_plain_ratio={inprocess / plain:.2f}")


if __name__ == "__main__":
    main()
