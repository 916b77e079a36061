"""Cost of finding the nondeterministic op.

1. The op tracer's overhead per training step (traced step / plain step) on the reference CNN
   and Transformer: goal <= 2x.
2. The whole localisation (two traced reruns of the divergent step) against one replica's run
   of the same test: goal <= 3x. Measured on the planted index_put test as the extra wall time
   of ``--repro-localize=always`` over ``--repro-localize=never``, divided by one replica's run
   (a fresh ``pytest`` process running the test once).

Prints ``name=value`` lines.

    python benchmarks/bench_localize.py [--steps 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repro_check.trace.tracer import OpTracer  # noqa: E402
from suites.training import (  # noqa: E402
    ShapesDataset,
    SmallCNN,
    TinyTransformer,
    sequence_data,
)

PLANTED = "suites/nondeterministic/test_index_put_accumulate.py"


def step_time(model, optimizer, batch, steps: int, traced: bool) -> float:
    x, y = batch
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        if traced:
            with OpTracer(model):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        else:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        best = min(best, time.perf_counter() - start)
    return best


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    shapes, seqs = ShapesDataset(g), sequence_data(g)
    images = torch.stack([shapes[i][0] for i in range(32)]), shapes.labels[:32]
    for name, model, batch in (
        ("cnn", SmallCNN(), images),
        ("transformer", TinyTransformer(), (seqs.tensors[0][:32], seqs.tensors[1][:32])),
    ):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        step_time(model, optimizer, batch, 3, traced=True)  # warm-up (first mode use imports)
        plain = step_time(model, optimizer, batch, args.steps, traced=False)
        traced = step_time(model, optimizer, batch, args.steps, traced=True)
        print(f"{name}_step_ms={plain * 1e3:.2f}")
        print(f"{name}_traced_step_ms={traced * 1e3:.2f}")
        print(f"{name}_tracer_overhead_x={traced / plain:.2f}")
    common = [PLANTED, "--repro", "--repro-report=none", "--repro-baseline=off"]
    never = min(wall(common + ["--repro-localize=never"]) for _ in range(2))
    always = min(wall(common + ["--repro-localize=always"]) for _ in range(2))
    one_replica = min(wall([PLANTED, "--repro-report=none"]) for _ in range(2))
    print(f"one_replica_run_s={one_replica:.2f}")
    print(f"repro_without_localisation_s={never:.2f}")
    print(f"repro_with_localisation_s={always:.2f}")
    print(f"localisation_vs_one_replica_x={(always - never) / one_replica:.2f}")


if __name__ == "__main__":
    main()
