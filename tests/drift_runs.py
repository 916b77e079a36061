"""Tiny real training runs for the drift tests: a reference, its float64 twin, reduction-order
noise and a real numerical bug (shared by test_variants.py and test_compare_cli.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from repro_check.core.backend import apply_settings
from repro_check.core.record import Recorder, RunRecord
from repro_check.core.spill import SpillWriter


def train(
    tmp_path: Path,
    name: str,
    *,
    float64: bool = False,
    reorder: bool = False,
    scale_bug: float = 1.0,
    scale: float = 1.0,
    nan_at: int | None = None,
    steps: int = 3,
    spill: bool = True,
) -> RunRecord:
    """A real 3-step Adam run of a linear layer with an RMS normalisation. ``reorder`` sums the
    matrix product in reverse order (reduction-order noise, as another thread count or ISA
    gives); ``scale_bug`` multiplies the normalised output (a real numerical bug); ``scale``
    scales the data (the rule must not care)."""
    undo = apply_settings({"float64": True} if float64 else {})
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(64, 32)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        data = torch.Generator().manual_seed(1)
        recorder = Recorder(SpillWriter(tmp_path / f"{name}.bin", 2**24) if spill else None)
        for step in range(steps):
            x = torch.randn(128, 64, generator=data) * scale
            if reorder:
                h = x.flip(-1) @ model.weight.flip(-1).T + model.bias
            else:
                h = model(x)
            h = h / (h.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * scale_bug
            loss = (h - 0.5).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step == nan_at:
                with torch.no_grad():
                    model.weight[0, 0] = float("nan")
            recorder.record(step, {"model": model, "optimizer": optimizer, "loss": loss})
        return recorder.close()
    finally:
        undo()
