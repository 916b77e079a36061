"""Replaying a divergence: capture one event's outputs in two runs and compare them element
by element (how many elements differ, by how much, where first)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from repro_check.trace.tracer import DEFAULT_MAX_EVENTS, OpTracer

__all__ = ["OutputComparison", "compare_event_outputs", "replay_divergence"]


@dataclass
class OutputComparison:
    """How two captured output tensors differ, element by element."""

    numel: int
    n_different: int
    max_abs_diff: float
    first_index: tuple[int, ...] | None
    dtype: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]

    @property
    def identical(self) -> bool:
        return self.n_different == 0 and self.shape_a == self.shape_b

    def __str__(self) -> str:
        if self.shape_a != self.shape_b:
            return f"shapes differ: {list(self.shape_a)} vs {list(self.shape_b)}"
        return (
            f"{self.n_different} of {self.numel} elements differ, max abs diff "
            f"{self.max_abs_diff:.3g}, first at index {list(self.first_index or ())}"
        )


def compare_event_outputs(a_tensor: torch.Tensor, b_tensor: torch.Tensor) -> OutputComparison:
    """Count differing elements (bitwise; NaNs with equal bits agree) and the max abs diff."""
    a = a_tensor.detach().cpu()
    b = b_tensor.detach().cpu()
    dtype = str(a.dtype).replace("torch.", "")
    if a.shape != b.shape:
        return OutputComparison(
            a.numel(),
            max(a.numel(), b.numel()),
            float("inf"),
            None,
            dtype,
            tuple(a.shape),
            tuple(b.shape),
        )
    if a.dtype != b.dtype:
        b = b.to(a.dtype)
    if a.dtype.is_floating_point or a.dtype.is_complex:
        same = (a == b) | (a.isnan() & b.isnan())
    else:
        same = a == b
    diff_mask = ~same
    n = int(diff_mask.sum())
    first = None
    max_abs = 0.0
    if n:
        first = tuple(int(v) for v in diff_mask.nonzero()[0])
        if a.dtype == torch.bool:
            max_abs = 1.0
        else:
            da = a[diff_mask].to(torch.complex128 if a.is_complex() else torch.float64)
            db = b[diff_mask].to(da.dtype)
            max_abs = float((da - db).abs().max())
    return OutputComparison(a.numel(), n, max_abs, first, dtype, tuple(a.shape), tuple(b.shape))


def replay_divergence(
    run: Callable[[], Any],
    event_index: int,
    *,
    attempts: int = 3,
    max_events: int | None = DEFAULT_MAX_EVENTS,
) -> list[OutputComparison] | None:
    """Re-run ``run`` (a zero-argument callable that rebuilds its own state) in pairs, copying
    the outputs of ``event_index``, until a pair differs; return the per-output comparisons of
    that pair, or ``None`` when all ``attempts`` pairs agreed (the divergence did not recur).

    ``run`` must be the workload that was traced to find ``event_index``, without a tracer of
    its own: event indices count from the start of the trace.
    """
    for _ in range(attempts):
        caps = []
        for _ in range(2):
            with OpTracer(max_events=max_events, capture_outputs_of={event_index}) as tr:
                run()
            caps.append(tr.captured.get(event_index))
        if caps[0] is None or caps[1] is None:
            return None
        comps = [compare_event_outputs(x, y) for x, y in zip(caps[0], caps[1], strict=False)]
        if any(not c.identical for c in comps):
            return comps
    return None
