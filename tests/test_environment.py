"""Environment snapshots: capture, secrets, diff, CLI exit codes, git, NVML, requirements."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro_check import cli
from repro_check.core import environment as env
from repro_check.core.atomic import StoredFileError

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

# Variables the tests set themselves; removed from the baseline so results do not depend on the
# shell the tests run from.
CONTROLLED = ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONTROLLED:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def snapshot() -> dict:
    return env.capture(include_packages=True)


def _subprocess_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    base.update(extra)
    return base


def _cli(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repro_check.cli", *args],
        cwd=cwd,
        env=_subprocess_env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


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
    assert snapshot["packages"]["torch"]["version"] == torch.__version__
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


def test_capture_without_packages_is_fast() -> None:
    env.capture(include_packages=False)  # warm the per-process caches
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        env.capture(include_packages=False)
        timings.append(time.perf_counter() - start)
    print(f"capture(include_packages=False): min {min(timings) * 1e3:.1f} ms")
    assert min(timings) < 0.15


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, repro_check.core.environment; print('torch' in sys.modules)"
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


@pytest.mark.parametrize(
    ("path", "relevant"),
    [
        ("torch.version", True),
        ("cpu.capability", True),
        ("threads.torch_num_threads", True),
        ("determinism.cudnn.benchmark", True),
        ("env_vars.CUBLAS_WORKSPACE_CONFIG", True),
        ("env_vars.TORCHINDUCTOR_CACHE_DIR", False),
        ("cuda.cudnn.loaded_version", True),
        ("gpus.driver_version", True),
        ("gpus.devices[0].name", True),
        ("gpus.devices[1].clocks.sm_mhz", False),
        ("packages.numpy.version", True),
        ("packages.nvidia-cublas-cu12.version", True),
        ("packages.nvidia-ml-py.version", False),
        ("packages.requests.version", False),
        ("blas.numpy.blas.name", True),
        ("host.hostname", False),
        ("git.commit", False),
        ("python.version", True),
        ("python.executable", False),
    ],
)
def test_relevance_table(path: str, relevant: bool) -> None:
    assert env.is_relevant(path) is relevant


def test_summary_and_render_text(snapshot: dict) -> None:
    small = env.summary(snapshot)
    assert small["torch"] == torch.__version__
    assert small["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(small) >= {"python", "platform", "threads", "deterministic", "cuda", "gpus", "git"}
    text = env.render_text(snapshot)
    for title in ("[cpu]", "[threads]", "[torch]", "[determinism flags]", "[gpus]", "[git]"):
        assert title in text
    assert torch.__version__ in text


# ------------------------------------------------------------------------------ CLI, real runs


def test_cli_env_diff_between_two_real_processes(tmp_path: Path) -> None:
    first = _cli(["env", "-o", "a.json"], tmp_path)
    assert first.returncode == 0, first.stderr
    second = _cli(
        ["env", "-o", "b.json"], tmp_path, ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="1"
    )
    assert second.returncode == 0, second.stderr

    result = _cli(["env", "diff", "a.json", "b.json"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "env_vars.ATEN_CPU_CAPABILITY: (unset) -> default" in out
    assert "env_vars.OMP_NUM_THREADS: (unset) -> 1" in out
    a = env.load(tmp_path / "a.json")
    capability = a["cpu"]["capability"]
    if capability != "DEFAULT":  # e.g. "cpu.capability: AVX2 -> DEFAULT"
        assert f"cpu.capability: {capability} -> DEFAULT" in out
    threads = a["threads"]["torch_num_threads"]
    if threads > 1:
        assert f"threads.torch_num_threads: {threads} -> 1" in out
    assert "relevant differences" in out.splitlines()[1]


def test_cli_env_diff_of_a_file_with_itself(
    tmp_path: Path, snapshot: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    env.save(snapshot, tmp_path / "a.json")
    assert cli.main(["env", "diff", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
    assert "no differences" in capsys.readouterr().out


def test_cli_env_check_against_this_machine(tmp_path: Path) -> None:
    assert _cli(["env", "-o", "a.json", "--no-packages"], tmp_path).returncode == 0
    same = _cli(["env", "check", "a.json", "--relevant-only"], tmp_path)
    assert same.returncode == 0, same.stdout + same.stderr
    changed = _cli(["env", "check", "a.json"], tmp_path, PYTHONHASHSEED="123")
    assert changed.returncode == 1
    assert "env_vars.PYTHONHASHSEED: (unset) -> 123" in changed.stdout


def _bad_files(tmp_path: Path, good: dict) -> dict[str, tuple[Path, str]]:
    text = json.dumps(good)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\xff\x13 not json")
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**good, "schema_version": env.SCHEMA_VERSION + 1}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "repro-check/baseline", "schema_version": 1}))
    return {
        "truncated": (truncated, "corrupt or truncated"),
        "garbage": (garbage, "corrupt or truncated"),
        "newer": (newer, "newer than this repro-check understands"),
        "other": (other, "expected a 'repro-check/environment' document"),
        "missing": (tmp_path / "missing.json", "no such file"),
    }


@pytest.mark.parametrize("kind", ["truncated", "garbage", "newer", "other", "missing"])
def test_cli_bad_input_exits_2_with_a_clear_message(
    kind: str, tmp_path: Path, snapshot: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.json"
    env.save(snapshot, good)
    bad, message = _bad_files(tmp_path, snapshot)[kind]
    for argv in (
        ["env", "diff", str(good), str(bad)],
        ["env", "check", str(bad)],
        ["env", "requirements", str(bad)],
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("repro-check: error: "), err
        assert message in err
        assert "Traceback" not in err
    with pytest.raises(StoredFileError, match=message.split()[0]):
        env.load(bad)


def test_cli_bad_input_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"schema": "repro-check/environment", "schema_')
    result = _cli(["env", "diff", "broken.json", "broken.json"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("repro-check: error: broken.json: not valid JSON")
    assert "Traceback" not in result.stderr


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
    uuids = lambda cvd: [v["uuid"] for v in env._visible_devices(cvd, devices)]  # noqa: E731
    assert uuids(None) == ["GPU-aaaa-1111", "GPU-bbbb-2222"]
    assert uuids("1,0") == ["GPU-bbbb-2222", "GPU-aaaa-1111"]
    assert uuids("GPU-bbbb") == ["GPU-bbbb-2222"]
    assert uuids("0,7,1") == ["GPU-aaaa-1111"]  # CUDA stops at the first invalid entry
    assert uuids("-1") == []
    assert uuids("") == []


# ------------------------------------------------------------------------------- requirements


def test_requirements_pin_torch_with_its_index(snapshot: dict, tmp_path: Path) -> None:
    text = env.requirements(snapshot)
    assert f"torch=={torch.__version__}\n" in text
    assert "torch==2.13.0" in text or not torch.__version__.startswith("2.13.0")
    index = env.torch_index_url(torch.__version__)
    if index:
        assert f"--extra-index-url {index}\n" in text
    if torch.__version__.endswith("+cpu"):
        assert "--extra-index-url https://download.pytorch.org/whl/cpu\n" in text
    assert "\npip==" not in text

    env.save(snapshot, tmp_path / "s.json")
    argv = ["env", "requirements", str(tmp_path / "s.json"), "-o", str(tmp_path / "req.txt")]
    assert cli.main(argv) == 0
    assert (tmp_path / "req.txt").read_text() == text


def test_requirements_for_vcs_editable_and_archive_installs(snapshot: dict) -> None:
    snap = copy.deepcopy(snapshot)
    snap["packages"] = {
        "torch": {"name": "torch", "version": "2.5.1+cu121"},
        "mylib": {
            "name": "mylib",
            "version": "0.3",
            "url": "https://github.com/org/mylib.git",
            "vcs": "git",
            "commit_id": "abc123",
        },
        "myproj": {
            "name": "myproj",
            "version": "0.1",
            "url": "file:///src/myproj",
            "editable": True,
        },
        "wheelpkg": {
            "name": "wheelpkg",
            "version": "1.0",
            "url": "https://example.com/wheelpkg-1.0-py3-none-any.whl",
            "archive_hash": "sha256=deadbeef",
        },
    }
    text = env.requirements(snap)
    lines = text.splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cu121" in lines
    assert "torch==2.5.1+cu121" in lines
    assert "mylib @ git+https://github.com/org/mylib.git@abc123" in lines
    assert any(line.startswith("# editable: myproj==0.1") for line in lines)
    assert "wheelpkg @ https://example.com/wheelpkg-1.0-py3-none-any.whl#sha256=deadbeef" in lines


@pytest.mark.parametrize(
    ("version", "url"),
    [
        ("2.13.0+cpu", "https://download.pytorch.org/whl/cpu"),
        ("2.5.1+cu121", "https://download.pytorch.org/whl/cu121"),
        ("2.5.1+rocm6.2", "https://download.pytorch.org/whl/rocm6.2"),
        ("2.5.1", None),
        ("2.5.1+gitabc", None),
    ],
)
def test_torch_index_url(version: str, url: str | None) -> None:
    assert env.torch_index_url(version) == url


def test_requirements_need_a_package_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lean = env.capture(include_packages=False)
    with pytest.raises(StoredFileError, match="no package list"):
        env.requirements(lean)
    env.save(lean, tmp_path / "lean.json")
    assert cli.main(["env", "requirements", str(tmp_path / "lean.json")]) == 2
    assert "no package list" in capsys.readouterr().err


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
