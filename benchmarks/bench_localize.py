"""Cost of finding the nondeterministic op.

1. The op tracer's overhead per training step (traced step / plain step) on the reference CNN
   and Transformer: goal <= 2x. Beside it, the floor any Python ``TorchDispatchMode`` costs
   (``empty``: a mode that only calls the op; ``bare``: the same, set up as the tracer's hook
   is, without torch's Dynamo wrapper: the tracer's own floor), the tracer with
   ``verify_inputs=True`` (every input re-hashed, views hashed by content: what the tracer did
   before producers were trusted), the cost per traced op, and the cost per op of building the
   events once the step is over (when ``tracer.events`` is first read; not in the ratio).
   Steps alternate between the variants and the best of ``--steps`` is kept, so a busy machine
   slows them alike. ``--threads 1`` times steps by the thread's CPU time instead of the wall
   clock: the only figure that holds on a machine shared with other jobs (with 2 threads, a
   parallel region waits for the second core whenever another process holds it, which slows
   the traced step, 10x longer, far more often than the plain one).
2. ``--profile``: where the tracer's time goes, per op: each part of the tracer is switched off
   in turn (a subclass that skips it) and the saving is that part's cost.
3. The whole localisation (two traced reruns of the divergent step) against one replica's run
   of the same test: goal <= 3x. Measured on the planted index_put test as the extra wall time
   of ``--repro-localize=always`` over ``--repro-localize=never``, divided by one replica's run
   (a fresh ``pytest`` process running the test once). ``--no-localisation`` skips it.

Prints ``name=value`` lines.

    python benchmarks/bench_localize.py [--steps 20] [--threads N] [--profile] [--no-localisation]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import xxhash
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repro_check.trace import tracer as tracer_module  # noqa: E402
from repro_check.trace.frames import UNKNOWN  # noqa: E402
from repro_check.trace.opinfo import keep_dynamo_out  # noqa: E402
from repro_check.trace.tracer import OpTracer  # noqa: E402
from suites.training import (  # noqa: E402
    ShapesDataset,
    SmallCNN,
    TinyTransformer,
    sequence_data,
)

PLANTED = "suites/nondeterministic/test_index_put_accumulate.py"


class EmptyMode(TorchDispatchMode):
    """The floor of any dispatch mode: one that only runs the op (torch wraps its hook)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return func(*args, **(kwargs or {}))


class BareMode(TorchDispatchMode):
    """The tracer's own floor: an empty mode set up as the tracer is (its hook's code marked
    for Dynamo instead of torch's wrapper frames, the op called through its builtin)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return func._op(*args, **(kwargs or {}))


BareMode.__torch_dispatch__ = keep_dynamo_out(BareMode.__dict__["__torch_dispatch__"])


class _NoLocator:
    held_set: frozenset = frozenset()
    held_text = UNKNOWN

    def release(self) -> None:
        pass


class NoSourceLines(OpTracer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._locator = _NoLocator()
        self._locate = lambda frame: "<skipped>"


def _no_hash(data: Any) -> int:
    return 1


class NoHashing(OpTracer):
    """The bytes of outputs (and the view signatures) not hashed: the hook's xxh3 swapped
    for a constant while the mode is on (the checks around it still run)."""

    def __enter__(self) -> OpTracer:
        tracer_module._xxh = _no_hash
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        tracer_module._xxh = xxhash.xxh3_64_intdigest
        return super().__exit__(*exc)


class NoAutogradLinks(OpTracer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._current_node = lambda: None
        self._get_seq = None


class NoModuleHooks(OpTracer):
    def __enter__(self) -> OpTracer:
        return TorchDispatchMode.__enter__(self)

    def __exit__(self, *exc: Any) -> Any:
        return TorchDispatchMode.__exit__(self, *exc)


PARTS = {
    "source_lines": NoSourceLines,
    "output_hashing": NoHashing,
    "autograd_links": NoAutogradLinks,
    "module_hooks": NoModuleHooks,
}


def best_step_times(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    modes: dict[str, Callable[[], Any]],
    steps: int,
    clock: Callable[[], float],
) -> dict[str, float]:
    """Best time of one training step under each mode, the modes taking turns."""
    x, y = batch

    def step(mode: Callable[[], Any]) -> float:
        start = clock()
        with mode():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return clock() - start

    for mode in modes.values():  # warm-up (the first mode use imports ~800 modules)
        for _ in range(3):
            step(mode)
    best = dict.fromkeys(modes, float("inf"))
    for _ in range(steps):
        for name, mode in modes.items():
            best[name] = min(best[name], step(mode))
    return best


def ops_per_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    clock: Callable[[], float],
    repeats: int = 5,
) -> tuple[int, float]:
    """Ops in one traced step, and the best time to build its events once it is over (the
    tracer records rows while the step runs and builds the ``OpEvent`` objects when
    ``events`` is first read: work outside the step, reported beside it)."""
    x, y = batch
    build = float("inf")
    for _ in range(repeats):
        with OpTracer(model) as tracer:
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        start = clock()
        n = len(tracer.events)
        build = min(build, clock() - start)
    return n, build


def wall(args: list[str]) -> float | None:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 1):  # 1: the planted test fails, as it should
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        print(f"# pytest {' '.join(args)} exited {done.returncode}: {' | '.join(tail)}")
        return None
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--profile", action="store_true", help="cost of each tracer part")
    parser.add_argument("--no-localisation", action="store_true", help="skip the pytest runs")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    shapes, seqs = ShapesDataset(g), sequence_data(g)
    images = torch.stack([shapes[i][0] for i in range(32)]), shapes.labels[:32]
    if args.threads:
        torch.set_num_threads(args.threads)
    single = torch.get_num_threads() == 1
    clock = time.thread_time if single else time.perf_counter
    print(f"torch_threads={torch.get_num_threads()}")
    print(f"timer={'thread_cpu_time' if single else 'wall'}")
    for name, model, batch in (
        ("cnn", SmallCNN(), images),
        ("transformer", TinyTransformer(), (seqs.tensors[0][:32], seqs.tensors[1][:32])),
    ):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        modes: dict[str, Callable[[], Any]] = {
            "plain": contextlib.nullcontext,
            "empty_mode": EmptyMode,
            "bare_mode": BareMode,
            "traced": lambda model=model: OpTracer(model),
            "verify_inputs": lambda model=model: OpTracer(model, verify_inputs=True),
        }
        if args.profile:
            for part, cls in PARTS.items():
                modes[f"without_{part}"] = lambda cls=cls, model=model: cls(model)
        best = best_step_times(model, optimizer, batch, modes, args.steps, clock)
        n, build = ops_per_step(model, optimizer, batch, clock)
        plain, traced = best["plain"], best["traced"]
        print(f"{name}_ops_per_step={n}")
        print(f"{name}_step_ms={plain * 1e3:.2f}")
        print(f"{name}_traced_step_ms={traced * 1e3:.2f}")
        print(f"{name}_tracer_overhead_x={traced / plain:.2f}")
        print(f"{name}_empty_dispatch_mode_overhead_x={best['empty_mode'] / plain:.2f}")
        print(f"{name}_verify_inputs_overhead_x={best['verify_inputs'] / plain:.2f}")
        print(f"{name}_tracer_us_per_op={(traced - plain) / n * 1e6:.1f}")
        print(f"{name}_empty_dispatch_mode_us_per_op={(best['empty_mode'] - plain) / n * 1e6:.1f}")
        print(f"{name}_bare_dispatch_mode_overhead_x={best['bare_mode'] / plain:.2f}")
        print(f"{name}_bare_dispatch_mode_us_per_op={(best['bare_mode'] - plain) / n * 1e6:.1f}")
        print(f"{name}_events_build_us_per_op={build / n * 1e6:.1f}")
        for part in PARTS if args.profile else ():
            saved = (traced - best[f"without_{part}"]) / n * 1e6
            print(f"{name}_profile_{part}_us_per_op={saved:.1f}")
    if args.no_localisation:
        return
    common = [PLANTED, "--repro", "--repro-report=none", "--repro-baseline=off"]
    runs = {
        "never": [wall(common + ["--repro-localize=never"]) for _ in range(2)],
        "always": [wall(common + ["--repro-localize=always"]) for _ in range(2)],
        "one": [wall([PLANTED, "--repro-report=none"]) for _ in range(2)],
    }
    if any(t is None for times in runs.values() for t in times):
        print("# localisation figures skipped: a pytest run failed (see above)")
        return
    never, always, one_replica = (min(runs[k]) for k in ("never", "always", "one"))
    print(f"one_replica_run_s={one_replica:.2f}")
    print(f"repro_without_localisation_s={never:.2f}")
    print(f"repro_with_localisation_s={always:.2f}")
    print(f"localisation_vs_one_replica_x={(always - never) / one_replica:.2f}")


if __name__ == "__main__":
    main()
