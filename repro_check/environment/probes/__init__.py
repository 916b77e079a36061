"""The probes: one function per snapshot section, each field under its own guard.

Static facts (platform, CPU, torch build, numpy's BLAS, packages, NVML) are cached per process;
everything code can change at run time (flags, threads, environment variables, git, torch.cuda
state) is read on every call. torch, numpy and pynvml are imported inside the probes only.
"""

from __future__ import annotations

from repro_check.environment.probes import nvml, packages, system, torch_state


def clear_cache() -> None:
    """Forget the per-process cache of static facts (CPU, platform, build, packages, NVML)."""
    for fn in (
        system.python_info,
        system.platform_info,
        system.cpu_static,
        torch_state.torch_build,
        torch_state.torch_parallel,
        torch_state.numpy_info,
        packages.packages_cached,
        nvml.nvml_query,
    ):
        fn.cache_clear()
