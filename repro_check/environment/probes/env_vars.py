"""An allowlist of environment variables that decide the numbers; secrets are never recorded."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from repro_check.environment._common import decode_bytes, scrub_credentials

_ENV_VALUE_MAX_CHARS = 4096


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


def env_allowed(name: str) -> bool:
    if ENV_DENY_RE.search(name.upper()):
        return False
    return name in ENV_EXACT or name.startswith(ENV_PREFIXES)


def env_vars() -> dict[str, str]:
    items: Iterable[tuple[str | bytes, str | bytes]]
    items = os.environb.items() if hasattr(os, "environb") else os.environ.items()
    out: dict[str, str] = {}
    for raw_name, raw_value in items:
        name = decode_bytes(raw_name) if isinstance(raw_name, bytes) else raw_name
        if not env_allowed(name):
            continue
        value = decode_bytes(raw_value) if isinstance(raw_value, bytes) else raw_value
        value = scrub_credentials(value)
        if len(value) > _ENV_VALUE_MAX_CHARS:
            value = value[:_ENV_VALUE_MAX_CHARS] + f"...[{len(value)} chars]"
        out[name] = value
    return dict(sorted(out.items()))
