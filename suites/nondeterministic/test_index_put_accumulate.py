"""Planted: a bag-of-ids layer sums embeddings with ``index_put_(accumulate=True)`` over
duplicate indices. With 2+ threads on CPU the order of the additions -- and so the bits of the
sums -- changes from run to run."""

import pytest
import torch
from torch import nn


class BagOfIds(nn.Module):
    def __init__(self, ids: int = 1000, dim: int = 16, bags: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(ids, dim)
        self.bags = bags
        self.head = nn.Linear(dim, 2)

    def forward(self, ids: torch.Tensor, bag_of: torch.Tensor) -> torch.Tensor:
        pooled = torch.zeros(self.bags, self.embedding.embedding_dim)
        pooled = pooled.index_put((bag_of,), self.embedding(ids), accumulate=True)
        return self.head(pooled * (self.bags / len(ids)))  # sum -> mean bag size


@pytest.mark.repro(steps=5)
def test_index_put_accumulate(repro):
    torch.set_num_threads(2)  # the nondeterminism needs parallel accumulation
    generator = repro.generator("data")
    with repro.seeded("init"):
        model = BagOfIds()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(repro.steps):
        ids = torch.randint(0, 1000, (200_000,), generator=generator)
        bag_of = torch.randint(0, 64, (200_000,), generator=generator)
        labels = torch.randint(0, 2, (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(ids, bag_of), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
