"""Planted: ``put_(accumulate=True)`` with duplicate indices. The order in which threads add
into the same slot changes from run to run, and with it the rounding of the sums.
(With accumulate=False the last writer wins, also racy, but it shows in only ~half the runs.)"""

import pytest
import torch
from torch import nn


class ScatterFeatures(nn.Module):
    def __init__(self, slots: int = 16) -> None:
        super().__init__()
        self.encode = nn.Linear(8, 1)
        self.head = nn.Linear(slots, 2)
        self.slots = slots

    def forward(self, x: torch.Tensor, slot_of: torch.Tensor) -> torch.Tensor:
        values = self.encode(x).reshape(-1)
        buffer = torch.zeros(self.slots)
        buffer.put_(slot_of, values.detach(), accumulate=True)  # duplicate slots: racy sums
        return self.head(buffer.unsqueeze(0) * (self.slots / len(values))) + values.mean()


@pytest.mark.repro(steps=4)
def test_put_with_duplicate_indices(repro):
    torch.set_num_threads(2)
    generator = repro.generator("data")
    with repro.seeded("init"):
        model = ScatterFeatures()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(repro.steps):
        x = torch.randn(400_000, 8, generator=generator)
        slot_of = torch.randint(0, 16, (400_000,), generator=generator)
        loss = nn.functional.cross_entropy(model(x, slot_of), torch.tensor([step % 2]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
