"""Environment snapshots: everything outside the code that decides the numbers.

A snapshot is a versioned JSON document (``schema: "repro-check/environment"``) with one section per
source of variation: Python, platform, CPU (model, instruction sets, the capability ATen dispatches
to), thread settings, the torch build and every determinism flag, BLAS/OpenMP, CUDA/cuDNN, GPUs
through NVML, installed packages, the git state of the code (commit plus a hash of the uncommitted
diff and untracked files) and an allowlist of environment variables.

Every field is captured on its own guard: a failure records ``{"error": "..."}`` for that field and
never aborts the capture. Static facts (CPU, platform, torch build, packages, NVML) are cached per
process; settings that code can change at run time (flags, threads, environment variables, git)
are read live on every call. ``RELEVANCE`` says which paths decide the numbers and which are only
informational; :func:`diff` lists relevant differences first.

The module never imports pytest, and imports torch, numpy and pynvml only inside functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from repro_check.core.atomic import StoredFileError, read_json, write_json

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "RELEVANCE",
    "UNSET",
    "EnvDifference",
    "StoredFileError",
    "capture",
    "clear_cache",
    "diff",
    "format_diff",
    "is_relevant",
    "load",
    "render_text",
    "requirements",
    "save",
    "snapshot_hash",
    "summary",
    "supported_cpu_capabilities",
    "torch_index_url",
]

SCHEMA = "repro-check/environment"
SCHEMA_VERSION = 1

#: Top-level keys that change on every capture; excluded from :func:`snapshot_hash` and :func:`diff`.
VOLATILE_KEYS = frozenset({"captured_at", "capture_seconds"})

#: ``status`` values that mean "this part was not captured": :func:`diff` does not compare them.
NOT_CAPTURED = frozenset({"not-captured", "not-initialized"})

_GIT_TIMEOUT_S = 10.0
_UNTRACKED_MAX_FILES = 10_000
_UNTRACKED_MAX_FILE_BYTES = 16 * 2**20
_UNTRACKED_MAX_TOTAL_BYTES = 64 * 2**20
_ENV_VALUE_MAX_CHARS = 4096

# --------------------------------------------------------------------------------------------------
# Relevance: which snapshot paths decide the numbers
# --------------------------------------------------------------------------------------------------

#: Packages whose version can change results (the numeric stack and data decoders).
NUMERIC_PACKAGES = (
    "torch",
    "torchvision",
    "torchaudio",
    "numpy",
    "scipy",
    "triton",
    "pytorch-triton*",
    "nvidia-*",
    "mkl",
    "mkl-*",
    "intel-openmp",
    "onednn*",
    "scipy-openblas*",
    "pillow*",
    "opencv-*",
)

#: Ordered (pattern, relevant) rules; the first match decides. ``*`` matches within one path segment,
#: ``[*]`` any list index; a pattern also covers everything below it. Unmatched paths: informational.
RELEVANCE: tuple[tuple[str, bool], ...] = (
    ("schema_version", False),
    ("repro_check_version", False),
    ("host", False),
    ("python.version", True),
    ("python.implementation", True),
    ("python", False),
    ("platform.system", True),
    ("platform.machine", True),
    ("platform.libc", True),
    ("platform", False),
    ("cpu.logical_cores", False),
    ("cpu.affinity_cores", False),
    ("cpu.cgroup_cpu_max", False),
    ("cpu", True),
    ("threads", True),
    ("torch", True),
    ("determinism", True),
    ("backends", True),
    ("blas", True),
    ("cuda", True),
    ("gpus.nvml_version", False),
    ("gpus.devices[*].index", False),
    ("gpus.devices[*].uuid", False),
    ("gpus.devices[*].pci_bus_id", False),
    ("gpus.devices[*].clocks", False),
    ("gpus.devices[*].power_limit_w", False),
    ("gpus.devices[*].persistence_mode", False),
    ("gpus.devices[*].ecc_mode", False),
    ("gpus.devices[*].memory_total_mib", False),
    ("gpus.visible", False),
    ("gpus", True),
    ("env_vars", True),
    ("packages.nvidia-ml-py", False),
    *((f"packages.{name}", True) for name in NUMERIC_PACKAGES),
    ("packages", False),
    ("git", False),
)

_INFORMATIONAL_ENV_RE = re.compile(r"(CACHE|_DIR$|_PATH$|_HOME$|_LOGS?$|_VERBOSE$|STACKTRACES)")


def _compile_rule(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern).replace(r"\[\*\]", r"\[\d+\]").replace(r"\*", r"[^.\[]*")
    return re.compile(regex + r"(?:$|[.\[])")


_RULES = tuple((_compile_rule(p), relevant) for p, relevant in RELEVANCE)

#: Order of sections in diffs and reports.
_SECTION_ORDER = (
    "torch",
    "determinism",
    "cpu",
    "threads",
    "env_vars",
    "cuda",
    "gpus",
    "blas",
    "backends",
    "python",
    "platform",
    "packages",
    "git",
    "host",
)


def is_relevant(path: str) -> bool:
    """True when a difference at ``path`` (e.g. ``"torch.version"``) can change the numbers."""
    if path.startswith("env_vars."):
        return not _INFORMATIONAL_ENV_RE.search(path[len("env_vars.") :])
    for rule, relevant in _RULES:
        if rule.match(path):
            return relevant
    return False


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _error(exc: BaseException) -> dict[str, str]:
    text = str(exc).strip().splitlines()
    return {"error": f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")}


def _guard(fn: Callable[[], Any]) -> Any:
    """Run one field's probe; an exception becomes ``{"error": ...}`` for that field only."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a probe must never break the capture
        return _error(exc)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return _decode_bytes(value)
    return value


def _decode_bytes(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def _jsonable(value: Any) -> Any:
    """Make a value survive a JSON round trip unchanged (tuples -> lists, NaN -> text, ...)."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes):
        return _decode_bytes(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    return str(value)


def _read_text(path: str, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _torch() -> Any:
    import torch  # noqa: PLC0415 - lazy on purpose: importing this module stays cheap

    return torch


def clear_cache() -> None:
    """Forget the per-process cache of static facts (CPU, platform, build, packages, NVML)."""
    for fn in (
        _python_info,
        _platform_info,
        _cpu_static,
        _torch_build,
        _torch_parallel,
        _numpy_info,
        _packages_cached,
        _nvml_query,
    ):
        fn.cache_clear()


# --------------------------------------------------------------------------------------------------
# Python, platform, host
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _python_info() -> dict[str, Any]:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "compiler": _guard(platform.python_compiler),
        "build": _guard(lambda: list(platform.python_build())),
    }


@functools.lru_cache(maxsize=1)
def _platform_info() -> dict[str, Any]:
    uname = platform.uname()
    libc = _guard(platform.libc_ver) if sys.platform != "win32" else ("", "")
    libc_name, libc_version = libc if isinstance(libc, tuple) else ("", "")
    return {
        "system": uname.system,
        "release": uname.release,
        "version": uname.version,
        "machine": uname.machine,
        "platform": _guard(platform.platform),
        "libc": {"name": libc_name or None, "version": libc_version or None},
        "container": _guard(_container_hints),
    }


def _container_hints() -> dict[str, Any]:
    cgroup = _read_text("/proc/1/cgroup") or ""
    markers = ("docker", "kubepods", "containerd", "podman", "libpod", "lxc", "crio")
    return {
        "dockerenv": os.path.exists("/.dockerenv"),
        "containerenv": os.path.exists("/run/.containerenv"),
        "cgroup_hints": sorted({m for m in markers if m in cgroup}),
        "kubernetes": "KUBERNETES_SERVICE_HOST" in os.environ,
    }


# --------------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------------

#: Instruction-set flags that decide which kernels run (x86 /proc/cpuinfo "flags", ARM "Features").
RELEVANT_CPU_FLAGS = frozenset(
    {
        "sse",
        "sse2",
        "ssse3",
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512cd",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512ifma",
        "avx512vbmi",
        "avx512_vbmi2",
        "avx512_bf16",
        "avx512_fp16",
        "avx512_vnni",
        "avx_vnni",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "amx_fp16",
        # aarch64
        "neon",
        "asimd",
        "asimdhp",
        "asimddp",
        "fphp",
        "bf16",
        "i8mm",
        "sve",
        "sve2",
        "sme",
    }
)


def _parse_cpuinfo(text: str) -> dict[str, str]:
    """Fields of the first processor block of /proc/cpuinfo (plus global ARM fields)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if "flags" in fields or "Features" in fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def supported_cpu_capabilities(flags: Iterable[str] | None = None) -> list[str]:
    """Values of ``ATEN_CPU_CAPABILITY`` this CPU can run (asking for more dies with SIGILL)."""
    if flags is None:
        flags = _cpu_static().get("flags") or []
    have = set(flags)
    machine = platform.machine().lower()
    caps = ["default"]
    if machine in ("x86_64", "amd64", "i386", "i686"):
        if {"avx2", "fma"} <= have:
            caps.append("avx2")
            if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= have:
                caps.append("avx512")
    return caps


@functools.lru_cache(maxsize=1)
def _cpu_static() -> dict[str, Any]:
    info: dict[str, Any] = {}
    text = _read_text("/proc/cpuinfo")
    fields = _parse_cpuinfo(text) if text else {}
    model = fields.get("model name") or fields.get("Model name") or fields.get("Hardware")
    if not model and "CPU implementer" in fields:
        model = f"implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    if not model and sys.platform == "darwin":
        model = _guard(
            lambda: subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
        )
    info["model"] = model or platform.processor() or None
    info["vendor"] = fields.get("vendor_id") or fields.get("CPU implementer")
    raw_flags = (fields.get("flags") or fields.get("Features") or "").split()
    info["flags"] = sorted(f for f in set(raw_flags) if f in RELEVANT_CPU_FLAGS)
    info["aten_capabilities"] = supported_cpu_capabilities(info["flags"]) if text else None
    info["logical_cores"] = os.cpu_count()
    info["cgroup_cpu_max"] = (_read_text("/sys/fs/cgroup/cpu.max") or "").strip() or None
    return info


def _cpu_info() -> dict[str, Any]:
    info = dict(_cpu_static())
    info["affinity_cores"] = (
        _guard(lambda: len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else None
    )
    info["capability"] = _guard(lambda: _torch().backends.cpu.get_cpu_capability())
    return info


def _threads_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch_num_threads": _guard(lambda: _torch().get_num_threads()),
        "torch_num_interop_threads": _guard(lambda: _torch().get_num_interop_threads()),
    }
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # present only when set
        if name in os.environ:
            info[name] = os.environ[name]
    return info


# --------------------------------------------------------------------------------------------------
# torch: build, flags, backends, BLAS, CUDA
# --------------------------------------------------------------------------------------------------

_BUILD_SETTING_SPLIT = re.compile(r",\s*(?=[A-Z][A-Z0-9_]*=)")


def _parse_torch_config(text: str) -> dict[str, Any]:
    libraries: list[str] = []
    settings: dict[str, str] = {}
    for line in text.splitlines():
        item = line.strip()
        if not item.startswith("- "):
            continue
        item = item[2:].strip()
        if item.startswith("Build settings:"):
            body = item[len("Build settings:") :].strip().rstrip(",").strip()
            for part in _BUILD_SETTING_SPLIT.split(body):
                key, sep, value = part.partition("=")
                key = key.strip()
                if sep and key and not key.endswith("FLAGS") and key != "CXX_COMPILER":
                    settings[key] = value.strip().rstrip(",").strip()
        elif not item.startswith("CPU capability usage"):  # runtime value: see cpu.capability
            libraries.append(item)
    return {"libraries": libraries, "settings": settings}


@functools.lru_cache(maxsize=1)
def _torch_build() -> dict[str, Any]:
    torch = _torch()
    return _parse_torch_config(torch.__config__.show())


@functools.lru_cache(maxsize=1)
def _torch_parallel() -> dict[str, Any]:
    text = _torch().__config__.parallel_info()
    backend = None
    libraries = []
    for line in text.splitlines():
        if line.startswith("ATen parallel backend:"):
            backend = line.partition(":")[2].strip()
        elif (
            line
            and not line[0].isspace()
            and not line.startswith(("ATen/Parallel", "Environment variables", "std::thread"))
        ):
            libraries.append(line.strip())
    return {"backend": backend, "libraries": libraries}


def _torch_info() -> dict[str, Any]:
    torch = _torch()
    return {
        "version": _guard(lambda: str(torch.__version__)),
        "git_version": _guard(lambda: torch.version.git_version),
        "debug": _guard(lambda: bool(torch.version.debug)),
        "hip": _guard(lambda: torch.version.hip),
        "default_dtype": _guard(lambda: str(torch.get_default_dtype()).replace("torch.", "")),
        "build": _guard(_torch_build),
        "parallel": _guard(_torch_parallel),
    }


def _determinism_info() -> dict[str, Any]:
    torch = _torch()
    b = torch.backends

    def fill_memory() -> Any:
        import torch.utils.deterministic  # noqa: PLC0415

        return bool(torch.utils.deterministic.fill_uninitialized_memory)

    def fp32(obj: Callable[[], Any]) -> Any:
        return str(obj())

    return {
        "deterministic_algorithms": _guard(torch.are_deterministic_algorithms_enabled),
        "deterministic_warn_only": _guard(torch.is_deterministic_algorithms_warn_only_enabled),
        "fill_uninitialized_memory": _guard(fill_memory),
        "float32_matmul_precision": _guard(torch.get_float32_matmul_precision),
        "cudnn": {
            "enabled": _guard(lambda: bool(b.cudnn.enabled)),
            "deterministic": _guard(lambda: bool(b.cudnn.deterministic)),
            "benchmark": _guard(lambda: bool(b.cudnn.benchmark)),
            "allow_tf32": _guard(lambda: bool(b.cudnn.allow_tf32)),
        },
        "cuda_matmul": {
            "allow_tf32": _guard(lambda: bool(b.cuda.matmul.allow_tf32)),
            "allow_fp16_reduced_precision_reduction": _guard(
                lambda: bool(b.cuda.matmul.allow_fp16_reduced_precision_reduction)
            ),
            "allow_bf16_reduced_precision_reduction": _guard(
                lambda: bool(b.cuda.matmul.allow_bf16_reduced_precision_reduction)
            ),
        },
        "mkldnn": {
            "enabled": _guard(lambda: bool(b.mkldnn.enabled)),
            "deterministic": _guard(lambda: bool(b.mkldnn.deterministic)),
        },
        "fp32_precision": {
            "generic": _guard(lambda: fp32(lambda: b.fp32_precision)),
            "cuda_matmul": _guard(lambda: fp32(lambda: b.cuda.matmul.fp32_precision)),
            "cudnn_conv": _guard(lambda: fp32(lambda: b.cudnn.conv.fp32_precision)),
            "mkldnn_matmul": _guard(lambda: fp32(lambda: b.mkldnn.matmul.fp32_precision)),
            "mkldnn_conv": _guard(lambda: fp32(lambda: b.mkldnn.conv.fp32_precision)),
        },
        "sdp": {
            "flash": _guard(lambda: bool(b.cuda.flash_sdp_enabled())),
            "mem_efficient": _guard(lambda: bool(b.cuda.mem_efficient_sdp_enabled())),
            "math": _guard(lambda: bool(b.cuda.math_sdp_enabled())),
            "cudnn": _guard(lambda: bool(b.cuda.cudnn_sdp_enabled())),
        },
        "opt_einsum": _guard(
            lambda: {
                "available": bool(b.opt_einsum.is_available()),
                "enabled": bool(b.opt_einsum.enabled),
                "strategy": b.opt_einsum.strategy,
            }
        ),
    }


def _backends_info() -> dict[str, Any]:
    b = _torch().backends
    return {
        "mkldnn_available": _guard(lambda: bool(b.mkldnn.is_available())),
        "mkl_available": _guard(lambda: bool(b.mkl.is_available())),
        "openmp_available": _guard(lambda: bool(b.openmp.is_available())),
        "nnpack_available": _guard(lambda: bool(b.nnpack.is_available())),
        "cudnn_available": _guard(lambda: bool(b.cudnn.is_available())),
    }


@functools.lru_cache(maxsize=1)
def _numpy_info() -> dict[str, Any]:
    if importlib.util.find_spec("numpy") is None:
        return {"status": "not-installed"}
    import numpy  # noqa: PLC0415

    info: dict[str, Any] = {"version": numpy.__version__}

    def config() -> dict[str, Any]:
        cfg = numpy.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        out: dict[str, Any] = {}
        for lib in ("blas", "lapack"):
            dep = deps.get(lib) or {}
            out[lib] = {
                "name": dep.get("name"),
                "version": dep.get("version"),
                "configuration": dep.get("openblas configuration"),
            }
        simd = cfg.get("SIMD Extensions") or {}
        out["simd"] = {"baseline": simd.get("baseline"), "found": simd.get("found")}
        return out

    info.update(_guard(config))
    return info


def _threadpoolctl_info() -> Any:
    if importlib.util.find_spec("threadpoolctl") is None:
        return {"status": "not-installed"}
    import threadpoolctl  # noqa: PLC0415

    keys = ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer")
    return [{k: pool.get(k) for k in keys} for pool in threadpoolctl.threadpool_info()]


def _blas_info() -> dict[str, Any]:
    def torch_blas() -> dict[str, Any]:
        settings = _torch_build().get("settings", {})
        return {
            "blas_info": settings.get("BLAS_INFO"),
            "lapack_info": settings.get("LAPACK_INFO"),
            "parallel_backend": _torch_parallel().get("backend"),
        }

    return {
        "torch": _guard(torch_blas),
        "numpy": _guard(_numpy_info),
        "threadpoolctl": _guard(_threadpoolctl_info),
    }


def _cuda_info(init_cuda: bool) -> dict[str, Any]:
    torch = _torch()
    cuda = torch.cuda
    info: dict[str, Any] = {
        "built": _guard(lambda: torch.version.cuda),
        "available": _guard(lambda: bool(cuda.is_available())),
        "device_count": _guard(lambda: int(cuda.device_count())),
    }

    def cudnn() -> dict[str, Any]:
        out: dict[str, Any] = {"available": bool(torch.backends.cudnn.is_available())}
        c_cudnn = getattr(torch._C, "_cudnn", None)
        out["built_version"] = _guard(lambda: c_cudnn.getCompileVersion()) if c_cudnn else None
        out["loaded_version"] = (
            _guard(torch.backends.cudnn.version) if out["available"] is True else None
        )
        return out

    info["cudnn"] = _guard(cudnn)

    def devices() -> Any:
        if info["available"] is not True:
            return []
        if not (init_cuda or cuda.is_initialized()):
            return {
                "status": "not-initialized",
                "hint": "CUDA was not initialised in this process; GPU names and capabilities "
                "are under 'gpus' (NVML)",
            }
        out = []
        for i in range(cuda.device_count()):
            props = cuda.get_device_properties(i)
            out.append(
                {
                    "index": i,
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "multi_processor_count": props.multi_processor_count,
                    "total_memory_mib": props.total_memory // 2**20,
                    "uuid": _guard(lambda p=props: str(p.uuid)),
                }
            )
        return out

    info["devices"] = _guard(devices)
    return info


# --------------------------------------------------------------------------------------------------
# GPUs through NVML
# --------------------------------------------------------------------------------------------------


def _import_pynvml() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("pynvml")


@functools.lru_cache(maxsize=1)
def _nvml_query() -> dict[str, Any]:
    nv = _import_pynvml()
    base_error = getattr(nv, "NVMLError", Exception)
    try:
        nv.nvmlInit()
    except base_error as exc:
        code = getattr(exc, "value", None)
        no_library = {
            getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", object()),
            getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", object()),
        }
        if code in no_library:
            return {
                "status": "no-nvml-library",
                "reason": str(exc),
                "hint": "no NVIDIA driver/NVML library on this machine",
            }
        return {"status": "nvml-error", **_error(exc)}
    except Exception as exc:  # noqa: BLE001 - e.g. OSError from ctypes
        return {"status": "nvml-error", **_error(exc)}

    def call(name: str, *args: Any, convert: Callable[[Any], Any] | None = None) -> Any:
        try:
            value = getattr(nv, name)(*args)
        except getattr(nv, "NVMLError_NotSupported", ()) as exc:  # type: ignore[misc]
            return {"error": "not supported", "detail": str(exc)}
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        try:
            return convert(value) if convert else _decode(value)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)

    def mode(value: Any) -> dict[str, str]:
        current, pending = value
        return {
            "current": "enabled" if current else "disabled",
            "pending": "enabled" if pending else "disabled",
        }

    def cuda_version(value: int) -> str:
        return f"{value // 1000}.{(value % 1000) // 10}"

    try:
        result: dict[str, Any] = {
            "status": "ok",
            "driver_version": call("nvmlSystemGetDriverVersion"),
            "cuda_driver_version": call("nvmlSystemGetCudaDriverVersion", convert=cuda_version),
            "nvml_version": call("nvmlSystemGetNVMLVersion"),
        }
        count = call("nvmlDeviceGetCount")
        result["device_count"] = count
        devices: list[dict[str, Any]] = []
        for index in range(count if isinstance(count, int) else 0):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:  # noqa: BLE001
                devices.append({"index": index, **_error(exc)})
                continue
            clock_sm = getattr(nv, "NVML_CLOCK_SM", 1)
            clock_mem = getattr(nv, "NVML_CLOCK_MEM", 2)
            devices.append(
                {
                    "index": index,
                    "name": call("nvmlDeviceGetName", handle),
                    "uuid": call("nvmlDeviceGetUUID", handle),
                    "pci_bus_id": call(
                        "nvmlDeviceGetPciInfo", handle, convert=lambda p: _decode(p.busId)
                    ),
                    "compute_capability": call(
                        "nvmlDeviceGetCudaComputeCapability",
                        handle,
                        convert=lambda v: f"{v[0]}.{v[1]}",
                    ),
                    "memory_total_mib": call(
                        "nvmlDeviceGetMemoryInfo", handle, convert=lambda m: int(m.total) // 2**20
                    ),
                    "mig_mode": call("nvmlDeviceGetMigMode", handle, convert=mode),
                    "ecc_mode": call("nvmlDeviceGetEccMode", handle, convert=mode),
                    "persistence_mode": call(
                        "nvmlDeviceGetPersistenceMode",
                        handle,
                        convert=lambda v: "enabled" if v else "disabled",
                    ),
                    "clocks": {
                        "sm_mhz": call("nvmlDeviceGetClockInfo", handle, clock_sm),
                        "mem_mhz": call("nvmlDeviceGetClockInfo", handle, clock_mem),
                        "sm_max_mhz": call("nvmlDeviceGetMaxClockInfo", handle, clock_sm),
                        "mem_max_mhz": call("nvmlDeviceGetMaxClockInfo", handle, clock_mem),
                    },
                    "power_limit_w": call(
                        "nvmlDeviceGetPowerManagementLimit", handle, convert=lambda mw: mw / 1000
                    ),
                }
            )
        result["devices"] = devices
        if count == 0:
            result["status"] = "no-devices"
        return result
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()


def _visible_devices(cvd: str | None, devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Map CUDA's visible indices to NVML devices, following CUDA's CUDA_VISIBLE_DEVICES rules."""
    if cvd is None:
        chosen: list[dict[str, Any] | str] = list(devices)
    else:
        chosen = []
        for token in (t.strip() for t in cvd.split(",")):
            if re.fullmatch(r"\d+", token):
                if int(token) >= len(devices):
                    break  # CUDA stops at the first invalid entry
                chosen.append(devices[int(token)])
            elif token.startswith("GPU-"):
                matches = [d for d in devices if str(d.get("uuid", "")).startswith(token)]
                if len(matches) != 1:
                    break
                chosen.append(matches[0])
            elif token.startswith("MIG-"):
                chosen.append(token)
            else:
                break  # "", "-1", "NoDevFiles": nothing further is visible
    out = []
    for visible_index, dev in enumerate(chosen):
        if isinstance(dev, str):
            out.append({"visible_index": visible_index, "uuid": dev, "nvml_index": None})
        else:
            out.append(
                {
                    "visible_index": visible_index,
                    "uuid": dev.get("uuid"),
                    "nvml_index": dev.get("index"),
                    "name": dev.get("name"),
                }
            )
    return out


def _gpus_info() -> dict[str, Any]:
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    order = os.environ.get("CUDA_DEVICE_ORDER")
    try:
        _import_pynvml()
    except ImportError:
        info: dict[str, Any] = {
            "status": "nvml-python-missing",
            "hint": "pip install repro-check[gpu]",
        }
    else:
        info = dict(_nvml_query())
    info["cuda_visible_devices"] = cvd
    info["cuda_device_order"] = order
    devices = info.get("devices")
    if isinstance(devices, list) and devices:
        info["visible"] = _guard(lambda: _visible_devices(cvd, devices))
        if order != "PCI_BUS_ID":
            info["visible_order_note"] = (
                "mapped in PCI bus order; CUDA orders fastest first unless "
                "CUDA_DEVICE_ORDER=PCI_BUS_ID"
            )
    return info


# --------------------------------------------------------------------------------------------------
# Packages
# --------------------------------------------------------------------------------------------------


def _normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _package_entry(dist: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": dist.metadata["Name"], "version": dist.version}
    installer = _guard(lambda: (dist.read_text("INSTALLER") or "").strip() or None)
    if installer:
        entry["installer"] = installer
    raw = _guard(lambda: dist.read_text("direct_url.json"))
    if isinstance(raw, str) and raw.strip():
        try:
            direct = json.loads(raw)
        except json.JSONDecodeError as exc:
            entry["direct_url"] = _error(exc)
            return entry
        if not isinstance(direct, dict):
            return entry
        entry["url"] = direct.get("url")
        dir_info = direct.get("dir_info") or {}
        vcs_info = direct.get("vcs_info") or {}
        archive_info = direct.get("archive_info") or {}
        entry["editable"] = bool(dir_info.get("editable", False))
        if vcs_info:
            entry["vcs"] = vcs_info.get("vcs")
            entry["commit_id"] = vcs_info.get("commit_id")
            if vcs_info.get("requested_revision"):
                entry["requested_revision"] = vcs_info["requested_revision"]
        elif archive_info:
            hashes = archive_info.get("hashes") or {}
            digest = hashes.get("sha256") or archive_info.get("hash")
            if digest:
                entry["archive_hash"] = digest if "=" in digest else f"sha256={digest}"
        elif dir_info:
            entry["local_directory"] = True
    return entry


@functools.lru_cache(maxsize=1)
def _packages_cached() -> dict[str, Any]:
    import importlib.metadata as metadata  # noqa: PLC0415

    packages: dict[str, Any] = {}
    for dist in metadata.distributions():
        try:
            name = dist.metadata["Name"]
        except Exception:  # noqa: BLE001 - broken metadata
            continue
        if not name:
            continue
        key = _normalize_name(name)
        if key in packages:  # the first one on sys.path is the one that imports
            continue
        packages[key] = _guard(lambda d=dist: _package_entry(d))
    return dict(sorted(packages.items()))


# --------------------------------------------------------------------------------------------------
# git
# --------------------------------------------------------------------------------------------------


def _git(args: list[str], cwd: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.update({"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    return subprocess.run(
        ["git", "-c", "core.quotePath=true", "--no-pager", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=_GIT_TIMEOUT_S,
        check=False,
    )


def _hash_untracked(top: str, paths: list[bytes]) -> dict[str, Any]:
    digest = hashlib.sha256()
    budget = _UNTRACKED_MAX_TOTAL_BYTES
    complete = True
    top_b = os.fsencode(top)
    for rel in sorted(paths)[:_UNTRACKED_MAX_FILES]:
        digest.update(rel + b"\0")
        full = os.path.join(top_b, rel)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                digest.update(b"L" + os.readlink(full))
            elif st.st_size > _UNTRACKED_MAX_FILE_BYTES or st.st_size > budget:
                complete = False
                digest.update(b"S%d:%d" % (st.st_size, st.st_mtime_ns))
            else:
                budget -= st.st_size
                digest.update(b"F")
                with open(full, "rb") as handle:
                    for block in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(block)
        except OSError as exc:
            digest.update(b"E" + str(exc.errno).encode())
        digest.update(b"\0")
    if len(paths) > _UNTRACKED_MAX_FILES:
        complete = False
    return {"sha256": digest.hexdigest(), "complete": complete}


def _git_info(repo_dir: str | None) -> dict[str, Any]:
    if shutil.which("git") is None:
        return {"status": "git-missing"}
    where = os.path.abspath(repo_dir or os.getcwd())
    if not os.path.isdir(where):
        return {"status": "not-a-repository", "path": where}
    try:
        top_run = _git(["rev-parse", "--show-toplevel"], where)
        if top_run.returncode != 0:
            message = _decode_bytes(top_run.stderr).strip()
            if "not a git repository" in message.lower():
                return {"status": "not-a-repository", "path": where}
            out: dict[str, Any] = {"status": "error", "error": message or "git rev-parse failed"}
            if "dubious ownership" in message:
                out["hint"] = f"git config --global --add safe.directory {where}"
            return out
        top = os.fsdecode(top_run.stdout.rstrip(b"\r\n"))
        status_run = _git(
            ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"], top
        )
        if status_run.returncode != 0:
            return {"status": "error", "error": _decode_bytes(status_run.stderr).strip()}
        commit = branch = None
        changed = 0
        untracked: list[bytes] = []
        records = iter(status_run.stdout.split(b"\0"))
        for rec in records:
            if rec.startswith(b"# branch.oid "):
                oid = rec[len(b"# branch.oid ") :].decode("ascii", "replace")
                commit = None if oid == "(initial)" else oid
            elif rec.startswith(b"# branch.head "):
                head = _decode_bytes(rec[len(b"# branch.head ") :])
                branch = None if head == "(detached)" else head
            elif rec[:2] in (b"1 ", b"u "):
                changed += 1
            elif rec[:2] == b"2 ":
                changed += 1
                next(records, None)  # the original path of a rename/copy
            elif rec[:2] == b"? ":
                untracked.append(rec[2:])
        info: dict[str, Any] = {
            "status": "ok",
            "toplevel": top,
            "commit": commit,
            "branch": branch,
            "dirty": changed > 0,
            "changed_files": changed,
            "untracked_files": len(untracked),
        }
        if commit is not None:
            diff_run = _git(
                [
                    "-c",
                    "diff.noprefix=false",
                    "diff",
                    "--binary",
                    "--no-color",
                    "--no-ext-diff",
                    "--no-textconv",
                    "--no-renames",
                    "--full-index",
                    "HEAD",
                    "--",
                ],
                top,
            )
            info["diff_sha256"] = (
                hashlib.sha256(diff_run.stdout).hexdigest()
                if diff_run.returncode == 0
                else {"error": _decode_bytes(diff_run.stderr).strip()}
            )
        else:
            info["diff_sha256"] = None
        hashed = _hash_untracked(top, untracked)
        info["untracked_sha256"] = hashed["sha256"]
        info["untracked_hash_complete"] = hashed["complete"]
        return info
    except subprocess.TimeoutExpired as exc:
        return {"status": "error", "error": f"git timed out after {exc.timeout:.0f} s"}
    except OSError as exc:
        return {"status": "error", **_error(exc)}


# --------------------------------------------------------------------------------------------------
# Environment variables
# --------------------------------------------------------------------------------------------------

#: Variables recorded by exact name.
ENV_EXACT = frozenset(
    {
        "ATEN_CPU_CAPABILITY",
        "CUBLAS_WORKSPACE_CONFIG",
        "PYTHONHASHSEED",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "CUDA_LAUNCH_BLOCKING",
        "CUDA_MODULE_LOADING",
        "NVIDIA_TF32_OVERRIDE",
        "NVIDIA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "XLA_FLAGS",
        "NCCL_ALGO",
        "NCCL_PROTO",
        "NCCL_MIN_NCHANNELS",
        "NCCL_MAX_NCHANNELS",
        "NCCL_MIN_CTAS",
        "NCCL_MAX_CTAS",
        "NCCL_NVLS_ENABLE",
        "NCCL_COLLNET_ENABLE",
        "GOTO_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "NUMEXPR_MAX_THREADS",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
    }
)

#: Variables recorded by prefix.
ENV_PREFIXES = (
    "OMP_",
    "MKL_",
    "ONEDNN_",
    "DNNL_",
    "KMP_",
    "GOMP_",
    "OPENBLAS_",
    "BLIS_",
    "TORCH_",
    "PYTORCH_",
    "TORCHINDUCTOR_",
    "TORCHDYNAMO_",
    "CUBLAS_",
    "CUBLASLT_",
    "TRITON_",
)

#: Never recorded, whatever the allowlist says.
ENV_DENY_RE = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE|COOKIE")

_URL_USERINFO_RE = re.compile(r"(://)[^/@\s]+@")


def _env_allowed(name: str) -> bool:
    if ENV_DENY_RE.search(name.upper()):
        return False
    return name in ENV_EXACT or name.startswith(ENV_PREFIXES)


def _env_vars() -> dict[str, str]:
    items: Iterable[tuple[str | bytes, str | bytes]]
    items = os.environb.items() if hasattr(os, "environb") else os.environ.items()
    out: dict[str, str] = {}
    for raw_name, raw_value in items:
        name = _decode_bytes(raw_name) if isinstance(raw_name, bytes) else raw_name
        if not _env_allowed(name):
            continue
        value = _decode_bytes(raw_value) if isinstance(raw_value, bytes) else raw_value
        value = _URL_USERINFO_RE.sub(r"\1***@", value)
        if len(value) > _ENV_VALUE_MAX_CHARS:
            value = value[:_ENV_VALUE_MAX_CHARS] + f"...[{len(value)} chars]"
        out[name] = value
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _repro_check_version() -> str | None:
    try:
        from repro_check import __version__  # noqa: PLC0415
    except ImportError:
        return None
    return __version__


def capture(
    repo_dir: str | None = None,
    include_packages: bool = True,
    *,
    init_cuda: bool = False,
    refresh: bool = False,
) -> dict[str, Any]:
    """Snapshot everything that decides the numbers; never raises for a failing probe.

    ``repo_dir`` is where git looks (default: the current directory). ``init_cuda`` allows
    initialising CUDA to read per-device properties through torch (otherwise they are read only
    when CUDA is already initialised; NVML covers GPUs either way). ``refresh`` drops the
    per-process cache of static facts first.
    """
    start = time.perf_counter()
    if refresh:
        clear_cache()
    snapshot: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "captured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "repro_check_version": _repro_check_version(),
        "host": _guard(lambda: {"hostname": socket.gethostname()}),
        "python": _guard(_python_info),
        "platform": _guard(_platform_info),
        "cpu": _guard(_cpu_info),
        "threads": _guard(_threads_info),
        "torch": _guard(_torch_info),
        "determinism": _guard(_determinism_info),
        "backends": _guard(_backends_info),
        "blas": _guard(_blas_info),
        "cuda": _guard(lambda: _cuda_info(init_cuda)),
        "gpus": _guard(_gpus_info),
        "packages": (
            _guard(_packages_cached)
            if include_packages
            else {"status": "not-captured", "hint": "capture(include_packages=True)"}
        ),
        "git": _guard(lambda: _git_info(repo_dir)),
        "env_vars": _guard(_env_vars),
    }
    snapshot = _jsonable(snapshot)
    snapshot["capture_seconds"] = round(time.perf_counter() - start, 4)
    return snapshot


def _get(snapshot: dict[str, Any], path: str, default: Any = None) -> Any:
    node: Any = snapshot
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _gpu_names(snapshot: dict[str, Any]) -> list[str]:
    for path in ("gpus.devices", "cuda.devices"):
        devices = _get(snapshot, path)
        if isinstance(devices, list) and devices:
            return [str(d.get("name")) for d in devices if isinstance(d, dict)]
    return []


def summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The handful of fields a report header needs."""
    return {
        "python": _get(snapshot, "python.version"),
        "platform": _get(snapshot, "platform.platform"),
        "torch": _get(snapshot, "torch.version"),
        "cpu_capability": _get(snapshot, "cpu.capability"),
        "threads": {
            "intra_op": _get(snapshot, "threads.torch_num_threads"),
            "inter_op": _get(snapshot, "threads.torch_num_interop_threads"),
        },
        "deterministic": {
            "algorithms": _get(snapshot, "determinism.deterministic_algorithms"),
            "warn_only": _get(snapshot, "determinism.deterministic_warn_only"),
            "cudnn_deterministic": _get(snapshot, "determinism.cudnn.deterministic"),
            "cudnn_benchmark": _get(snapshot, "determinism.cudnn.benchmark"),
        },
        "cuda": {
            "built": _get(snapshot, "cuda.built"),
            "available": _get(snapshot, "cuda.available"),
            "cudnn": _get(snapshot, "cuda.cudnn.loaded_version"),
        },
        "gpus": _gpu_names(snapshot),
        "git": {"commit": _get(snapshot, "git.commit"), "dirty": _get(snapshot, "git.dirty")},
    }


def snapshot_hash(snapshot: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the snapshot, without the capture time."""
    body = {k: v for k, v in snapshot.items() if k not in VOLATILE_KEYS}
    canonical = json.dumps(
        _jsonable(body), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def save(snapshot: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the snapshot atomically as versioned JSON."""
    if snapshot.get("schema") != SCHEMA:
        raise ValueError(f"not an environment snapshot (schema={snapshot.get('schema')!r})")
    write_json(path, _jsonable(snapshot))


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a snapshot; :class:`StoredFileError` with a clear message when missing/corrupt/newer."""
    return read_json(path, schema=SCHEMA, max_version=SCHEMA_VERSION)


# --------------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------------


class _Unset:
    """Marks a field absent on one side of a diff."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "(unset)"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


@dataclasses.dataclass(frozen=True)
class EnvDifference:
    """One differing field: ``path`` like ``"env_vars.ATEN_CPU_CAPABILITY"``; UNSET when absent."""

    path: str
    before: Any
    after: Any
    relevant: bool

    def __str__(self) -> str:
        return _format_line(self)


def _not_captured(value: Any) -> bool:
    return isinstance(value, dict) and value.get("status") in NOT_CAPTURED


def _has_dicts(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(v, dict) for v in value)


def _walk(a: Any, b: Any, path: str, out: list[EnvDifference]) -> None:
    if _not_captured(a) or _not_captured(b):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            _walk(a.get(key, UNSET), b.get(key, UNSET), f"{path}.{key}" if path else key, out)
        return
    if isinstance(a, list) and isinstance(b, list) and (_has_dicts(a) or _has_dicts(b)):
        for i in range(max(len(a), len(b))):
            _walk(a[i] if i < len(a) else UNSET, b[i] if i < len(b) else UNSET, f"{path}[{i}]", out)
        return
    if a != b or type(a) is not type(b):
        out.append(EnvDifference(path, a, b, is_relevant(path)))


def _section_rank(path: str) -> int:
    head = re.split(r"[.\[]", path, maxsplit=1)[0]
    return _SECTION_ORDER.index(head) if head in _SECTION_ORDER else len(_SECTION_ORDER)


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[EnvDifference]:
    """Fields that differ from ``a`` to ``b``: relevant ones first, then by section and path."""
    a = {k: v for k, v in _jsonable(a).items() if k not in VOLATILE_KEYS and k != "schema"}
    b = {k: v for k, v in _jsonable(b).items() if k not in VOLATILE_KEYS and k != "schema"}
    out: list[EnvDifference] = []
    _walk(a, b, "", out)
    out.sort(key=lambda d: (not d.relevant, _section_rank(d.path), d.path))
    return out


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 20] + " ... " + text[-15:]


def _format_value(value: Any) -> str:
    if value is UNSET:
        return "(unset)"
    if isinstance(value, str):
        return _shorten(value) if value.strip() == value and value else json.dumps(value)
    if isinstance(value, dict):
        if "error" in value and len(value) <= 2:
            return _shorten(f"error: {value['error']}")
        if "version" in value and isinstance(value["version"], str):
            extra = " (editable)" if value.get("editable") else ""
            return f"{value['version']}{extra}"
        if "status" in value and isinstance(value["status"], str):
            return f"status: {value['status']}"
    return _shorten(json.dumps(value, sort_keys=True, default=str))


def _format_line(d: EnvDifference) -> str:
    a, b = d.before, d.after
    if isinstance(a, list) and isinstance(b, list) and not (_has_dicts(a) or _has_dicts(b)):
        removed = [x for x in a if x not in b]
        added = [x for x in b if x not in a]
        if removed or added:
            parts = [f"-{x}" for x in removed] + [f"+{x}" for x in added]
            return f"{d.path}: {_shorten(' '.join(map(str, parts)))}"
    return f"{d.path}: {_format_value(a)} -> {_format_value(b)}"


def format_diff(diffs: list[EnvDifference]) -> str:
    """Readable lines, relevant differences first: ``torch.version: 2.13.0 -> 2.14.1``."""
    if not diffs:
        return "no differences"
    relevant = [d for d in diffs if d.relevant]
    informational = [d for d in diffs if not d.relevant]
    lines: list[str] = []
    if relevant:
        lines.append(f"relevant differences ({len(relevant)}), these can change results:")
        lines.extend(f"  {_format_line(d)}" for d in relevant)
    if informational:
        lines.append(f"informational differences ({len(informational)}):")
        lines.extend(f"  {_format_line(d)}" for d in informational)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Text rendering
# --------------------------------------------------------------------------------------------------


def _val(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        if "error" in value:
            return f"error: {value['error']}"
        if "status" in value:
            return str(value["status"])
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _flags_line(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict) or "error" in node:
        return [f"{prefix}: {_val(node)}"] if prefix else []
    out = []
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and "error" not in value:
            out.extend(_flags_line(value, name))
        else:
            out.append(f"{name}={_val(value)}")
    return out


def render_text(snapshot: dict[str, Any]) -> str:
    """A readable, sectioned summary of a snapshot."""
    g = functools.partial(_get, snapshot)
    lines: list[str] = [
        f"repro-check environment (schema v{snapshot.get('schema_version')}, captured "
        f"{snapshot.get('captured_at')}, hash {snapshot_hash(snapshot)[:12]})",
    ]

    def section(title: str, rows: list[str]) -> None:
        lines.append("")
        lines.append(f"[{title}]")
        lines.extend(f"  {row}" for row in rows)

    libc = g("platform.libc") or {}
    container = g("platform.container") or {}
    hints = [k for k in ("dockerenv", "containerenv", "kubernetes") if container.get(k)]
    hints += list(container.get("cgroup_hints") or [])
    section(
        "python / platform",
        [
            f"python     {g('python.version')} ({g('python.implementation')}) "
            f"{g('python.executable')}",
            f"platform   {_val(g('platform.platform'))}",
            f"libc       {libc.get('name') or '-'} {libc.get('version') or ''}".rstrip(),
            f"container  {', '.join(hints) if hints else 'none detected'}",
            f"host       {g('host.hostname')}",
        ],
    )
    caps = g("cpu.aten_capabilities")
    section(
        "cpu",
        [
            f"model      {g('cpu.model')}",
            f"cores      {g('cpu.logical_cores')} logical, {_val(g('cpu.affinity_cores'))} usable",
            f"flags      {' '.join(g('cpu.flags') or []) or '-'}",
            f"capability {_val(g('cpu.capability'))} (torch dispatch); supported: "
            f"{', '.join(caps) if isinstance(caps, list) else '-'}",
        ],
    )
    section(
        "threads",
        [
            f"torch      intra-op {_val(g('threads.torch_num_threads'))}, "
            f"inter-op {_val(g('threads.torch_num_interop_threads'))}",
            f"env        OMP_NUM_THREADS={g('threads.OMP_NUM_THREADS') or '(unset)'} "
            f"MKL_NUM_THREADS={g('threads.MKL_NUM_THREADS') or '(unset)'}",
        ],
    )
    settings = g("torch.build.settings") or {}
    numpy_blas = g("blas.numpy.blas") or {}
    section(
        "torch",
        [
            f"version    {_val(g('torch.version'))} (git {str(g('torch.git_version'))[:12]}, "
            f"debug {_val(g('torch.debug'))}, default dtype {_val(g('torch.default_dtype'))})",
            f"blas       {settings.get('BLAS_INFO', '-')}, lapack "
            f"{settings.get('LAPACK_INFO', '-')}, parallel "
            f"{_val(g('torch.parallel.backend'))}",
            f"libraries  {'; '.join(g('torch.parallel.libraries') or []) or '-'}",
            f"backends   {' '.join(_flags_line(g('backends')))}",
            f"numpy      {_val(g('blas.numpy.version'))} "
            f"(blas {numpy_blas.get('name') or '-'} {numpy_blas.get('version') or ''})".rstrip(),
        ],
    )
    section("determinism flags", _flags_line(g("determinism")))
    cudnn = g("cuda.cudnn") or {}
    cuda_rows = [
        f"built      {_val(g('cuda.built'))}, available {_val(g('cuda.available'))}, "
        f"devices {_val(g('cuda.device_count'))}",
        f"cudnn      built {_val(cudnn.get('built_version'))}, "
        f"loaded {_val(cudnn.get('loaded_version'))}",
    ]
    devices = g("cuda.devices")
    for dev in devices if isinstance(devices, list) else []:
        cuda_rows.append(
            f"device {dev.get('index')}   {dev.get('name')} sm_{dev.get('capability')} "
            f"{dev.get('multi_processor_count')} SMs"
        )
    section("cuda", cuda_rows)
    gpu_rows = [
        f"nvml       {_val(g('gpus.status'))}" + (f" ({g('gpus.hint')})" if g("gpus.hint") else ""),
    ]
    if g("gpus.driver_version"):
        gpu_rows.append(
            f"driver     {_val(g('gpus.driver_version'))}, "
            f"CUDA driver {_val(g('gpus.cuda_driver_version'))}"
        )
    for dev in g("gpus.devices") or []:
        if isinstance(dev, dict):
            gpu_rows.append(
                f"gpu {dev.get('index')}      {_val(dev.get('name'))}, cc "
                f"{_val(dev.get('compute_capability'))}, {_val(dev.get('memory_total_mib'))} MiB, "
                f"MIG {_val((dev.get('mig_mode') or {}).get('current'))}, "
                f"{_val(dev.get('uuid'))}"
            )
    gpu_rows.append(f"CUDA_VISIBLE_DEVICES={g('gpus.cuda_visible_devices') or '(unset)'}")
    section("gpus", gpu_rows)
    git = g("git") or {}
    if git.get("status") == "ok":
        git_rows = [
            f"commit     {git.get('commit') or '(no commits)'} on {git.get('branch') or 'detached'}",
            f"dirty      {_val(git.get('dirty'))} ({git.get('changed_files')} changed, "
            f"{git.get('untracked_files')} untracked)",
            f"diff hash  {_val(git.get('diff_sha256'))}",
        ]
    else:
        git_rows = [f"status     {_val(git.get('status') or git)}"]
    section("git", git_rows)
    env_vars = g("env_vars") or {}
    section("environment variables", [f"{k}={v}" for k, v in env_vars.items()] or ["(none set)"])
    packages = g("packages") or {}
    if isinstance(packages, dict) and "status" not in packages and "error" not in packages:
        stack = [
            f"{name}=={entry.get('version')}"
            for name, entry in packages.items()
            if isinstance(entry, dict) and is_relevant(f"packages.{name}")
        ]
        section("packages", [f"{len(packages)} installed; numeric stack: {' '.join(stack)}"])
    else:
        section("packages", [_val(packages)])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Pinned requirements
# --------------------------------------------------------------------------------------------------

_FREEZE_SKIP = frozenset({"pip", "setuptools", "wheel", "distribute"})
_TORCH_INDEX = "https://download.pytorch.org/whl"


def torch_index_url(torch_version: str | None) -> str | None:
    """PyTorch wheel index for a local version suffix: ``2.13.0+cu121`` -> ``.../whl/cu121``."""
    if not torch_version or "+" not in torch_version:
        return None
    local = torch_version.split("+", 1)[1].lower()
    if re.fullmatch(r"cpu|cu\d+|rocm\d+(\.\d+)*|xpu", local):
        return f"{_TORCH_INDEX}/{local}"
    return None


def requirements(snapshot: dict[str, Any]) -> str:
    """A pinned requirements file that reinstalls the snapshot's packages in one pip command."""
    packages = snapshot.get("packages")
    if not isinstance(packages, dict) or "status" in packages or "error" in packages:
        raise StoredFileError(
            "the snapshot has no package list (captured with include_packages=False); "
            "capture one with: repro-check env -o FILE"
        )
    torch_entry = packages.get("torch") if isinstance(packages.get("torch"), dict) else {}
    torch_version = torch_entry.get("version") or _get(snapshot, "torch.version")
    lines = [
        "# Pinned by repro-check from an environment snapshot",
        f"# captured {snapshot.get('captured_at')} on {_get(snapshot, 'platform.platform')}, "
        f"python {_get(snapshot, 'python.version')}",
        "# install with: pip install -r THIS_FILE",
    ]
    index = torch_index_url(torch_version)
    if index:
        lines.append(f"--extra-index-url {index}")
    for key, entry in sorted(packages.items()):
        if not isinstance(entry, dict) or "version" not in entry:
            lines.append(f"# {key}: could not read its metadata")
            continue
        if key in _FREEZE_SKIP:
            continue
        name, version = entry.get("name") or key, entry["version"]
        url = entry.get("url")
        if entry.get("editable"):
            lines.append(
                f"# editable: {name}=={version} from {url} (install it with: pip install -e)"
            )
        elif entry.get("vcs") and url:
            ref = entry.get("commit_id") or entry.get("requested_revision")
            lines.append(f"{name} @ {entry['vcs']}+{url}" + (f"@{ref}" if ref else ""))
        elif entry.get("local_directory"):
            lines.append(f"# local directory: {name}=={version} from {url}")
        elif url and not url.startswith("file:"):
            digest = entry.get("archive_hash")
            lines.append(f"{name} @ {url}" + (f"#{digest}" if digest else ""))
        else:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"
