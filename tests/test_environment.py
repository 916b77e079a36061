"""Environment snapshots: capture, probes (each field guarded), secrets, git, NVML, diff basics.

The relevance policy is in test_env_relevance.py, the command line in test_env_cli.py, pinned
requirements in test_env_requirements.py."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from env_helpers import drop_controlled, full_snapshot

from repro_check import environment as env
from repro_check.environment.probes.nvml import visible_devices

SECTIONS = (
    "host",
    "python",
    "platform",
    "cpu",
    "threads",
    "torch",
    "determinism",
    "backends",
    "blas",
    "cuda",
    "gpus",
    "packages",
    "git",
    "env_vars",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    drop_controlled(monkeypatch)


@pytest.fixture
def snapshot() -> dict:
    return full_snapshot()


# ------------------------------------------------------------------------------------ capture


def test_capture_has_every_section(snapshot: dict) -> None:
    assert snapshot["schema"] == "repro-check/environment"
    assert snapshot["schema_version"] == env.SCHEMA_VERSION
    for section in SECTIONS:
        assert section in snapshot, section
        assert not (isinstance(snapshot[section], dict) and set(snapshot[section]) == {"error"})
    assert snapshot["torch"]["version"] == torch.__version__
    assert snapshot["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert snapshot["threads"]["torch_num_threads"] == torch.get_num_threads()
    det = snapshot["determinism"]
    assert det["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert det["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert set(det["cudnn"]) >= {"enabled", "deterministic", "benchmark", "allow_tf32"}
    assert snapshot["cuda"]["available"] is torch.cuda.is_available()
    # Some builds install as "2.11.0" although torch.__version__ says "2.11.0+cu130".
    assert snapshot["packages"]["torch"]["version"].split("+")[0] == torch.__version__.split("+")[0]
    assert snapshot["python"]["version"].count(".") == 2
    assert "default" in snapshot["cpu"]["aten_capabilities"]
    # What capture() returns is exactly what survives JSON.
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_capture_reads_flags_live() -> None:
    before = env.capture(include_packages=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        after = env.capture(include_packages=False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert after["determinism"]["deterministic_algorithms"] is True
    paths = [d.path for d in env.diff(before, after)]
    assert "determinism.deterministic_algorithms" in paths
    assert "determinism.deterministic_warn_only" in paths


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, repro_check.environment, repro_check.commands.env; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_failing_probe_is_recorded_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> int:
        raise RuntimeError("interop pool exploded")

    monkeypatch.setattr(torch, "get_num_interop_threads", broken)
    snap = env.capture(include_packages=False)
    assert snap["threads"]["torch_num_interop_threads"] == {
        "error": "RuntimeError: interop pool exploded"
    }
    assert snap["threads"]["torch_num_threads"] == torch.get_num_threads()


# ----------------------------------------------------------------------------- env variables


def test_secrets_are_never_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_API_TOKEN", "tok-123-very-secret")
    monkeypatch.setenv("PYTORCH_SECRET_SAUCE", "sauce-456")
    monkeypatch.setenv("TORCH_HUB_API_KEY", "key-789")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.setenv("PYTORCH_MIRROR_URL", "https://alice:hunter2@example.com/simple")
    monkeypatch.setenv("HOME_SWEET_HOME", "not-allowlisted")
    snap = env.capture(include_packages=False)
    env_vars = snap["env_vars"]
    assert env_vars["MKL_CBWR"] == "COMPATIBLE"
    for name in ("FAKE_API_TOKEN", "PYTORCH_SECRET_SAUCE", "TORCH_HUB_API_KEY", "HOME_SWEET_HOME"):
        assert name not in env_vars
    assert env_vars["PYTORCH_MIRROR_URL"] == "https://***@example.com/simple"
    text = json.dumps(snap)
    for secret in ("tok-123-very-secret", "sauce-456", "key-789", "hunter2"):
        assert secret not in text


@pytest.mark.skipif(not hasattr(os, "environb"), reason="needs POSIX os.environb")
def test_env_value_with_odd_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(os.environb, b"OMP_ODD_VALUE", b"ab\xff\xfecd")
    snap = env.capture(include_packages=False)
    assert snap["env_vars"]["OMP_ODD_VALUE"] == "ab\\xff\\xfecd"
    env.save(snap, tmp_path / "odd.json")
    assert env.load(tmp_path / "odd.json")["env_vars"]["OMP_ODD_VALUE"] == "ab\\xff\\xfecd"


# ----------------------------------------------------------------------------------------- diff


def test_diff_names_env_vars_and_puts_relevant_first(monkeypatch: pytest.MonkeyPatch) -> None:
    a = env.capture(include_packages=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    b = env.capture(include_packages=False)
    b["host"] = {"hostname": a["host"]["hostname"] + "-other"}  # informational
    diffs = env.diff(a, b)
    by_path = {d.path: d for d in diffs}
    assert by_path["env_vars.ATEN_CPU_CAPABILITY"].before is env.UNSET
    assert by_path["env_vars.ATEN_CPU_CAPABILITY"].after == "default"
    assert by_path["env_vars.ATEN_CPU_CAPABILITY"].relevant
    assert by_path["env_vars.OMP_NUM_THREADS"].relevant
    assert not by_path["host.hostname"].relevant
    flags = [d.relevant for d in diffs]
    assert flags == sorted(flags, reverse=True), "relevant differences must come first"
    text = env.format_diff(diffs)
    assert "env_vars.ATEN_CPU_CAPABILITY: (unset) -> default" in text
    assert "env_vars.OMP_NUM_THREADS: (unset) -> 1" in text
    assert text.index("env_vars.ATEN_CPU_CAPABILITY") < text.index("host.hostname")


def test_diff_of_identical_and_reloaded_snapshots_is_empty(snapshot: dict, tmp_path: Path) -> None:
    assert env.diff(snapshot, copy.deepcopy(snapshot)) == []
    env.save(snapshot, tmp_path / "s.json")
    loaded = env.load(tmp_path / "s.json")
    assert env.diff(snapshot, loaded) == []
    assert env.snapshot_hash(loaded) == env.snapshot_hash(snapshot)
    assert env.format_diff([]) == "no differences"


def test_format_diff_lines(snapshot: dict) -> None:
    b = copy.deepcopy(snapshot)
    b["torch"]["version"] = "2.14.1"
    b["cpu"]["flags"] = [f for f in b["cpu"]["flags"] if f != "avx2"] + ["sve"]
    b["packages"]["newpkg"] = {"name": "newpkg", "version": "1.0"}
    diffs = env.diff(snapshot, b)
    text = env.format_diff(diffs)
    assert f"torch.version: {snapshot['torch']['version']} -> 2.14.1" in text
    assert "+sve" in text
    assert "packages.newpkg: (unset) -> 1.0" in text
    assert not {d.path: d for d in diffs}["packages.newpkg"].relevant


def test_snapshot_hash_ignores_capture_time_only(snapshot: dict) -> None:
    other = copy.deepcopy(snapshot)
    other["captured_at"] = "1999-01-01T00:00:00+00:00"
    other["capture_seconds"] = 99.0
    assert env.snapshot_hash(other) == env.snapshot_hash(snapshot)
    other["env_vars"] = {**other["env_vars"], "PYTHONHASHSEED": "0"}
    assert env.snapshot_hash(other) != env.snapshot_hash(snapshot)


def test_not_captured_sections_are_not_compared(snapshot: dict) -> None:
    lean = env.capture(include_packages=False)
    assert lean["packages"]["status"] == "not-captured"
    assert not [d for d in env.diff(snapshot, lean) if d.path.startswith("packages")]


def test_summary_and_render_text(snapshot: dict) -> None:
    small = env.summary(snapshot)
    assert small["torch"] == torch.__version__
    assert small["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(small) >= {"python", "platform", "threads", "deterministic", "cuda", "gpus", "git"}
    text = env.render_text(snapshot)
    for title in ("[cpu]", "[threads]", "[torch]", "[determinism flags]", "[gpus]", "[git]"):
        assert title in text
    assert torch.__version__ in text


# ---------------------------------------------------------------------------------------- git


def test_not_a_git_repository_is_recorded(tmp_path: Path) -> None:
    snap = env.capture(repo_dir=str(tmp_path), include_packages=False)
    assert snap["git"]["status"] in ("not-a-repository", "git-missing")
    assert env.summary(snap)["git"] == {"commit": None, "dirty": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")
def test_git_commit_dirty_diff_and_untracked(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@e", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q", "-b", "main")
    (tmp_path / "train.py").write_text("lr = 1e-3\n")
    (tmp_path / "sub").mkdir()
    git("add", "train.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")

    def state() -> dict:
        return env.capture(repo_dir=str(tmp_path / "sub"), include_packages=False)["git"]

    clean = state()
    assert clean["status"] == "ok"
    assert clean["commit"] == head
    assert clean["branch"] == "main"
    assert clean["dirty"] is False

    (tmp_path / "train.py").write_text("lr = 1e-2\n")
    edited = state()
    assert edited["dirty"] is True and edited["changed_files"] == 1
    assert edited["diff_sha256"] != clean["diff_sha256"]

    (tmp_path / "sub" / "new_aug.py").write_text("p = 0.5\n")
    untracked = state()
    assert untracked["untracked_files"] == 1
    assert untracked["untracked_sha256"] != edited["untracked_sha256"]
    (tmp_path / "sub" / "new_aug.py").write_text("p = 0.7\n")
    assert state()["untracked_sha256"] != untracked["untracked_sha256"]
    assert state()["diff_sha256"] == edited["diff_sha256"]


# --------------------------------------------------------------------------------------- GPUs


def test_pynvml_missing_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    gpus = env.capture(include_packages=False)["gpus"]
    assert gpus["status"] == "nvml-python-missing"
    assert gpus["hint"] == "pip install repro-check[gpu]"


def test_nvml_status_on_this_machine() -> None:
    pytest.importorskip("pynvml")
    gpus = env.capture(include_packages=False)["gpus"]
    assert gpus["status"] in ("ok", "no-devices", "no-nvml-library", "nvml-error")
    if gpus["status"] == "ok":
        for device in gpus["devices"]:
            assert {"name", "uuid", "compute_capability", "mig_mode", "clocks"} <= set(device)


def test_cuda_visible_devices_mapping() -> None:
    devices = [
        {"index": 0, "uuid": "GPU-aaaa-1111", "name": "A"},
        {"index": 1, "uuid": "GPU-bbbb-2222", "name": "B"},
    ]
    uuids = lambda cvd: [v["uuid"] for v in visible_devices(cvd, devices)]  # noqa: E731
    assert uuids(None) == ["GPU-aaaa-1111", "GPU-bbbb-2222"]
    assert uuids("1,0") == ["GPU-bbbb-2222", "GPU-aaaa-1111"]
    assert uuids("GPU-bbbb") == ["GPU-bbbb-2222"]
    assert uuids("0,7,1") == ["GPU-aaaa-1111"]  # CUDA stops at the first invalid entry
    assert uuids("-1") == []
    assert uuids("") == []


class _FakeNVML:
    """A stand-in for the pynvml module (a dependency, not the code under test) for GPU-less CI."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_DRIVER_NOT_LOADED = 9

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(f"NVML error {value}")
            self.value = value

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's spelling
        pass

    def __init__(self, init_error: int | None = None) -> None:
        self.init_error = init_error
        self.shutdowns = 0

    def nvmlInit(self) -> None:  # noqa: N802
        if self.init_error is not None:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return 12040

    def nvmlSystemGetNVMLVersion(self) -> str:  # noqa: N802
        return "12.550.54.15"

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetName(self, h: int) -> bytes:  # noqa: N802
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return f"GPU-{h}{h}{h}{h}-uuid"

    def nvmlDeviceGetPciInfo(self, h: int) -> object:  # noqa: N802
        return type("Pci", (), {"busId": f"00000000:0{h}:00.0".encode()})()

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:  # noqa: N802
        return (9, 0)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> object:  # noqa: N802
        return type("Mem", (), {"total": 80 * 2**30})()

    def nvmlDeviceGetMigMode(self, h: int) -> tuple[int, int]:  # noqa: N802
        if h == 1:
            raise self.NVMLError_NotSupported(3)
        return (0, 0)

    def nvmlDeviceGetEccMode(self, h: int) -> tuple[int, int]:  # noqa: N802
        return (1, 1)

    def nvmlDeviceGetPersistenceMode(self, h: int) -> int:  # noqa: N802
        return 1

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:  # noqa: N802
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int:  # noqa: N802
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:  # noqa: N802
        raise RuntimeError("driver hiccup")


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch):
    def install(fake: _FakeNVML) -> _FakeNVML:
        env.clear_cache()
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    yield install
    env.clear_cache()


def test_nvml_fields_are_guarded_one_by_one(fake_nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_nvml(_FakeNVML())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    snap = env.capture(include_packages=False)
    gpus = snap["gpus"]
    assert fake.shutdowns == 1
    assert gpus["status"] == "ok"
    assert gpus["driver_version"] == "550.54.15"
    assert gpus["cuda_driver_version"] == "12.4"
    first, second = gpus["devices"]
    assert first["name"] == "NVIDIA H100 80GB HBM3"
    assert first["compute_capability"] == "9.0"
    assert first["memory_total_mib"] == 80 * 1024
    assert first["mig_mode"] == {"current": "disabled", "pending": "disabled"}
    assert first["pci_bus_id"] == "00000000:00:00.0"
    assert second["mig_mode"]["error"] == "not supported"
    assert first["power_limit_w"] == {"error": "RuntimeError: driver hiccup"}
    assert first["clocks"]["sm_max_mhz"] == 1980
    assert [v["uuid"] for v in gpus["visible"]] == ["GPU-1111-uuid"]
    assert env.summary(snap)["gpus"] == ["NVIDIA H100 80GB HBM3"] * 2
    assert "NVIDIA H100 80GB HBM3" in env.render_text(snap)


@pytest.mark.parametrize("code", [_FakeNVML.NVML_ERROR_LIBRARY_NOT_FOUND, 9])
def test_nvml_library_missing_is_recorded(fake_nvml, code: int) -> None:
    fake_nvml(_FakeNVML(init_error=code))
    gpus = env.capture(include_packages=False)["gpus"]
    assert gpus["status"] == "no-nvml-library"
    assert "devices" not in gpus


def test_nvml_with_zero_devices_is_recorded(fake_nvml) -> None:
    fake = _FakeNVML()
    fake.nvmlDeviceGetCount = lambda: 0  # type: ignore[method-assign]
    fake_nvml(fake)
    gpus = env.capture(include_packages=False)["gpus"]
    assert gpus["status"] == "no-devices"
    assert gpus["device_count"] == 0 and gpus["devices"] == []
    assert fake.shutdowns == 1
