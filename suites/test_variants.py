"""The reference suite for backend variants: one small CNN, run in three other CPU environments
and in float64, with the drift judged against the float64 run.

``pytest --repro suites/test_variants.py`` runs the replicas (bitwise, as everywhere) and the
variants named in the marker; the terminal's ``repro variants`` section and report.md (with a
drift curve PNG) show, per variant, the verdict, the first drift step and key, the first drift op
and whether such drift is expected there, and how the difference grows. The README reads one
such report line by line.

What to expect on a typical x86 CPU: ``threads=1`` drifts in the convolution or the batch norm
reduction (expected: a reduction's order depends on the thread count), or not at all when the
kernels are single-threaded at this size; ``isa=default`` drifts *before step 0*, in the random
kernel that draws the data or the weights (expected: ``randn``/``normal_`` are vectorised per
instruction set); ``mkldnn=off`` drifts in the convolution (expected: another algorithm). All
stay within the float64 rule at their first drift step, so the test passes.
"""

import pytest
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)
        return self.head(h.flatten(1))


@pytest.mark.repro(steps=8, variants=["threads=1", "isa=default", "mkldnn=off"])
def test_cnn_across_backends(repro):
    generator = repro.generator("data")
    images = torch.randn(64, 1, 8, 8, generator=generator)
    labels = (images.mean((1, 2, 3)) > 0).long() + (images[:, :, :4].mean((1, 2, 3)) > 0).long()
    with repro.seeded("init"):
        model = TinyCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(repro.steps):
        batch = slice(16 * (step % 4), 16 * (step % 4) + 16)
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
    assert loss == loss
