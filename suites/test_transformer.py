import pytest
import torch
from torch.utils.data import DataLoader

from suites.training import TinyTransformer, sequence_data, train_steps


@pytest.mark.repro(steps=16)
def test_transformer_dropout(repro):
    dataset = sequence_data(repro.generator("data"))
    with repro.seeded("init"):
        model = TinyTransformer()
    model.train()  # dropout on: its masks come from the global stream, seeded per test
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=repro.steps)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, **repro.dataloader_kwargs())
    loss = train_steps(repro, model, optimizer, loader, scheduler)
    assert loss == loss
