"""Planted: the first epoch is shuffled with the seeded generator, later epochs with a fresh
generator seeded from the clock -- the runs agree for one epoch, then part."""

import time

import pytest
import torch
from torch.utils.data import DataLoader

from suites.training import MLP, classification_data

EPOCH_STEPS = 4  # 128 examples / batch of 32


@pytest.mark.repro(steps=10)
def test_divergence_after_first_epoch(repro):
    dataset = classification_data(repro.generator("data"), n=128)
    with repro.seeded("init"):
        model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = repro.generator("shuffle")
    step = 0
    while step < repro.steps:
        loader = DataLoader(dataset, batch_size=32, shuffle=True, generator=generator)
        for x, y in loader:
            if step >= repro.steps:
                break
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            repro.record(step, model=model, optimizer=optimizer, loss=loss)
            step += 1
        generator = torch.Generator().manual_seed(time.time_ns())  # BUG: reseeded from the clock
