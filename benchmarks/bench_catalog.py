"""What the run catalog and the resume check cost a session.

Prints ``name=value`` lines (milliseconds or MB/s, best of ``--repeat``):

- ``start_run_ms`` / ``finish_run_ms``: the catalog's two transactions for a session of
  ``--tests`` tests (the second with artifacts and data versions);
- ``record_digests_ms``: digests of one test's record (30 steps x 40 keys), kept per test;
- ``dir_hash_mb_s``: a data folder's DVC-style version (sha256 of every file);
- ``checkpoint_save_ms`` / ``checkpoint_restore_ms`` / ``state_probe_ms``: a resume checkpoint
  of a 4M-parameter MLP with Adam (what ``repro.checkpoint(k)`` and ``repro.restore()`` add).

    python benchmarks/bench_catalog.py [--repeat 5] [--tests 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from repro_check.catalog import Artifact, Catalog, DataVersion, RunEnd, RunStart, TestEntry
from repro_check.catalog.lineage import record_digests
from repro_check.core.datahash import hash_directory
from repro_check.core.record import Recorder, RNGState
from repro_check.core.resume_state import probe, restore_state, save_state

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_fingerprint import best_of  # noqa: E402


def catalog_costs(folder: Path, tests: int, repeat: int) -> None:
    start = RunStart("session", ["--repro", "tests/"], str(folder), sys.executable, base_seed=0)
    end = RunEnd(
        outcome="passed",
        tests=[
            TestEntry(f"tests/t.py::test_{i}", "identical", i, 30, 40, "d" * 32)
            for i in range(tests)
        ],
        artifacts=[
            Artifact("checkpoint", f"/r/{i}.safetensors", "s" * 64, 1, f"t::{i}")
            for i in range(tests)
        ],
        data_versions=[
            DataVersion(f"t::{i}", "train", "tensor", "sha256:" + "a" * 64) for i in range(tests)
        ],
    )
    with Catalog(folder / "catalog.sqlite") as catalog:
        ids: list[str] = []
        print(
            f"start_run_ms={best_of(repeat, lambda: ids.append(catalog.start_run(start))) * 1e3:.2f}"
        )
        print(
            f"finish_run_ms={best_of(repeat, lambda: catalog.finish_run(ids.pop(), end)) * 1e3:.2f}"
        )


def digest_costs(repeat: int) -> None:
    recorder = Recorder()
    for step in range(30):
        recorder.record(step, {f"w{k}": torch.full((8,), float(step + k)) for k in range(40)})
    record = recorder.close()
    print(f"record_digests_ms={best_of(repeat, lambda: record_digests(record)) * 1e3:.2f}")


def directory_costs(folder: Path, repeat: int) -> None:
    data = folder / "data"
    data.mkdir()
    for i in range(64):
        (data / f"part-{i:03d}.bin").write_bytes(os.urandom(1 << 20))
    ms = best_of(repeat, lambda: hash_directory(data)) * 1e3
    print(f"dir_hash_mb_s={64 / (ms / 1e3):.0f}")


def checkpoint_costs(folder: Path, repeat: int) -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(2048, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 2048)
    )
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 2048)).sum().backward()
    optimizer.step()
    state = {"model": model, "optimizer": optimizer, "rng": RNGState()}
    path = folder / "step-3"
    print(f"checkpoint_save_ms={best_of(repeat, lambda: save_state(path, 3, state, {})) * 1e3:.1f}")
    live = {"model": model, "optimizer": optimizer}
    print(f"checkpoint_restore_ms={best_of(repeat, lambda: restore_state(path, live)) * 1e3:.1f}")
    print(f"state_probe_ms={best_of(repeat, lambda: probe(live)) * 1e3:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        catalog_costs(Path(tmp), args.tests, args.repeat)
        digest_costs(args.repeat)
        directory_costs(Path(tmp), args.repeat)
        checkpoint_costs(Path(tmp), args.repeat)


if __name__ == "__main__":
    main()
