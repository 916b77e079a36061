"""The reference model for seed-sensitivity sweeps (``pytest --repro-sensitivity``).

Every source of randomness has its own stream, so a sweep can vary one at a time: ``data``
(which examples are in the training set), ``init`` (initial weights), ``shuffle`` (batch order),
``global`` (dropout masks: drawn from the global torch RNG, seeded from the ``global`` stream).
The held-out set is drawn from its own stream and never perturbed, so its metrics and
predictions are comparable across runs.

Two variants (dropout 0.2 and 0.5) are the reference A/B example: as parametrizations of one
test they share every seed, run k of A with run k of B, so the report compares them paired.
The held-out accuracy and loss are the declared outcomes; the last minibatch's training loss
is recorded as a diagnostic only.
"""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

POOL, TRAIN, HELD_OUT = 4096, 512, 1024


def blobs(generator: torch.Generator, n: int) -> TensorDataset:
    """Four overlapping Gaussian classes in 20-D: accuracy well below 100%, so seeds matter."""
    centers = (
        torch.tensor(
            [[1.0] * 10 + [0.0] * 10, [0.0] * 10 + [1.0] * 10, [1.0, 0.0] * 10, [0.0, 1.0] * 10]
        )
        * 0.9
    )
    labels = torch.randint(0, 4, (n,), generator=generator)
    return TensorDataset(centers[labels] + torch.randn(n, 20, generator=generator), labels)


class DropoutMLP(nn.Module):
    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(20, 64),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(64, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("dropout", [0.2, 0.5], ids=["p0.2", "p0.5"])
@pytest.mark.repro(steps=80)
def test_dropout_mlp_sensitivity(repro, dropout):
    pool = blobs(repro.generator("pool"), POOL)  # the fixed "population"
    held_out = blobs(repro.generator("eval"), HELD_OUT)
    chosen = torch.randperm(POOL, generator=repro.generator("data"))[:TRAIN]
    train = TensorDataset(*(t[chosen] for t in pool.tensors))
    with repro.seeded("init"):
        model = DropoutMLP(dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=repro.generator("shuffle"))
    batches = (batch for _ in range(1000) for batch in loader)
    for step, (x, y) in zip(range(repro.steps), batches, strict=False):
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == repro.steps - 1:
            model.eval()
            with torch.no_grad():
                logits = model(held_out.tensors[0])
            eval_loss = nn.functional.cross_entropy(logits, held_out.tensors[1])
            accuracy = (logits.argmax(1) == held_out.tensors[1]).float().mean()
            repro.record_predictions(logits)
            repro.record_outcome("eval_accuracy", accuracy, n_examples=HELD_OUT)
            repro.record_outcome("eval_loss", eval_loss, higher_is_better=False)
            repro.record(
                step,
                model=model,
                optimizer=optimizer,
                loss=loss,
                eval_loss=eval_loss,
                eval_accuracy=accuracy,
            )
        else:
            repro.record(step, model=model, optimizer=optimizer, loss=loss)
    assert float(accuracy) > 0.5, "the model should beat chance (0.25) by far"
