"""Planted: a branch decided by Python-level randomness that nobody seeded (here the OS
entropy pool): the replicas run different ops, so their traces differ in structure."""

import random

import pytest
import torch
from torch import nn

_entropy = random.SystemRandom()


class GatedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if _entropy.random() < 0.5:  # BUG: unseeded choice of activation
            h = torch.relu(h)
        else:
            h = torch.tanh(h)
        return self.fc2(h)


@pytest.mark.repro(steps=6)
def test_branch_on_unseeded_choice(repro):
    generator = repro.generator("data")
    with repro.seeded("init"):
        model = GatedMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(repro.steps):
        x = torch.randn(32, 20, generator=generator)
        y = torch.randint(0, 4, (32,), generator=generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
