"""Planted: a real numerical bug that only one backend variant runs.

A hand-written RMS normalisation has a "fast path" for single-threaded runs (small CI runners,
inference servers pinned to one core) that was copied from a float16 kernel -- with its epsilon,
1e-3 instead of 1e-6. The replicas agree bit for bit; the ``threads=1`` variant the marker asks
for takes the other path: its error against the float64 run is hundreds of times the
reference's own rounding error at the first step, so the float64 rule fails it -- this is not
reduction-order noise -- and the first drift op is the ``add`` of the epsilon, called with
another Python number on the line below (another code path). The reference must run on more
than one thread (``OMP_NUM_THREADS=2`` on a one-core machine).
"""

import pytest
import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    if torch.get_num_threads() == 1:  # the "fast path", with the float16 kernel's epsilon
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3) * weight
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class NormedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(16, 32)
        self.scale = nn.Parameter(torch.ones(32))
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(rms_norm(self.inner(x), self.scale)))


@pytest.mark.repro(steps=4, variants=["threads=1"])
def test_single_thread_path_with_wrong_epsilon(repro):
    generator = repro.generator("data")
    x = torch.randn(64, 16, generator=generator)
    y = (x[:, 0] > 0).long()
    with repro.seeded("init"):
        model = NormedMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(repro.steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
