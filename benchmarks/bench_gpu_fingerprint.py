"""On-device fingerprints (``mix64``) on a CUDA GPU: correctness, throughput, NVML capture and
the deterministic CUDA settings, in one short run.

    python benchmarks/bench_gpu_fingerprint.py [--gb 2] [--device cuda]

Without a CUDA GPU it prints ``cuda_available=0`` and exits 0 (``--device cpu`` runs the same
checks on the CPU, with the device algorithm forced: a dry run of this script). Prints
``name=value`` lines:

* checks, 1 when they hold: digests and statistics repeat across two passes; they equal the
  same algorithm computed on host copies by the CPU; a one-bit flip changes exactly one digest;
  the pass runs under ``torch.use_deterministic_algorithms(True)``; a model recorded on the GPU
  through the real Recorder gets ``mix64`` digests whose spilled bytes hash back to them, and two
  recorded training runs under deterministic settings agree bit for bit;
* throughput, in GB/s of tensor data: a plain device copy (the memory bandwidth), the on-device
  fingerprint (digests only, and with statistics), and the host-copy path (copy to the host, then
  xxh3: what fingerprinting a GPU tensor on the CPU costs);
* ``record()`` of a small model on the GPU against its training step;
* the GPU and CUDA fields of the environment capture (NVML);
* matmul and ``index_add_`` run twice, with and without deterministic algorithms.
"""

from __future__ import annotations

import os

# cuBLAS reads this when its handle is created: set it before anything touches CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import xxhash  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_record import run as run_steps  # noqa: E402
from repro_check.core.fingerprint import fingerprint_many  # noqa: E402
from repro_check.core.record import Recorder, flatten_leaves  # noqa: E402
from repro_check.core.spill import SpillWriter, read_spilled  # noqa: E402
from suites.training import TinyTransformer, sequence_data  # noqa: E402


def emit(name: str, value: object) -> None:
    print(f"{name}={value}", flush=True)


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """A failing section prints its error and lets the others run."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a benchmark reports every failure and goes on
        emit(f"{name}_error", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300])
        traceback.print_exc(limit=3)
    emit(f"{name}_seconds", f"{time.perf_counter() - start:.1f}")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_of(repeat: int, device: str, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn.deterministic
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic = cudnn


def mixed_tensors(device: str) -> list[torch.Tensor]:
    """Every dtype family, odd sizes, a 0-d tensor, an empty one, NaN and inf."""
    g = torch.Generator().manual_seed(0)
    xs = [
        torch.randn(1000, 37, generator=g),
        torch.randn(5, generator=g).to(torch.float16),
        torch.randn(7, 3, generator=g).to(torch.bfloat16),
        torch.randn(129, generator=g, dtype=torch.float64),
        torch.randn(33, generator=g, dtype=torch.complex64),
        torch.randint(-9, 9, (301,), generator=g),
        torch.randint(0, 255, (17,), generator=g).to(torch.uint8),
        torch.rand(11, generator=g) > 0.5,
        torch.tensor(3.25),
        torch.empty(0, 4),
    ]
    xs[0][3, 4], xs[0][10, 1], xs[3][7] = float("nan"), float("inf"), -float("inf")
    return [x.to(device) for x in xs]


def check_digests(device: str) -> None:
    xs = mixed_tensors(device)
    first = fingerprint_many(xs, count_nonfinite=False, algorithm="mix64").fingerprints
    second = fingerprint_many(xs, count_nonfinite=False, algorithm="mix64").fingerprints
    emit("digests_repeat", int(first == second))
    host = fingerprint_many([x.cpu() for x in xs], count_nonfinite=False, algorithm="mix64")
    emit("digests_equal_host_mix64", int(first == host.fingerprints))
    flipped = [x.clone() for x in xs]
    flipped[0].view(torch.int32)[500, 20] ^= 1 << 7
    changed = fingerprint_many(flipped, count_nonfinite=False, algorithm="mix64").fingerprints
    differ = [i for i, (a, b) in enumerate(zip(first, changed, strict=True)) if a != b]
    emit("one_bit_flip_changes_exactly_its_digest", int(differ == [0]))
    with deterministic(True):
        again = fingerprint_many(xs, count_nonfinite=False, algorithm="mix64").fingerprints
    emit("digests_under_deterministic_mode", int(again == first))
    emit("example_digest", first[0].digest)


def check_stats(device: str) -> None:
    xs = mixed_tensors(device)
    first = fingerprint_many(xs, algorithm="mix64").fingerprints
    second = fingerprint_many(xs, algorithm="mix64").fingerprints
    emit("stats_repeat", int(all(a.stats == b.stats for a, b in zip(first, second, strict=True))))
    host = fingerprint_many([x.cpu() for x in xs], algorithm="mix64").fingerprints
    emit("nonfinite_counts_equal_host", int(first == host))
    exact, worst = True, 0.0
    for a, b in zip(first, host, strict=True):
        if a.stats is None:
            continue
        sa, sb = a.stats, b.stats
        # min, max, counts and samples are exact; sums may be ordered differently
        exact &= replace(sa, mean=0.0, norm=0.0) == replace(sb, mean=0.0, norm=0.0)
        for x, y in ((sa.mean, sb.mean), (sa.norm, sb.norm)):
            if x == x and y == y and x != y:
                worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
    emit("stats_minmax_counts_sample_equal_host", int(exact))
    emit("stats_mean_norm_max_rel_diff_vs_host", f"{worst:.3g}")
    with deterministic(True):
        again = fingerprint_many(xs, algorithm="mix64").fingerprints
    emit(
        "stats_under_deterministic_mode", int([a.stats for a in again] == [a.stats for a in first])
    )


def recorded_run(device: str, spill_dir: Path, name: str, steps: int) -> tuple[dict, float]:
    torch.manual_seed(0)
    model = TinyTransformer().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = sequence_data(torch.Generator().manual_seed(1))
    x, y = data.tensors[0][:32].to(device), data.tensors[1][:32].to(device)
    recorder = Recorder(SpillWriter(spill_dir / f"{name}.bin", 256 * 2**20))
    in_record = 0.0
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(device)
        start = time.perf_counter()
        recorder.record(step, {"model": model, "optimizer": optimizer, "loss": loss})
        in_record += time.perf_counter() - start
    run = recorder.close()
    return {(s.step, k): e for s in run.steps for k, e in s.entries.items()}, in_record / steps


def check_recorder(device: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, deterministic(True):
        a, record_s = recorded_run(device, Path(tmp), "a", 6)
        b, _ = recorded_run(device, Path(tmp), "b", 6)
        tensors = [e for (_, k), e in a.items() if not k.startswith("optimizer.param_groups")]
        emit("recorded_entries", len(a))
        algorithms = sorted({e.fingerprint.algorithm for e in tensors})
        # AdamW keeps its step counts on the CPU: those are xxh3, the rest mix64 on CUDA
        emit("recorded_algorithms", "+".join(algorithms))
        differ = [key for key in a if a[key].fingerprint != b[key].fingerprint]
        emit("training_runs_bitwise_equal", int(not differ))
        if differ:
            emit("training_runs_first_difference", f"step {differ[0][0]} {differ[0][1]}")
        spilled = [e for e in tensors if e.spill is not None]
        back = [read_spilled(e.spill, e.fingerprint.dtype, e.fingerprint.shape) for e in spilled]
        same = [
            e.fingerprint.digest
            == fingerprint_many([t], algorithm=e.fingerprint.algorithm).fingerprints[0].digest
            for e, t in zip(spilled, back, strict=True)
        ]
        emit("spilled_tensors", len(spilled))
        emit("spilled_bytes_hash_back_to_recorded_digests", int(all(same) and bool(same)))
        emit("stats_in_every_floating_entry", int(all(e.fingerprint.stats for e in tensors)))


def check_record_overhead(device: str, steps: int = 20) -> None:
    torch.manual_seed(0)
    model = TinyTransformer().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = sequence_data(torch.Generator().manual_seed(1))
    x, y = data.tensors[0][:32].to(device), data.tensors[1][:32].to(device)

    def train(recorder: Recorder | None) -> None:
        run_steps(model, optimizer, (x, y), steps, recorder)  # timed here, with a device sync

    train(None)
    with tempfile.TemporaryDirectory() as tmp:
        plain = best_of(3, device, lambda: train(None)) / steps
        spilled = best_of(
            3, device, lambda: train(Recorder(SpillWriter(Path(tmp) / "s.bin", 2**30)))
        )
        unspilled = best_of(3, device, lambda: train(Recorder(None)))
    leaves = [t for _, t in flatten_leaves({"model": model, "optimizer": optimizer}, live=True)]
    on_device = [t for t in leaves if isinstance(t, torch.Tensor) and t.device.type == device]
    device_pass = best_of(5, device, lambda: fingerprint_many(on_device)) * 1e3
    via_host = best_of(5, device, lambda: fingerprint_many(host_copy(on_device))) * 1e3
    emit("transformer_device_tensors", len(on_device))
    emit("transformer_fingerprint_ms_on_device", f"{device_pass:.3f}")
    emit("transformer_fingerprint_ms_via_one_host_copy", f"{via_host:.3f}")
    emit("transformer_step_ms", f"{plain * 1e3:.3f}")
    emit("transformer_record_ms_no_spill", f"{(unspilled / steps - plain) * 1e3:.3f}")
    emit("transformer_record_ms_with_spill", f"{(spilled / steps - plain) * 1e3:.3f}")
    emit(
        "transformer_record_overhead_pct_no_spill",
        f"{100 * (unspilled / steps - plain) / plain:.1f}",
    )


def host_copy(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors on the host, through one copy of their concatenation (same dtype)."""
    flat = torch.cat([t.reshape(-1) for t in tensors]).cpu()
    return list(flat.split([t.numel() for t in tensors]))


def big_state(gb: float, device: str) -> list[torch.Tensor]:
    """A transformer-like mix: 16 MB matrices and 1024-element vectors, float32."""
    g = torch.Generator(device=device).manual_seed(0)
    tensors, remaining = [], int(gb * 2**30) // 4
    while remaining > 0:
        n = min(remaining, 4096 * 1024) // 1024 * 1024 or 1024
        tensors.append(torch.randn(n, generator=g, device=device).reshape(-1, 1024))
        tensors.append(torch.randn(1024, generator=g, device=device))
        remaining -= n + 1024
    return tensors


def check_throughput(gb: float, device: str) -> None:
    state = big_state(gb, device)
    nbytes = sum(t.numel() * t.element_size() for t in state)
    size = nbytes / 1e9
    destination = [torch.empty_like(t) for t in state]

    def copy() -> None:
        for src, dst in zip(state, destination, strict=True):
            dst.copy_(src)

    def host_path() -> None:  # what a CPU fingerprint of a GPU tensor does: copy, then xxh3
        for t in state:
            xxhash.xxh3_64_intdigest(t.cpu().view(torch.uint8).numpy())

    copy()
    fingerprint_many(state[:4], algorithm="mix64")  # warm-up
    t_copy = best_of(5, device, copy)
    t_digest = best_of(
        5, device, lambda: fingerprint_many(state, count_nonfinite=False, algorithm="mix64")
    )
    t_stats = best_of(5, device, lambda: fingerprint_many(state, algorithm="mix64"))
    t_host = best_of(2, device, host_path)
    emit("state_gb", f"{size:.2f}")
    emit("tensors", len(state))
    emit("device_copy_gbps", f"{size / t_copy:.4g}")
    emit("device_copy_read_plus_write_gbps", f"{2 * size / t_copy:.4g}")
    emit("fingerprint_digest_only_gbps", f"{size / t_digest:.3g}")
    emit("fingerprint_with_stats_gbps", f"{size / t_stats:.3g}")
    emit("host_copy_path_gbps", f"{size / t_host:.2f}")
    emit("fingerprint_vs_copy_ratio", f"{t_copy / t_digest:.3f}")
    emit("fingerprint_with_stats_vs_copy_ratio", f"{t_copy / t_stats:.3f}")
    emit("fingerprint_vs_host_path_speedup", f"{t_host / t_digest:.3g}")
    emit("fingerprint_with_stats_vs_host_path_speedup", f"{t_host / t_stats:.3g}")


def check_environment() -> None:
    try:
        from repro_check import environment
    except ImportError:  # before the package moved out of core/
        from repro_check.core import environment  # type: ignore[no-redef]
    snapshot = environment.capture()
    gpus, cuda = snapshot.get("gpus", {}), snapshot.get("cuda", {})
    for key in ("status", "reason", "hint", "driver_version", "nvml_version", "count"):
        if key in gpus:
            emit(f"env_gpus_{key}", gpus[key])
    for index, gpu in enumerate(gpus.get("devices", [])[:2]):
        for key, value in sorted(gpu.items()):
            if not isinstance(value, (dict, list)):
                emit(f"env_gpu{index}_{key}", value)
    for key in ("built", "available", "device_count"):
        emit(f"env_cuda_{key}", cuda.get(key))
    emit("env_cudnn", cuda.get("cudnn"))
    emit("env_determinism", snapshot.get("determinism"))
    emit("env_capture_seconds", snapshot.get("capture_seconds"))


def check_deterministic_cuda(device: str) -> None:
    emit("cublas_workspace_config", os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(2048, 2048, generator=g, device=device)
    b = torch.randn(2048, 2048, generator=g, device=device)
    src = torch.randn(2**22, generator=g, device=device)
    index = torch.randint(0, 1000, (2**22,), generator=g, device=device)

    def twice(fn: Callable[[], torch.Tensor]) -> int:
        return int(torch.equal(fn(), fn()))

    def index_add() -> torch.Tensor:
        return torch.zeros(1000, device=device).index_add_(0, index, src)

    for mode in (False, True):
        with deterministic(mode):
            label = "deterministic" if mode else "default"
            emit(f"matmul_repeats_{label}", twice(lambda: a @ b))
            emit(f"index_add_repeats_{label}", twice(index_add))
            emit(
                f"scatter_add_repeats_{label}",
                twice(lambda: torch.zeros(1000, device=device).scatter_add_(0, index, src)),
            )
            try:
                torch.histc(src, bins=10)
                emit(f"histc_{label}", "ran")
            except RuntimeError as exc:
                emit(f"histc_{label}", f"refused: {str(exc).splitlines()[0][:120]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    emit("torch", torch.__version__)
    emit("cuda_available", int(torch.cuda.is_available()))
    if args.device == "cuda" and not torch.cuda.is_available():
        return
    if args.device == "cuda":
        emit("device_name", torch.cuda.get_device_name(0))
        emit("torch_cuda", torch.version.cuda)
    with section("digests"):
        check_digests(args.device)
    with section("stats"):
        check_stats(args.device)
    with section("recorder"):
        check_recorder(args.device)
    with section("record_overhead"):
        check_record_overhead(args.device)
    with section("throughput"):
        check_throughput(args.gb, args.device)
    with section("deterministic_cuda"):
        check_deterministic_cuda(args.device)
    with section("environment"):
        check_environment()


if __name__ == "__main__":
    main()
