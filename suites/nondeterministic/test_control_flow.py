"""Planted: a branch decided by Python-level randomness that nobody seeded (here the OS
entropy pool): the replicas run different ops, so their traces differ in structure.

The branch is taken per group of samples (as stochastic-depth or mixture-of-activation code
does), so two processes make the same choices in one forward pass with probability 2**-16:
a single coin per step made the same six choices once in 64 runs, and the planted bug passed.
"""

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
        groups = []
        for h in self.fc1(x).chunk(16):
            if _entropy.random() < 0.5:  # BUG: unseeded choice of activation
                h = torch.relu(h)
            else:
                h = torch.tanh(h)
            groups.append(h)
        return self.fc2(torch.cat(groups))


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
