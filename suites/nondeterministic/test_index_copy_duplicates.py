"""Planted: ``index_copy_`` with duplicate indices. The rows written to the same index race, so
with 2+ threads the result depends on which thread writes last."""

import pytest
import torch
from torch import nn


class RowCache(nn.Module):
    def __init__(self, rows: int = 16, dim: int = 16) -> None:
        super().__init__()
        self.project = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 2)
        self.rows = rows

    def forward(self, x: torch.Tensor, row_of: torch.Tensor) -> torch.Tensor:
        projected = self.project(x).detach()
        cache = torch.zeros(self.rows, x.shape[1])
        for rows, values in zip(row_of.chunk(4), projected.chunk(4), strict=True):
            # four races per step: the chance that none shows is small even on a busy machine
            cache = cache + torch.zeros_like(cache).index_copy_(0, rows, values)
        return self.head(cache + self.project(x[: self.rows]))


@pytest.mark.repro(steps=4)
def test_index_copy_with_duplicate_indices(repro):
    torch.set_num_threads(2)
    generator = repro.generator("data")
    with repro.seeded("init"):
        model = RowCache()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(repro.steps):
        x = torch.randn(400_000, 16, generator=generator)
        row_of = torch.randint(0, 16, (400_000,), generator=generator)
        labels = torch.randint(0, 2, (16,), generator=generator)
        loss = nn.functional.cross_entropy(model(x, row_of), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
