"""Fingerprint throughput on a >= 400 MB state dict, against a plain copy and torch.save.

Prints ``name=value`` lines. ``fingerprint_*`` is what a record computes (digest, NaN/inf counts
and float64 statistics, the statistics beside the hash on a second thread); ``hash_only`` the
digest alone. Goal: ``fingerprint_hash_only_vs_copy_ratio >= 0.8`` (digests at memory
bandwidth) and fingerprints ~10x faster than torch.save.

    python benchmarks/bench_fingerprint.py [--mb 400] [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import time

import torch

from repro_check.core.fingerprint import fingerprint_many


def make_state_dict(total_mb: int) -> dict[str, torch.Tensor]:
    """A transformer-like mix: a few large matrices and many small vectors, float32."""
    generator = torch.Generator().manual_seed(0)
    state, remaining = {}, total_mb * 2**20 // 4
    layer = 0
    while remaining > 0:
        n = min(remaining, 4096 * 1024)
        state[f"layers.{layer}.weight"] = torch.randn(n, generator=generator).reshape(-1, 1024)
        state[f"layers.{layer}.bias"] = torch.randn(1024, generator=generator)
        remaining -= n + 1024
        layer += 1
    return state


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    state = make_state_dict(args.mb)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    gb = nbytes / 1e9
    destination = {k: torch.empty_like(t) for k, t in state.items()}  # pre-faulted below

    def copy() -> None:
        for key, tensor in state.items():
            destination[key].copy_(tensor)

    tensors = list(state.values())

    def fingerprint() -> None:
        fingerprint_many(tensors)

    def fingerprint_hash_only() -> None:
        fingerprint_many(tensors, count_nonfinite=False)

    copy()
    t_copy = best_of(args.repeat, copy)
    t_fp = best_of(args.repeat, fingerprint)
    t_hash = best_of(args.repeat, fingerprint_hash_only)
    t_save = best_of(max(1, args.repeat // 2), lambda: torch.save(state, io.BytesIO()))
    print(f"state_dict_mb={nbytes / 2**20:.0f}")
    print(f"threads={torch.get_num_threads()}")
    print(f"copy_gbps={gb / t_copy:.2f}")
    print(f"fingerprint_gbps={gb / t_fp:.2f}")
    print(f"fingerprint_hash_only_gbps={gb / t_hash:.2f}")
    print(f"torch_save_gbps={gb / t_save:.2f}")
    print(f"fingerprint_vs_copy_ratio={t_copy / t_fp:.2f}")
    print(f"fingerprint_hash_only_vs_copy_ratio={t_copy / t_hash:.2f}")
    print(f"fingerprint_vs_torch_save_speedup={t_save / t_fp:.1f}")


if __name__ == "__main__":
    main()
