"""Checkpoints of replicas, rebuilt from their spill files (the replicas kept no tensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repro_check.core.checkpoint import save_checkpoint
from repro_check.core.paths import inside, nodeid_path
from repro_check.core.spill import read_spilled
from repro_check.orchestration.replicas import ReplicaResult


def test_folder(root: Path, nodeid: str) -> Path:
    """``ROOT/<test file path without .py>/<test name>``: the layout of baselines, by the same
    injective id-to-path rule (a test name that is not a safe file name gets a hash suffix)."""
    return root / nodeid_path(nodeid)


def checkpoint_folder(root: Path, nodeid: str, replica: int) -> Path:
    """Where one replica's checkpoints go; refused (UnsafePathError) when a symbolic link
    would lead the write out of ``root``."""
    return inside(root, test_folder(root, nodeid) / f"replica-{replica}", "checkpoints")


def save_last_step(root: Path, result: ReplicaResult, metadata: dict[str, Any]) -> Path | None:
    """Save the last recorded step of one replica; None when its tensors were not all spilled."""
    assert result.record is not None
    last = result.record.steps[-1]
    if any(entry.spill is None for entry in last.entries.values()):
        return None
    tensors = {
        key: read_spilled(entry.spill, entry.fingerprint.dtype, entry.fingerprint.shape)
        for key, entry in last.entries.items()
        if entry.spill is not None
    }
    folder = checkpoint_folder(root, result.nodeid, result.replica)
    return save_checkpoint(
        folder / f"step-{last.step}",
        tensors,
        {
            "test_id": result.nodeid,
            "replica": result.replica,
            "step": last.step,
            "environment": result.environment,
            "order": list(tensors),  # as recorded (state-dict order); the manifest sorts keys
            **metadata,
        },
    )
