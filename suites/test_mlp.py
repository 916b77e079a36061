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
    x, y = dataset.tensors
    with torch.no_grad():
        first = float(torch.nn.functional.cross_entropy(model(x), y))
    train_steps(repro, model, optimizer, loader)
    with torch.no_grad():
        last = float(torch.nn.functional.cross_entropy(model(x), y))
    assert last < first, "the MLP should learn the blobs"
