"""What an environment snapshot costs: capture (first call and cached), diff, and reading one
back out of a snapshot file or a baseline.

Prints ``name=value`` lines (milliseconds, best of ``--repeat``). Goal: a capture without the
package list stays in the low tens of milliseconds once torch is imported, because every
`pytest --repro` worker takes one per session.

    python benchmarks/bench_environment.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch  # noqa: F401 - measured with torch already imported, as in a test session

from repro_check import environment as env

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_fingerprint import best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    def best_ms(fn: Callable[[], Any]) -> float:
        return best_of(args.repeat, fn) * 1e3

    start = time.perf_counter()
    env.capture(include_packages=False)
    print(f"capture_first_call_ms={(time.perf_counter() - start) * 1e3:.1f}")
    print(f"capture_no_packages_ms={best_ms(lambda: env.capture(include_packages=False)):.1f}")
    print(
        f"capture_no_packages_refresh_ms={best_ms(lambda: env.capture(include_packages=False, refresh=True)):.1f}"
    )
    full = env.capture(include_packages=True)
    print(f"capture_with_packages_ms={best_ms(lambda: env.capture(include_packages=True)):.1f}")
    print(f"packages={len(full['packages'])}")
    other = env.capture(include_packages=True)
    print(f"diff_ms={best_ms(lambda: env.diff(full, other)):.2f}")
    print(f"for_baseline_ms={best_ms(lambda: env.for_baseline(full)):.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        snapshot_file = Path(tmp) / "env.json"
        env.save(full, snapshot_file)
        baseline = Path(tmp) / "baseline.json"
        baseline.write_text(
            json.dumps({"schema": "repro-check/baseline", "environment": env.for_baseline(full)})
        )
        print(f"snapshot_bytes={snapshot_file.stat().st_size}")
        print(f"baseline_environment_bytes={baseline.stat().st_size}")
        print(f"load_ms={best_ms(lambda: env.load(snapshot_file)):.2f}")
        print(f"load_any_baseline_ms={best_ms(lambda: env.load_any(baseline)):.2f}")


if __name__ == "__main__":
    main()
