"""The basic contract, on the smallest real model: an MLP learns four overlapping, partly
mislabelled classes with Adam. Demonstrates per-source seeds -- ``repro.generator("data")``
draws the data set, ``repro.seeded("init")`` the initial weights, ``repro.dataloader_kwargs()``
the batch order -- and recording the model and the optimizer's full state (Adam's moments) at
every step. The held-out loss falls and the accuracy rises well above chance, but the training
loss stays far from zero (about 0.5 after 30 steps): every step changes every number."""

import pytest
import torch
from torch.utils.data import DataLoader

from suites.training import MLP, assert_learns, classification_data, evaluate, split, train_steps


@pytest.mark.repro(steps=30)
def test_mlp_adam(repro):
    train, held_out = split(classification_data(repro.generator("data"), n=1024), held_out=512)
    with repro.seeded("init"):
        model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(train, batch_size=32, shuffle=True, **repro.dataloader_kwargs())
    before = evaluate(model, held_out)
    train_steps(repro, model, optimizer, loader)
    assert_learns(before, evaluate(model, held_out), chance=0.25, what="MLP")
