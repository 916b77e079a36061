"""A readable, sectioned text summary of a snapshot (``repro-check env``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from repro_check.environment._common import get, printable
from repro_check.environment.relevance import is_relevant
from repro_check.environment.snapshot import snapshot_hash

Getter = Callable[[str], Any]


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


def _platform_rows(g: Getter) -> list[str]:
    libc = g("platform.libc") or {}
    container = g("platform.container") or {}
    hints = [k for k in ("dockerenv", "containerenv", "kubernetes") if container.get(k)]
    hints += list(container.get("cgroup_hints") or [])
    return [
        f"python     {g('python.version')} ({g('python.implementation')}) {g('python.executable')}",
        f"platform   {_val(g('platform.platform'))}",
        f"libc       {libc.get('name') or '-'} {libc.get('version') or ''}".rstrip(),
        f"container  {', '.join(hints) if hints else 'none detected'}",
        f"host       {g('host.hostname')}",
    ]


def _cpu_rows(g: Getter) -> list[str]:
    caps = g("cpu.aten_capabilities")
    return [
        f"model      {g('cpu.model')}",
        f"cores      {g('cpu.logical_cores')} logical, {_val(g('cpu.affinity_cores'))} usable",
        f"flags      {' '.join(g('cpu.flags') or []) or '-'}",
        f"capability {_val(g('cpu.capability'))} (torch dispatch); supported: "
        f"{', '.join(caps) if isinstance(caps, list) else '-'}",
    ]


def _threads_rows(g: Getter) -> list[str]:
    return [
        f"torch      intra-op {_val(g('threads.torch_num_threads'))}, "
        f"inter-op {_val(g('threads.torch_num_interop_threads'))}",
        f"env        OMP_NUM_THREADS={g('threads.OMP_NUM_THREADS') or '(unset)'} "
        f"MKL_NUM_THREADS={g('threads.MKL_NUM_THREADS') or '(unset)'}",
    ]


def _torch_rows(g: Getter) -> list[str]:
    settings = g("torch.build.settings") or {}
    numpy_blas = g("blas.numpy.blas") or {}
    return [
        f"version    {_val(g('torch.version'))} (git {str(g('torch.git_version'))[:12]}, "
        f"debug {_val(g('torch.debug'))}, default dtype {_val(g('torch.default_dtype'))})",
        f"blas       {settings.get('BLAS_INFO', '-')}, lapack {settings.get('LAPACK_INFO', '-')}, "
        f"parallel {_val(g('torch.parallel.backend'))}",
        f"libraries  {'; '.join(g('torch.parallel.libraries') or []) or '-'}",
        f"backends   {' '.join(_flags_line(g('backends')))}",
        f"numpy      {_val(g('blas.numpy.version'))} "
        f"(blas {numpy_blas.get('name') or '-'} {numpy_blas.get('version') or ''})".rstrip(),
    ]


def _cuda_rows(g: Getter) -> list[str]:
    cudnn = g("cuda.cudnn") or {}
    rows = [
        f"built      {_val(g('cuda.built'))}, available {_val(g('cuda.available'))}, "
        f"devices {_val(g('cuda.device_count'))}",
        f"cudnn      built {_val(cudnn.get('built_version'))}, "
        f"loaded {_val(cudnn.get('loaded_version'))}",
    ]
    devices = g("cuda.devices")
    for dev in devices if isinstance(devices, list) else []:
        rows.append(
            f"device {dev.get('index')}   {dev.get('name')} sm_{dev.get('capability')} "
            f"{dev.get('multi_processor_count')} SMs"
        )
    return rows


def _gpu_rows(g: Getter) -> list[str]:
    hint = f" ({g('gpus.hint')})" if g("gpus.hint") else ""
    rows = [f"nvml       {_val(g('gpus.status'))}{hint}"]
    if g("gpus.driver_version"):
        rows.append(
            f"driver     {_val(g('gpus.driver_version'))}, "
            f"CUDA driver {_val(g('gpus.cuda_driver_version'))}"
        )
    for dev in g("gpus.devices") or []:
        if isinstance(dev, dict):
            rows.append(
                f"gpu {dev.get('index')}      {_val(dev.get('name'))}, cc "
                f"{_val(dev.get('compute_capability'))}, {_val(dev.get('memory_total_mib'))} MiB, "
                f"MIG {_val((dev.get('mig_mode') or {}).get('current'))}, "
                f"{_val(dev.get('uuid'))}"
            )
    rows.append(f"CUDA_VISIBLE_DEVICES={g('gpus.cuda_visible_devices') or '(unset)'}")
    return rows


def _git_rows(g: Getter) -> list[str]:
    git = g("git") or {}
    if git.get("status") != "ok":
        return [f"status     {_val(git.get('status') or git)}"]
    return [
        f"commit     {git.get('commit') or '(no commits)'} on {git.get('branch') or 'detached'}",
        f"dirty      {_val(git.get('dirty'))} ({git.get('changed_files')} changed, "
        f"{git.get('untracked_files')} untracked)",
        f"diff hash  {_val(git.get('diff_sha256'))}",
    ]


def _package_rows(g: Getter) -> list[str]:
    packages = g("packages") or {}
    if not isinstance(packages, dict) or "status" in packages or "error" in packages:
        return [_val(packages)]
    stack = [
        f"{name}=={entry.get('version')}"
        for name, entry in packages.items()
        if isinstance(entry, dict) and is_relevant(f"packages.{name}")
    ]
    return [f"{len(packages)} installed; numeric stack: {' '.join(stack)}"]


def render_text(snapshot: dict[str, Any]) -> str:
    """A readable, sectioned summary of a snapshot; control characters in values are escaped."""
    g: Getter = functools.partial(get, snapshot)
    env_vars = g("env_vars") if isinstance(g("env_vars"), dict) else {}
    sections = (
        ("python / platform", _platform_rows(g)),
        ("cpu", _cpu_rows(g)),
        ("threads", _threads_rows(g)),
        ("torch", _torch_rows(g)),
        ("determinism flags", _flags_line(g("determinism"))),
        ("cuda", _cuda_rows(g)),
        ("gpus", _gpu_rows(g)),
        ("git", _git_rows(g)),
        ("environment variables", [f"{k}={v}" for k, v in env_vars.items()] or ["(none set)"]),
        ("packages", _package_rows(g)),
    )
    lines = [
        f"repro-check environment (schema v{snapshot.get('schema_version')}, captured "
        f"{snapshot.get('captured_at')}, hash {snapshot_hash(snapshot)[:12]})"
    ]
    for title, rows in sections:
        lines += ["", f"[{title}]", *(f"  {row}" for row in rows)]
    return "\n".join(printable(line) for line in lines) + "\n"
