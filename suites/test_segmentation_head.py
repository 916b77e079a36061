"""A small segmentation model learns to label every pixel of noisy scenes as background, square
or disc. Its ops are deterministic on CPU but not on CUDA -- bilinear upsampling, adaptive
average pooling (their backward passes) and scatter_add_ (per-class pixel counts for a
class-balanced loss): ``pytest --repro suites/`` passes it, and ``pytest --repro-audit suites/``
names those three ops, with the lines that call them, as risks for a GPU run."""

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


def scenes(generator: torch.Generator, n: int = 24, size: int = 16):
    """Noisy scenes with one bright square (class 1) and one dimmer disc (class 2) at random
    places: pixel noise makes a pixel's intensity ambiguous, its neighbourhood decides."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    corner = torch.randint(0, size - 6, (n, 2), generator=generator)
    center = torch.randint(3, size - 3, (n, 2), generator=generator)
    square = (
        (yy >= corner[:, :1, None])
        & (yy < corner[:, :1, None] + 6)
        & (xx >= corner[:, 1:, None])
        & (xx < corner[:, 1:, None] + 6)
    )
    disc = (yy - center[:, :1, None]) ** 2 + (xx - center[:, 1:, None]) ** 2 <= 9
    masks = torch.where(disc, 2, torch.where(square, 1, 0))  # the disc lies on top
    images = (
        (masks == 1) * 1.0
        + (masks == 2) * 0.6
        + 0.35 * torch.randn(n, size, size, generator=generator)
    )
    return images.unsqueeze(1).float(), masks


def class_balanced_weights(masks: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.zeros(classes).scatter_add_(0, masks.reshape(-1), torch.ones(masks.numel()))
    return counts.sum() / (classes * counts.clamp(min=1))


@pytest.mark.repro(steps=16)
def test_segmentation_training(repro):
    images, masks = scenes(repro.generator("data"))
    with repro.seeded("init"):
        model = TinySegmenter()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = None
    for step in range(repro.steps):
        batch = torch.arange(step % 3 * 8, step % 3 * 8 + 8)  # three batches of eight scenes
        weights = class_balanced_weights(masks[batch], 3)
        loss = F.cross_entropy(model(images[batch]), masks[batch], weight=weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
        first = first if first is not None else loss.item()
    with torch.no_grad():
        pixels_right = (model(images).argmax(1) == masks).float().mean()
    assert loss.item() < first, "the segmenter should learn"
    assert 0.5 < pixels_right < 1.0
