import pytest
import torch
from torch.utils.data import DataLoader

from suites.training import MLP, classification_data, train_steps


@pytest.mark.repro(steps=30)
def test_mlp_adam(repro):
    dataset = classification_data(repro.generator("data"))
    with repro.seeded("init"):
        model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, **repro.dataloader_kwargs())
    first = float(torch.nn.functional.cross_entropy(model(dataset.tensors[0]), dataset.tensors[1]))
    train_steps(repro, model, optimizer, loader)
    last = float(torch.nn.functional.cross_entropy(model(dataset.tensors[0]), dataset.tensors[1]))
    assert last < first, "the MLP should learn the blobs"
