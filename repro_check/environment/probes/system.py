"""Probes of the interpreter, the platform, the CPU (instruction sets, the capability ATen
dispatches to) and thread settings."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

from repro_check.environment._common import guard, read_text, torch_module


@functools.lru_cache(maxsize=1)
def python_info() -> dict[str, Any]:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "compiler": guard(platform.python_compiler),
        "build": guard(lambda: list(platform.python_build())),
    }


@functools.lru_cache(maxsize=1)
def platform_info() -> dict[str, Any]:
    uname = platform.uname()
    libc = guard(platform.libc_ver) if sys.platform != "win32" else ("", "")
    libc_name, libc_version = libc if isinstance(libc, tuple) else ("", "")
    return {
        "system": uname.system,
        "release": uname.release,
        "version": uname.version,
        "machine": uname.machine,
        "platform": guard(platform.platform),
        "libc": {"name": libc_name or None, "version": libc_version or None},
        "container": guard(container_hints),
    }


def container_hints() -> dict[str, Any]:
    cgroup = read_text("/proc/1/cgroup") or ""
    markers = ("docker", "kubepods", "containerd", "podman", "libpod", "lxc", "crio")
    return {
        "dockerenv": os.path.exists("/.dockerenv"),
        "containerenv": os.path.exists("/run/.containerenv"),
        "cgroup_hints": sorted({m for m in markers if m in cgroup}),
        "kubernetes": "KUBERNETES_SERVICE_HOST" in os.environ,
    }


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


def parse_cpuinfo(text: str) -> dict[str, str]:
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
        flags = cpu_static().get("flags") or []
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
def cpu_static() -> dict[str, Any]:
    info: dict[str, Any] = {}
    text = read_text("/proc/cpuinfo")
    fields = parse_cpuinfo(text) if text else {}
    model = fields.get("model name") or fields.get("Model name") or fields.get("Hardware")
    if not model and "CPU implementer" in fields:
        model = f"implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    if not model and sys.platform == "darwin":
        model = guard(
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
    info["cgroup_cpu_max"] = (read_text("/sys/fs/cgroup/cpu.max") or "").strip() or None
    return info


def cpu_info() -> dict[str, Any]:
    info = dict(cpu_static())
    info["affinity_cores"] = (
        guard(lambda: len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else None
    )
    info["capability"] = guard(lambda: torch_module().backends.cpu.get_cpu_capability())
    return info


def threads_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch_num_threads": guard(lambda: torch_module().get_num_threads()),
        "torch_num_interop_threads": guard(lambda: torch_module().get_num_interop_threads()),
    }
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # present only when set
        if name in os.environ:
            info[name] = os.environ[name]
    return info
