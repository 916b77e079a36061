"""Planted: the data comes from an unseeded ``np.random.default_rng()`` -- every run differs
from step 0."""

import numpy as np
import pytest
import torch

from suites.training import MLP


@pytest.mark.repro(steps=8)
def test_unseeded_numpy_data(repro):
    with repro.seeded("init"):
        model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng()  # BUG: no seed -- should be repro.numpy_rng("data")
    for step in range(repro.steps):
        x = torch.from_numpy(rng.normal(size=(32, 20)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 4, size=32))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
