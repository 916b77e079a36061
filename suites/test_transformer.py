"""A two-layer Transformer encoder learns the token-sequence task with AdamW and a cosine
learning-rate schedule, with dropout on. Demonstrates that dropout masks (drawn from the global
RNG, seeded per test before any fixture runs) replay exactly, and that an LR scheduler's state
is recorded with the model and the optimizer."""

import pytest
import torch
from torch.utils.data import DataLoader

from suites.training import (
    TinyTransformer,
    assert_learns,
    evaluate,
    sequence_data,
    split,
    train_steps,
)


# AdamW turns a one-ulp difference in a near-zero gradient into a step of up to lr: across CPU
# instruction sets or thread counts this model drifts by ~1% of a tensor's RMS per step (measured
# against ATEN_CPU_CAPABILITY=avx2/default and OMP_NUM_THREADS=1), hence the wider tolerance.
@pytest.mark.repro(steps=30, atol=1e-4, rtol=5e-2)
def test_transformer_dropout(repro):
    train, held_out = split(sequence_data(repro.generator("data"), n=1024), held_out=512)
    with repro.seeded("init"):
        model = TinyTransformer()
    model.train()  # dropout on: its masks come from the global stream, seeded per test
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=repro.steps)
    loader = DataLoader(train, batch_size=32, shuffle=True, **repro.dataloader_kwargs())
    before = evaluate(model, held_out)
    train_steps(repro, model, optimizer, loader, scheduler)
    assert_learns(before, evaluate(model, held_out), chance=0.5, what="Transformer")
