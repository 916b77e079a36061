"""An LSTM learns to tell positive from negative token sequences (which kind of word occurs
more often; ties and 10% of the labels are noise) with SGD and momentum, at two widths.
Demonstrates a recurrent model's state (``nn.LSTM``'s fused weights) and a parametrized test:
each variant is its own reproducibility case, with its own seed and baseline."""

import pytest
import torch
from torch.utils.data import DataLoader

from suites.training import (
    LSTMClassifier,
    assert_learns,
    evaluate,
    sequence_data,
    split,
    train_steps,
)


@pytest.mark.parametrize("hidden", [16, 32])
@pytest.mark.repro(steps=30)
def test_lstm_sgd(repro, hidden):
    train, held_out = split(sequence_data(repro.generator("data"), n=1024), held_out=512)
    with repro.seeded("init"):
        model = LSTMClassifier(hidden=hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loader = DataLoader(train, batch_size=32, shuffle=True, **repro.dataloader_kwargs())
    before = evaluate(model, held_out)
    train_steps(repro, model, optimizer, loader)
    assert_learns(before, evaluate(model, held_out), chance=0.5, what=f"LSTM({hidden})")
