"""What fault isolation costs a replica: the ``step`` event each record() appends to the channel
(so a hung or crashed test can be named at its last step), against record() itself, measured in
one process on the suites' MLP state (model + Adam + loss).

    python benchmarks/bench_faults.py [--records 300]

Prints name=value lines. Under load the absolute times are noisy; the ratio is measured
interleaved, in one process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from repro_check.core.record import Recorder
from repro_check.core.spill import SpillWriter
from repro_check.orchestration.guards import ProgressRecorder, WorkerGuard


def state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model(torch.randn(32, 20)).pow(2).mean()
    loss.backward()
    optimizer.step()
    return {"model": model, "optimizer": optimizer, "loss": loss.detach()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=300)
    args = parser.parse_args()
    values = state()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        guard = WorkerGuard(str(folder / "channel.jsonl"), {}, None, print)
        plain = Recorder(SpillWriter(folder / "a.bin", 2**30))
        guarded = ProgressRecorder(Recorder(SpillWriter(folder / "b.bin", 2**30)), guard)
        times: dict[str, list[float]] = {"plain": [], "guarded": []}
        for step in range(args.records):
            order = [(plain, "plain"), (guarded, "guarded")]
            for recorder, kind in order if step % 2 else order[::-1]:  # no order bias
                began = time.perf_counter()
                recorder.record(step, values)
                times[kind].append(time.perf_counter() - began)
        plain.close()
        guarded.close()
        plain_time = statistics.median(times["plain"])  # medians: a loaded machine's noise
        guarded_time = statistics.median(times["guarded"])  # hits single records
        start = time.perf_counter()
        for step in range(args.records):
            guard.step(step)
        event = (time.perf_counter() - start) / args.records
        guard.close()
    print(f"record_median_us={plain_time * 1e6:.1f}")
    print(f"record_with_step_event_median_us={guarded_time * 1e6:.1f}")
    print(f"step_event_us={event * 1e6:.2f}")
    print(f"overhead_ratio={guarded_time / plain_time:.3f}")


if __name__ == "__main__":
    main()
