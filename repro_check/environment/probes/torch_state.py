"""Probes of torch: build, determinism flags, backends, BLAS/OpenMP and CUDA/cuDNN."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable
from typing import Any

from repro_check.environment._common import guard, torch_module

_BUILD_SETTING_SPLIT = re.compile(r",\s*(?=[A-Z][A-Z0-9_]*=)")


def parse_torch_config(text: str) -> dict[str, Any]:
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
def torch_build() -> dict[str, Any]:
    torch = torch_module()
    return parse_torch_config(torch.__config__.show())


@functools.lru_cache(maxsize=1)
def torch_parallel() -> dict[str, Any]:
    text = torch_module().__config__.parallel_info()
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


def torch_info() -> dict[str, Any]:
    torch = torch_module()
    return {
        "version": guard(lambda: str(torch.__version__)),
        "git_version": guard(lambda: torch.version.git_version),
        "debug": guard(lambda: bool(torch.version.debug)),
        "hip": guard(lambda: torch.version.hip),
        "default_dtype": guard(lambda: str(torch.get_default_dtype()).replace("torch.", "")),
        "build": guard(torch_build),
        "parallel": guard(torch_parallel),
    }


def determinism_info() -> dict[str, Any]:
    torch = torch_module()
    b = torch.backends

    def fill_memory() -> Any:
        import torch.utils.deterministic  # noqa: PLC0415

        return bool(torch.utils.deterministic.fill_uninitialized_memory)

    def fp32(obj: Callable[[], Any]) -> Any:
        return str(obj())

    return {
        "deterministic_algorithms": guard(torch.are_deterministic_algorithms_enabled),
        "deterministic_warn_only": guard(torch.is_deterministic_algorithms_warn_only_enabled),
        "fill_uninitialized_memory": guard(fill_memory),
        "float32_matmul_precision": guard(torch.get_float32_matmul_precision),
        "cudnn": {
            "enabled": guard(lambda: bool(b.cudnn.enabled)),
            "deterministic": guard(lambda: bool(b.cudnn.deterministic)),
            "benchmark": guard(lambda: bool(b.cudnn.benchmark)),
            "allow_tf32": guard(lambda: bool(b.cudnn.allow_tf32)),
        },
        "cuda_matmul": {
            "allow_tf32": guard(lambda: bool(b.cuda.matmul.allow_tf32)),
            "allow_fp16_reduced_precision_reduction": guard(
                lambda: bool(b.cuda.matmul.allow_fp16_reduced_precision_reduction)
            ),
            "allow_bf16_reduced_precision_reduction": guard(
                lambda: bool(b.cuda.matmul.allow_bf16_reduced_precision_reduction)
            ),
        },
        "mkldnn": {
            "enabled": guard(lambda: bool(b.mkldnn.enabled)),
            "deterministic": guard(lambda: bool(b.mkldnn.deterministic)),
        },
        "fp32_precision": {
            "generic": guard(lambda: fp32(lambda: b.fp32_precision)),
            "cuda_matmul": guard(lambda: fp32(lambda: b.cuda.matmul.fp32_precision)),
            "cudnn_conv": guard(lambda: fp32(lambda: b.cudnn.conv.fp32_precision)),
            "mkldnn_matmul": guard(lambda: fp32(lambda: b.mkldnn.matmul.fp32_precision)),
            "mkldnn_conv": guard(lambda: fp32(lambda: b.mkldnn.conv.fp32_precision)),
        },
        "sdp": {
            "flash": guard(lambda: bool(b.cuda.flash_sdp_enabled())),
            "mem_efficient": guard(lambda: bool(b.cuda.mem_efficient_sdp_enabled())),
            "math": guard(lambda: bool(b.cuda.math_sdp_enabled())),
            "cudnn": guard(lambda: bool(b.cuda.cudnn_sdp_enabled())),
        },
        "opt_einsum": guard(
            lambda: {
                "available": bool(b.opt_einsum.is_available()),
                "enabled": bool(b.opt_einsum.enabled),
                "strategy": b.opt_einsum.strategy,
            }
        ),
    }


def backends_info() -> dict[str, Any]:
    b = torch_module().backends
    return {
        "mkldnn_available": guard(lambda: bool(b.mkldnn.is_available())),
        "mkl_available": guard(lambda: bool(b.mkl.is_available())),
        "openmp_available": guard(lambda: bool(b.openmp.is_available())),
        "nnpack_available": guard(lambda: bool(b.nnpack.is_available())),
        "cudnn_available": guard(lambda: bool(b.cudnn.is_available())),
    }


@functools.lru_cache(maxsize=1)
def numpy_info() -> dict[str, Any]:
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

    info.update(guard(config))
    return info


def threadpoolctl_info() -> Any:
    if importlib.util.find_spec("threadpoolctl") is None:
        return {"status": "not-installed"}
    import threadpoolctl  # noqa: PLC0415

    keys = ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer")
    pools = [{k: pool.get(k) for k in keys} for pool in threadpoolctl.threadpool_info()]
    # threadpoolctl lists libraries in load order, which depends on what the process imported.
    return sorted(pools, key=lambda p: tuple(str(p.get(k)) for k in keys))


def blas_info() -> dict[str, Any]:
    def torch_blas() -> dict[str, Any]:
        settings = torch_build().get("settings", {})
        return {
            "blas_info": settings.get("BLAS_INFO"),
            "lapack_info": settings.get("LAPACK_INFO"),
            "parallel_backend": torch_parallel().get("backend"),
        }

    return {
        "torch": guard(torch_blas),
        "numpy": guard(numpy_info),
        "threadpoolctl": guard(threadpoolctl_info),
    }


def cuda_info(init_cuda: bool) -> dict[str, Any]:
    torch = torch_module()
    cuda = torch.cuda
    info: dict[str, Any] = {
        "built": guard(lambda: torch.version.cuda),
        "available": guard(lambda: bool(cuda.is_available())),
        "device_count": guard(lambda: int(cuda.device_count())),
    }

    def cudnn() -> dict[str, Any]:
        out: dict[str, Any] = {"available": bool(torch.backends.cudnn.is_available())}
        c_cudnn = getattr(torch._C, "_cudnn", None)
        out["built_version"] = guard(lambda: c_cudnn.getCompileVersion()) if c_cudnn else None
        out["loaded_version"] = (
            guard(torch.backends.cudnn.version) if out["available"] is True else None
        )
        return out

    info["cudnn"] = guard(cudnn)

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
                    "uuid": guard(lambda p=props: str(p.uuid)),
                }
            )
        return out

    info["devices"] = guard(devices)
    return info
