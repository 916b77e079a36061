"""Deterministic mode: the switches PyTorch documents for reproducible runs, in one place."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from repro_check.trace.ops import NO_DETERMINISTIC_IMPLEMENTATION

#: cuBLAS needs a fixed workspace for deterministic results (CUDA >= 10.2; PyTorch's notes).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": CUBLAS_WORKSPACE_CONFIG}

_FRAME = re.compile(r"^(\S+\.py):(\d+): \w*Error", re.MULTILINE)


def enable_deterministic_mode() -> Callable[[], None]:
    """Turn on deterministic algorithms and cuDNN flags; returns a function restoring them."""
    import torch

    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    def restore() -> None:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic = previous[2]
        torch.backends.cudnn.benchmark = previous[3]
        if previous[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = previous[4]

    return restore


def explain_deterministic_error(error_text: str) -> str:
    """For a traceback raised because an op has no deterministic kernel: name the op and the
    line that called it; '' when the error is something else."""
    match = NO_DETERMINISTIC_IMPLEMENTATION.search(error_text)
    if match is None:
        return ""
    frames = _FRAME.findall(error_text)
    where = f" at {frames[-1][0]}:{frames[-1][1]}" if frames else ""
    return (
        f"{match.group(1)} has no deterministic implementation: "
        f"torch.use_deterministic_algorithms(True) made it raise{where}. Replace the op "
        f"(see `pytest --repro-audit` for alternatives) or accept it with "
        f"@pytest.mark.repro(allow={{'aten::<op>': 'why; atol=...'}}) and run without "
        f"--repro-deterministic."
    )
