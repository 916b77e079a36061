"""Small, real training set-ups shared by the reference suites: generated data, real models."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


def classification_data(
    generator: torch.Generator, n: int = 512, features: int = 20, classes: int = 4
) -> TensorDataset:
    """Gaussian blobs with a non-linear boundary: learnable, not trivial."""
    centers = torch.randn(classes, features, generator=generator) * 2.0
    labels = torch.randint(0, classes, (n,), generator=generator)
    x = centers[labels] + torch.randn(n, features, generator=generator)
    x = x + 0.3 * torch.sin(x.roll(1, dims=1))
    return TensorDataset(x, labels)


class MLP(nn.Module):
    def __init__(self, features: int = 20, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ShapesDataset(Dataset):
    """16x16 single-channel images of squares, crosses and rings with random flips and shifts.

    Augmentation draws from torch's global RNG, which DataLoader seeds per worker from the
    loader's generator: reproducible exactly when the loader is seeded.
    """

    def __init__(self, generator: torch.Generator, n: int = 256) -> None:
        self.labels = torch.randint(0, 3, (n,), generator=generator)
        self.noise = torch.randn(n, 1, 16, 16, generator=generator) * 0.2
        yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        r = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2).sqrt()
        square = ((yy - 7.5).abs() < 5) & ((xx - 7.5).abs() < 5)
        cross = ((yy - 7.5).abs() < 1.5) | ((xx - 7.5).abs() < 1.5)
        ring = (r > 4) & (r < 6.5)
        self.templates = torch.stack([square, cross, ring]).float().unsqueeze(1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = self.labels[index]
        image = self.templates[label] + self.noise[index]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        shift = int(torch.randint(-2, 3, ()))
        return image.roll(shift, dims=-2), label


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(16 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def sequence_data(
    generator: torch.Generator, n: int = 256, length: int = 12, vocab: int = 32
) -> TensorDataset:
    """Token sequences labelled by whether token 0 occurs more often than token 1."""
    tokens = torch.randint(0, vocab, (n, length), generator=generator)
    labels = ((tokens == 0).sum(1) > (tokens == 1).sum(1)).long()
    return TensorDataset(tokens, labels)


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 32, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(1, 64, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=64, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) * math.sqrt(self.embed.embedding_dim)
        h = self.encoder(h + self.position[:, : tokens.shape[1]])
        return self.head(h.mean(1))


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, num_layers=1)
        self.head = nn.Linear(hidden, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out[:, -1])


def batches(loader: DataLoader):
    """Cycle through a loader forever (epochs continue the loader's seeded shuffling)."""
    while True:
        yield from loader


def train_steps(repro, model: nn.Module, optimizer, loader: DataLoader, scheduler=None) -> float:
    """The standard loop of the suites: one recorded step per batch; returns the last loss."""
    loss = torch.tensor(float("nan"))
    for step, (x, y) in zip(range(repro.steps), batches(loader), strict=False):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
    return float(loss.detach())
