"""repro-check: determinism verification and test harness for PyTorch training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["CheckpointMismatch", "load_checkpoint"]

if TYPE_CHECKING:
    from repro_check.core.restore import CheckpointMismatch, load_checkpoint


def __getattr__(name: str) -> Any:
    # Lazy: `import repro_check` (every pytest start, through the plugin's entry point) must not
    # import torch or safetensors.
    if name in __all__:
        from repro_check.core import restore

        return getattr(restore, name)
    raise AttributeError(f"module 'repro_check' has no attribute {name!r}")
