"""The relevance policy, on real snapshots of this machine edited one field at a time: what can
change the numbers gates, what only says where or when the run happened never does; and what a
committed baseline keeps of a snapshot."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from env_helpers import drop_controlled, full_snapshot, mutate

from repro_check import environment as env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    drop_controlled(monkeypatch)


# What the NVML probe writes on a machine with one GPU (see test_environment's fake NVML).
NVML_OK = {
    "status": "ok",
    "driver_version": "550.54.15",
    "cuda_driver_version": "12.4",
    "nvml_version": "12.550.54.15",
    "device_count": 1,
    "devices": [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-0000-uuid",
            "pci_bus_id": "00000000:00:00.0",
            "compute_capability": "9.0",
            "memory_total_mib": 81920,
            "mig_mode": {"current": "disabled", "pending": "disabled"},
            "ecc_mode": {"current": "enabled", "pending": "enabled"},
            "persistence_mode": "enabled",
            "clocks": {"sm_mhz": 1980, "mem_mhz": 2619, "sm_max_mhz": 1980, "mem_max_mhz": 2619},
            "power_limit_w": 700.0,
        }
    ],
    "cuda_visible_devices": None,
    "cuda_device_order": None,
}


def _relevant(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [d.path for d in env.diff(a, b) if d.relevant]


# (path, new value): each one, alone, can change the numbers.
RELEVANT_EDITS: list[tuple[str, Any]] = [
    ("torch.version", "2.14.1"),
    ("torch.git_version", "0123456789abcdef"),
    ("torch.build.settings.BLAS_INFO", "openblas"),
    ("determinism.float32_matmul_precision", "medium"),
    ("determinism.cudnn.deterministic", "FLIP"),
    ("determinism.deterministic_algorithms", "FLIP"),
    ("determinism.mkldnn.enabled", "FLIP"),
    ("cpu.capability", "DEFAULT"),
    ("cpu.model", "Some Other CPU"),
    ("cpu.flags", ["sse", "sse2"]),
    ("threads.torch_num_threads", 97),
    ("threads.torch_num_interop_threads", 97),
    ("blas.torch.blas_info", "openblas"),
    ("blas.numpy.version", "1.0.0"),
    ("backends.mkldnn_available", "FLIP"),
    ("cuda.built", "12.4"),
    ("cuda.cudnn.loaded_version", 90100),
    ("env_vars.ATEN_CPU_CAPABILITY", "default"),
    ("env_vars.CUBLAS_WORKSPACE_CONFIG", ":4096:8"),
    ("env_vars.MKL_CBWR", "COMPATIBLE"),
    ("env_vars.PYTHONHASHSEED", "123"),
    ("python.version", "3.99.0"),
    ("platform.machine", "aarch64"),
    ("packages.torch.version", "2.14.1"),
    ("packages.numpy.version", "1.0.0"),
    ("packages.nvidia-cublas-cu12", {"name": "nvidia-cublas-cu12", "version": "12.4.5.8"}),
]

# The same for GPU fields, on snapshots whose NVML probe saw a GPU on both sides.
RELEVANT_GPU_EDITS: list[tuple[str, Any]] = [
    ("gpus.driver_version", "560.35.03"),
    ("gpus.cuda_driver_version", "12.6"),
    ("gpus.device_count", 2),
    ("gpus.devices[0].name", "NVIDIA A100-SXM4-80GB"),
    ("gpus.devices[0].compute_capability", "8.0"),
    ("gpus.devices[0].mig_mode.current", "enabled"),
]

# (path, new value): none of these may ever gate.
INFORMATIONAL_EDITS: list[tuple[str, Any]] = [
    ("host.hostname", "another-machine"),
    ("python.executable", "/opt/other/venv/bin/python"),
    ("python.compiler", "Clang 99"),
    ("platform.release", "9.9.9-other"),
    ("cpu.logical_cores", 128),
    ("cpu.affinity_cores", 1),
    ("repro_check_version", "9.9.9"),
    ("git.commit", "f" * 40),
    ("git.dirty", True),
    ("git.branch", "feature/x"),
    ("git.toplevel", "/home/someone/else"),
    ("git", {"status": "not-a-repository", "path": "/tmp/x"}),
    ("gpus", {"status": "nvml-python-missing", "hint": "pip install repro-check[gpu]"}),
    ("gpus", {"status": "no-nvml-library", "reason": "NVML Shared Library Not Found"}),
    ("gpus", {"status": "nvml-error", "error": "NVMLError: Unknown Error"}),
    ("blas.threadpoolctl", [{"user_api": "blas", "internal_api": "openblas", "num_threads": 2}]),
    ("packages.nvidia-ml-py", {"name": "nvidia-ml-py", "version": "12.560.30"}),
    ("packages.requests", {"name": "requests", "version": "0.0.1"}),
    ("packages.torch.url", "file:///home/someone/wheels/torch.whl"),
    ("packages.torch.installer", "uv"),
    ("env_vars.TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_someone"),
    ("env_vars.TORCH_HOME", "/home/someone/.cache/torch"),
    ("env_vars.LD_LIBRARY_PATH", "/opt/cuda/lib64"),
    ("env_vars.LD_PRELOAD", "/usr/lib/libjemalloc.so"),
    ("env_vars.TORCH_LOGS", "+dynamo"),
    ("captured_at", "1999-01-01T00:00:00+00:00"),
    ("capture_seconds", 99.0),
]


def _edited(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    if value == "FLIP":
        node: Any = base
        for part in path.split("."):
            node = node[part]
        assert isinstance(node, bool), f"{path} is {node!r} here"
        value = not node
    return mutate(base, path, value)


@pytest.mark.parametrize(("path", "value"), RELEVANT_EDITS, ids=[p for p, _ in RELEVANT_EDITS])
def test_a_numeric_field_alone_is_relevant(path: str, value: Any) -> None:
    base = full_snapshot()
    edited = _edited(base, path, value)
    relevant = _relevant(base, edited)
    assert relevant, f"changing {path} must be relevant"
    assert all(p == path or p.startswith((path + ".", path + "[")) for p in relevant), relevant
    assert _relevant(edited, base) == relevant  # symmetric


@pytest.mark.parametrize(
    ("path", "value"), RELEVANT_GPU_EDITS, ids=[p for p, _ in RELEVANT_GPU_EDITS]
)
def test_a_gpu_field_seen_on_both_sides_is_relevant(path: str, value: Any) -> None:
    base = mutate(full_snapshot(), "gpus", NVML_OK)
    edited = _edited(base, path, value)
    relevant = _relevant(base, edited)
    assert relevant and all(p.startswith(path) for p in relevant), relevant


@pytest.mark.parametrize(
    ("path", "value"), INFORMATIONAL_EDITS, ids=[f"{p}={v}"[:60] for p, v in INFORMATIONAL_EDITS]
)
def test_where_and_when_are_never_relevant(path: str, value: Any) -> None:
    base = full_snapshot()
    edited = _edited(base, path, value)
    assert _relevant(base, edited) == []
    assert _relevant(edited, base) == []


def test_installing_nvml_on_a_gpu_less_machine_changes_nothing_relevant() -> None:
    """The reproduced hole: nvidia-ml-py installed or not must not move baselines to tolerance."""
    base = full_snapshot()
    without = mutate(base, "gpus", {"status": "nvml-python-missing", "hint": "pip install x"})
    with_library_missing = mutate(
        base, "gpus", {"status": "no-nvml-library", "reason": "NVML Shared Library Not Found"}
    )
    diffs = env.diff(without, with_library_missing)
    assert diffs and not [d for d in diffs if d.relevant]
    no_devices = mutate(base, "gpus", {"status": "no-devices", "device_count": 0, "devices": []})
    assert _relevant(without, no_devices) == [] and _relevant(no_devices, without) == []
    # ... and the difference is still shown, as informational.
    assert "gpus.status: nvml-python-missing -> no-nvml-library" in env.format_diff(diffs)


def test_a_gpu_seen_on_one_side_only_is_not_evidence() -> None:
    """NVML missing on one side: what it did not see is no difference; torch's own CUDA fields
    (built, available, device count, cuDNN) still gate."""
    base = mutate(full_snapshot(), "gpus", NVML_OK)
    blind = mutate(base, "gpus", {"status": "nvml-python-missing"})
    assert _relevant(base, blind) == []
    assert _relevant(base, mutate(blind, "cuda.device_count", 7)) == ["cuda.device_count"]


def test_an_errored_probe_still_gates() -> None:
    """A probe that failed on one side cannot prove the sides equal: that is not a pass."""
    base = full_snapshot()
    broken = mutate(base, "cpu.capability", {"error": "RuntimeError: no"})
    assert _relevant(base, broken) == ["cpu.capability"]


@pytest.mark.parametrize(
    ("path", "relevant"),
    [
        ("torch.version", True),
        ("cpu.capability", True),
        ("threads.torch_num_threads", True),
        ("determinism.cudnn.benchmark", True),
        ("env_vars.CUBLAS_WORKSPACE_CONFIG", True),
        ("env_vars.TORCHINDUCTOR_CACHE_DIR", False),
        ("env_vars.LD_PRELOAD", False),
        ("cuda.cudnn.loaded_version", True),
        ("cuda.devices[0].name", True),
        ("cuda.devices[0].uuid", False),
        ("gpus.driver_version", True),
        ("gpus.status", False),
        ("gpus.reason", False),
        ("gpus.hint", False),
        ("gpus.devices[0].name", True),
        ("gpus.devices[1].clocks.sm_mhz", False),
        ("packages.numpy.version", True),
        ("packages.numpy.url", False),
        ("packages.nvidia-cublas-cu12.version", True),
        ("packages.nvidia-ml-py.version", False),
        ("packages.requests.version", False),
        ("blas.numpy.blas.name", True),
        ("blas.threadpoolctl[0].num_threads", False),
        ("host.hostname", False),
        ("git.commit", False),
        ("python.version", True),
        ("python.executable", False),
    ],
)
def test_relevance_table(path: str, relevant: bool) -> None:
    assert env.is_relevant(path) is relevant


# ---------------------------------------------------------------------------------- baselines


def test_a_baseline_snapshot_names_no_machine_and_keeps_every_relevant_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = "/home/alice-" + os.urandom(4).hex()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", f"{home}/.cache/inductor")
    monkeypatch.setenv("LD_PRELOAD", f"{home}/lib/libfast.so")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    snap = env.capture(include_packages=True, repo_dir=str(Path(__file__).parent))
    snap = mutate(
        snap, "packages.mylib", {"name": "mylib", "version": "1", "url": f"file://{home}"}
    )

    stripped = env.for_baseline(snap)
    text = json.dumps(stripped)
    for private in (home, sys.executable, sys.prefix, str(Path(__file__).parent.parent)):
        assert private not in text, private
    hostname = socket.gethostname()
    if len(hostname) >= 4:
        assert hostname not in text
    assert "host" not in stripped and "captured_at" not in stripped
    assert stripped["env_vars"]["ATEN_CPU_CAPABILITY"] == "default"
    # Nothing relevant was lost, and the result is still a snapshot.
    assert _relevant(stripped, snap) == []
    assert [d.path for d in env.diff(stripped, snap) if d.path == "host"] == ["host"]
    env.save(stripped, tmp_path / "b.json")
    assert env.diff(env.load(tmp_path / "b.json"), stripped) == []


def test_a_baseline_snapshot_keeps_the_gpu_model_not_the_card() -> None:
    snap = mutate(full_snapshot(), "gpus", NVML_OK)
    stripped = env.for_baseline(snap)
    device = stripped["gpus"]["devices"][0]
    assert device["name"] == "NVIDIA H100 80GB HBM3" and device["compute_capability"] == "9.0"
    assert stripped["gpus"]["driver_version"] == "550.54.15"
    assert not {"uuid", "pci_bus_id", "clocks"} & set(device)
    assert _relevant(stripped, snap) == []


def test_build_baseline_embeds_the_stripped_snapshot() -> None:
    from repro_check.core.record import RunRecord
    from repro_check.orchestration.baseline import build_baseline

    snap = full_snapshot()
    document = build_baseline("t.py::test", 1, 0, RunRecord(), snap, (1e-5, 1e-3))
    assert document["environment"] == env.for_baseline(snap)
    assert "host" not in document["environment"]
