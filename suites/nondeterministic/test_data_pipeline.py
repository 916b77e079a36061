"""Planted: DataLoader workers seed their augmentation from their process id -- a common
recipe that differs on every run. The nondeterminism enters with the batch, not in a torch op."""

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from suites.training import MLP


class NoisyBlobs(Dataset):
    def __init__(self, generator: torch.Generator, n: int = 256) -> None:
        self.x = torch.randn(n, 20, generator=generator)
        self.y = torch.randint(0, 4, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        jitter = np.random.normal(scale=0.1, size=20).astype(np.float32)  # augmentation
        return self.x[index] + torch.from_numpy(jitter), self.y[index]


def seed_from_pid(worker_id: int) -> None:
    np.random.seed(os.getpid() % 2**32)  # BUG: should derive from torch.initial_seed()


@pytest.mark.repro(steps=6)
def test_worker_seeded_from_pid(repro):
    dataset = NoisyBlobs(repro.generator("data"))
    loader = DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        num_workers=2,
        generator=repro.generator("shuffle"),
        worker_init_fn=seed_from_pid,
    )
    with repro.seeded("init"):
        model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, (x, y) in zip(range(repro.steps), loader, strict=False):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
