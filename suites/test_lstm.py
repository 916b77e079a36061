import pytest
import torch
from torch.utils.data import DataLoader

from suites.training import LSTMClassifier, sequence_data, train_steps


@pytest.mark.parametrize("hidden", [16, 32])
@pytest.mark.repro(steps=12)
def test_lstm_sgd(repro, hidden):
    dataset = sequence_data(repro.generator("data"))
    with repro.seeded("init"):
        model = LSTMClassifier(hidden=hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, **repro.dataloader_kwargs())
    loss = train_steps(repro, model, optimizer, loader)
    assert loss == loss
