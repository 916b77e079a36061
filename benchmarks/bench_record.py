"""Overhead of ``repro.record()`` per training step on the reference suites' models.

Each model trains on pre-generated batches (no DataLoader noise), with and without recording
(fingerprints, statistics and spill, exactly as a replica under ``pytest --repro`` does; the
spill writes run on their background thread, and closing the recorder waits for them). Runs
are interleaved and the best of ``--repeat`` kept, which is robust to a busy machine. Prints
``name=value`` lines per model:

* ``<model>_step_ms`` / ``<model>_step_recorded_ms`` -- wall time per step, without and with;
* ``<model>_record_overhead_pct`` -- the difference, relative to the plain step (goal <= 10 for
  the CNN, the Transformer and the LSTM);
* ``<model>_record_cpu_ms`` / ``<model>_record_cpu_pct`` -- CPU time of the training thread
  inside ``record()`` (and ``close()``) per step, and its share of the plain step: the same
  cost, measured so that waiting for a core on a busy machine does not count;
* ``<model>_record_process_cpu_pct`` -- the extra CPU time of the whole process per step
  (the spill writer thread included), relative to the plain step's.

    python benchmarks/bench_record.py [--steps 60] [--repeat 5] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repro_check.core.record import Recorder  # noqa: E402
from repro_check.core.spill import SpillWriter  # noqa: E402
from suites.training import (  # noqa: E402
    MLP,
    LSTMClassifier,
    ShapesDataset,
    SmallCNN,
    TinyTransformer,
    classification_data,
    sequence_data,
)


def setups():
    g = torch.Generator().manual_seed(0)
    mlp_data = classification_data(g)
    shapes = ShapesDataset(g)
    seqs = sequence_data(g)
    images = torch.stack([shapes[i][0] for i in range(64)]), shapes.labels[:64]
    yield "mlp", MLP(), torch.optim.Adam, (mlp_data.tensors[0][:32], mlp_data.tensors[1][:32])
    yield "cnn", SmallCNN(), torch.optim.SGD, images
    yield (
        "transformer",
        TinyTransformer(),
        torch.optim.AdamW,
        (seqs.tensors[0][:32], seqs.tensors[1][:32]),
    )
    yield "lstm", LSTMClassifier(), torch.optim.SGD, (seqs.tensors[0][:32], seqs.tensors[1][:32])


def run(
    model, optimizer, batch, steps: int, recorder: Recorder | None
) -> tuple[float, float, float]:
    """(wall seconds per step, CPU seconds per step spent in record() and close(), process
    CPU seconds per step)."""
    x, y = batch
    in_record = 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if recorder is not None:
            before = time.thread_time()
            recorder.record(step, {"model": model, "optimizer": optimizer, "loss": loss})
            in_record += time.thread_time() - before
    if recorder is not None:
        before = time.thread_time()
        recorder.close()
        in_record += time.thread_time() - before
    cpu = (time.process_time() - cpu_start) / steps
    return (time.perf_counter() - start) / steps, in_record / steps, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads={torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, optimizer_cls, batch in setups():
            optimizer = optimizer_cls(model.parameters(), lr=1e-3)
            run(model, optimizer, batch, 5, None)  # warm-up
            plain, recorded, cpu, process_plain, process_recorded = [], [], [], [], []
            for r in range(args.repeat):  # interleaved, best of N: robust to a busy machine
                wall, _, process = run(model, optimizer, batch, args.steps, None)
                plain.append(wall)
                process_plain.append(process)
                spill = SpillWriter(Path(tmp) / f"{name}-{r}.bin", 512 * 2**20)
                wall, in_record, process = run(model, optimizer, batch, args.steps, Recorder(spill))
                recorded.append(wall)
                cpu.append(in_record)
                process_recorded.append(process)
            t_plain, t_rec = min(plain), min(recorded)
            print(f"{name}_step_ms={t_plain * 1e3:.3f}")
            print(f"{name}_step_recorded_ms={t_rec * 1e3:.3f}")
            print(f"{name}_record_overhead_pct={100 * (t_rec - t_plain) / t_plain:.1f}")
            print(f"{name}_record_cpu_ms={min(cpu) * 1e3:.3f}")
            print(f"{name}_record_cpu_pct={100 * min(cpu) / t_plain:.1f}")
            extra = min(process_recorded) - min(process_plain)
            print(f"{name}_record_process_cpu_pct={100 * extra / min(process_plain):.1f}")


if __name__ == "__main__":
    main()
