"""Planted: ``put_`` with duplicate indices (accumulate=False). Which of the duplicates wins the
write depends on thread scheduling, so with 2+ threads the scattered buffer changes from run to
run."""

import pytest
import torch
from torch import nn


class ScatterFeatures(nn.Module):
    def __init__(self, slots: int = 256) -> None:
        super().__init__()
        self.encode = nn.Linear(8, 1)
        self.head = nn.Linear(slots, 2)
        self.slots = slots

    def forward(self, x: torch.Tensor, slot_of: torch.Tensor) -> torch.Tensor:
        values = self.encode(x).reshape(-1)
        buffer = torch.zeros(self.slots)
        buffer.put_(slot_of, values.detach())  # duplicates in slot_of: the last writer wins
        return self.head(buffer.unsqueeze(0) + values.mean())


@pytest.mark.repro(steps=4)
def test_put_with_duplicate_indices(repro):
    torch.set_num_threads(2)
    generator = repro.generator("data")
    with repro.seeded("init"):
        model = ScatterFeatures()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(repro.steps):
        x = torch.randn(200_000, 8, generator=generator)
        slot_of = torch.randint(0, 256, (200_000,), generator=generator)
        loss = nn.functional.cross_entropy(model(x, slot_of), torch.tensor([step % 2]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
