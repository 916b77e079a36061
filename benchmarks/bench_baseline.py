"""Size and speed of schema-2 baselines (statistics for every step and key) on a suite model.

Records the Transformer of the reference suites for ``--steps`` Adam steps (no spill file: the
statistics come from the fingerprints), then writes, loads (every field checked) and checks the
baseline bitwise and in tolerance mode. Prints ``name=value`` lines.

    python benchmarks/bench_baseline.py [--steps 30] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_fingerprint import best_of  # noqa: E402
from benchmarks.bench_record import setups  # noqa: E402
from repro_check.core.record import Recorder  # noqa: E402
from repro_check.orchestration.baseline import (  # noqa: E402
    build_baseline,
    check_baseline,
    dump_baseline,
    load_baseline,
    write_baseline,
)


def record_run(steps: int) -> object:
    name, model, opt_cls, batch = next(s for s in setups() if s[0] == "transformer")
    optimizer = opt_cls(model.parameters(), lr=1e-3)
    x, y = batch
    recorder = Recorder(None)
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recorder.record(step, {"model": model, "optimizer": optimizer, "loss": loss})
    return recorder.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    record = record_run(args.steps)
    entries = sum(len(s.entries) for s in record.steps)
    env_a, env_b = {"threads": {"torch": 2}}, {"threads": {"torch": 1}}
    document = build_baseline("t::x", 0, 0, record, env_a, (1e-5, 1e-3))
    text = dump_baseline(document)
    path = Path(tempfile.mkdtemp()) / "baseline.json"
    write_baseline(path, document)
    loaded = load_baseline(path)
    print(f"entries={entries}")
    print(f"baseline_bytes={len(text.encode())}")
    print(f"bytes_per_entry={len(text.encode()) / entries:.0f}")
    print(f"write_ms={best_of(args.repeat, lambda: write_baseline(path, document)) * 1e3:.1f}")
    print(f"load_ms={best_of(args.repeat, lambda: load_baseline(path)) * 1e3:.1f}")
    bitwise = best_of(args.repeat, lambda: check_baseline(loaded, record, env_a, 1e-5, 1e-3))
    print(f"check_bitwise_ms={bitwise * 1e3:.1f}")
    # tolerance mode compares statistics only where digests differ: make every digest differ
    changed = document.copy()
    changed["steps"] = [
        {
            "step": s["step"],
            "entries": {k: {**e, "digest": "0" * 16} for k, e in s["entries"].items()},
        }
        for s in document["steps"]
    ]
    tolerance = best_of(args.repeat, lambda: check_baseline(changed, record, env_b, 1e-5, 1e-3))
    print(f"check_tolerance_every_entry_ms={tolerance * 1e3:.1f}")
    print(f"check_tolerance_us_per_entry={tolerance * 1e6 / entries:.0f}")


if __name__ == "__main__":
    main()
