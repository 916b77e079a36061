import pytest
import torch
from torch.utils.data import DataLoader

from suites.training import ShapesDataset, SmallCNN, train_steps


@pytest.fixture
def cnn():
    # Built in a fixture: each replica must get a freshly initialised model.
    return SmallCNN()


@pytest.mark.repro(steps=16)
def test_cnn_augmented_workers(repro, cnn):
    dataset = ShapesDataset(repro.generator("data"))
    loader = DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        **repro.dataloader_kwargs("augment"),
    )
    optimizer = torch.optim.SGD(cnn.parameters(), lr=0.05, momentum=0.9)
    loss = train_steps(repro, cnn, optimizer, loader)
    assert loss == loss  # finite training, not NaN
