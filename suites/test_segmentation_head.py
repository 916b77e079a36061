"""A small segmentation-style model whose ops are deterministic on CPU but not on CUDA:
bilinear upsampling, adaptive average pooling and scatter_add_ (per-class pixel counts).
``pytest --repro suites/`` passes it; ``pytest --repro-audit suites/`` names those three ops,
with the lines that call them, as risks for a GPU run."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class TinySegmenter(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.context = nn.AdaptiveAvgPool2d((2, 2))
        self.classify = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encode(x)
        context = F.interpolate(
            self.context(features), size=features.shape[-2:], mode="bilinear", align_corners=False
        )
        logits = self.classify(torch.cat([features, context], dim=1))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def class_balanced_weights(masks: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.zeros(classes).scatter_add_(0, masks.reshape(-1), torch.ones(masks.numel()))
    return counts.sum() / (classes * counts.clamp(min=1))


@pytest.mark.repro(steps=8)
def test_segmentation_training(repro):
    generator = repro.generator("data")
    images = torch.rand(16, 1, 16, 16, generator=generator)
    masks = (images > 0.5).long() + (images > 0.8).long()  # three classes by intensity
    with repro.seeded("init"):
        model = TinySegmenter()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(repro.steps):
        weights = class_balanced_weights(masks, 3)
        loss = F.cross_entropy(model(images), masks.squeeze(1), weight=weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
