"""A training set-up that can stop after any step and resume from a checkpoint exactly: the
pattern ``@pytest.mark.repro(resume_at=k)`` verifies (suites/test_resume.py), and the pieces
the planted mistakes leave out (suites/nondeterministic/test_resume_mistakes.py).

What a resume must carry, beyond the model and the optimizer: the LR scheduler; the global RNGs
(``rng=repro.rng_state()``: dropout draws from torch's); and where the data stream stood -- the
generator state the current epoch's shuffling was drawn from, and how many of its batches were
consumed (:class:`ResumableBatches`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from suites.training import classification_data

EPOCH_BATCHES = 8  # 256 examples in batches of 32: a resume at step 5 is mid-epoch


class DropoutMLP(nn.Module):
    """An MLP whose dropout draws from torch's global RNG at every training step."""

    def __init__(self, features: int = 20, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResumableBatches:
    """Batches of a shuffled DataLoader, forever, resumable mid-epoch.

    ``position`` is all a checkpoint needs: the state of the loader's generator when the current
    epoch began (a DataLoader draws the epoch's permutation and its workers' base seed from it
    when iterated) and the number of batches consumed since. Restored in place by
    ``repro.restore(data=batches.position)``, the next epoch pass re-draws the same permutation
    and skips what was consumed.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.generator: torch.Generator = loader.generator
        self.position: dict[str, Any] = {"epoch_rng": self.generator.get_state(), "consumed": 0}

    def __iter__(self) -> Iterator[Any]:
        while True:
            self.generator.set_state(self.position["epoch_rng"])
            batches = iter(self.loader)
            for _ in range(self.position["consumed"]):
                next(batches)
            for batch in batches:
                self.position["consumed"] += 1
                yield batch
            self.position.update(epoch_rng=self.generator.get_state(), consumed=0)


def training_setup(repro: Any) -> tuple[nn.Module, Any, Any, DataLoader]:
    """Model (with dropout), Adam, a step LR schedule and a seeded, shuffled loader."""
    data = classification_data(repro.generator("data"), n=32 * EPOCH_BATCHES)
    repro.record_data("train", data.tensors[0])
    with repro.seeded("init"):
        model = DropoutMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    loader = DataLoader(data, batch_size=32, shuffle=True, **repro.dataloader_kwargs())
    return model, optimizer, scheduler, loader


def train_step(model: nn.Module, optimizer: Any, scheduler: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss
