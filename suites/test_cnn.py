"""A small CNN (convolutions, batch norm, pooling) learns noisy, partly mislabelled shapes from
a DataLoader with two worker processes that augment on the fly (random flips and shifts drawn
from torch's global RNG inside each worker). Demonstrates that worker processes are
reproducible when the loader is seeded (``repro.dataloader_kwargs("augment")``: a seeded
generator and a ``worker_init_fn``), and that a model built in a fixture is rebuilt fresh for
every replica."""

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from suites.training import ShapesDataset, SmallCNN, assert_learns, evaluate, train_steps


@pytest.fixture
def cnn():
    # Built in a fixture: each replica must get a freshly initialised model.
    return SmallCNN()


@pytest.mark.repro(steps=24)
def test_cnn_augmented_workers(repro, cnn):
    dataset = ShapesDataset(repro.generator("data"), n=384)
    train, held_out = Subset(dataset, range(256)), dataset.unaugmented(range(256, 384))
    loader = DataLoader(
        train,
        batch_size=32,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        **repro.dataloader_kwargs("augment"),
    )
    optimizer = torch.optim.Adam(cnn.parameters(), lr=1e-2)
    before = evaluate(cnn, held_out)
    train_steps(repro, cnn, optimizer, loader)
    assert_learns(before, evaluate(cnn, held_out), chance=1 / 3, what="CNN")
