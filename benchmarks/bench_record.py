"""Overhead of ``repro.record()`` per training step on the reference suites' models.

Each model trains on pre-generated batches (no DataLoader noise), with and without recording
(fingerprints plus spill, exactly as a replica under ``pytest --repro`` does). Prints
``name=value`` lines; goal: ``record_overhead_pct`` <= 10 for the CNN and the Transformer.

    python benchmarks/bench_record.py [--steps 60] [--repeat 5]
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


def run(model, optimizer, batch, steps: int, recorder: Recorder | None) -> float:
    x, y = batch
    start = time.perf_counter()
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if recorder is not None:
            recorder.record(step, {"model": model, "optimizer": optimizer, "loss": loss})
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, optimizer_cls, batch in setups():
            optimizer = optimizer_cls(model.parameters(), lr=1e-3)
            run(model, optimizer, batch, 5, None)  # warm-up
            plain, recorded = [], []
            for r in range(args.repeat):  # interleaved, best of N: robust to a busy machine
                plain.append(run(model, optimizer, batch, args.steps, None))
                spill = SpillWriter(Path(tmp) / f"{name}-{r}.bin", 512 * 2**20)
                recorded.append(run(model, optimizer, batch, args.steps, Recorder(spill)))
                spill.close()
            t_plain, t_rec = min(plain), min(recorded)
            print(f"{name}_step_ms={t_plain * 1e3:.3f}")
            print(f"{name}_step_recorded_ms={t_rec * 1e3:.3f}")
            print(f"{name}_record_overhead_pct={100 * (t_rec - t_plain) / t_plain:.1f}")


if __name__ == "__main__":
    main()
