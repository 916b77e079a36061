"""Small, real training set-ups shared by the reference suites: generated data, real models.

Every data set is a real learning problem that cannot be solved perfectly -- classes overlap,
and a share of the labels is wrong (``label_noise``) -- so a model learns (its held-out loss
falls, its accuracy rises well above chance) but its training loss never collapses to zero: a
reproducibility test then compares numbers that keep moving at every step, as in real training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


def noisy_labels(
    labels: torch.Tensor, classes: int, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Replace a share ``rate`` of the labels by uniformly random ones (mislabelled examples)."""
    flip = torch.rand(len(labels), generator=generator) < rate
    random = torch.randint(0, classes, (len(labels),), generator=generator)
    return torch.where(flip, random, labels)


def classification_data(
    generator: torch.Generator,
    n: int = 512,
    features: int = 20,
    classes: int = 4,
    label_noise: float = 0.1,
) -> TensorDataset:
    """Overlapping Gaussian classes in 20-D, bent by a sine warp, with 10% of the labels wrong.

    The class centres are close (0.35 per coordinate, noise 0.5): the classes overlap, and a
    good MLP reaches ~85% held-out accuracy, never 100%.
    """
    centers = torch.randn(classes, features, generator=generator) * 0.35
    labels = torch.randint(0, classes, (n,), generator=generator)
    x = centers[labels] + 0.5 * torch.randn(n, features, generator=generator)
    x = x + 0.3 * torch.sin(3 * x.roll(1, dims=1))
    return TensorDataset(x, noisy_labels(labels, classes, label_noise, generator))


def split(dataset: TensorDataset, held_out: int) -> tuple[TensorDataset, TensorDataset]:
    """The first ``len - held_out`` examples to train on, the rest to evaluate."""
    cut = len(dataset) - held_out
    train = TensorDataset(*(t[:cut] for t in dataset.tensors))
    return train, TensorDataset(*(t[cut:] for t in dataset.tensors))


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """Held-out (loss, accuracy), in eval mode (no dropout: no RNG is consumed)."""
    was_training = model.training
    model.eval()
    x, y = data.tensors
    logits = model(x)
    model.train(was_training)
    loss = float(nn.functional.cross_entropy(logits, y))
    return loss, float((logits.argmax(1) == y).float().mean())


class MLP(nn.Module):
    def __init__(self, features: int = 20, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ShapesDataset(Dataset):
    """16x16 single-channel images of squares, crosses and rings in heavy pixel noise, with
    random flips and shifts, and 10% of the labels wrong.

    Augmentation draws from torch's global RNG, which DataLoader seeds per worker from the
    loader's generator: reproducible exactly when the loader is seeded.
    """

    def __init__(self, generator: torch.Generator, n: int = 256, label_noise: float = 0.1) -> None:
        true_labels = torch.randint(0, 3, (n,), generator=generator)
        self.noise = torch.randn(n, 1, 16, 16, generator=generator) * 0.5
        yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        r = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2).sqrt()
        square = ((yy - 7.5).abs() < 5) & ((xx - 7.5).abs() < 5)
        cross = ((yy - 7.5).abs() < 1.5) | ((xx - 7.5).abs() < 1.5)
        ring = (r > 4) & (r < 6.5)
        self.templates = torch.stack([square, cross, ring]).float().unsqueeze(1)
        self.true_labels = true_labels
        self.labels = noisy_labels(true_labels, 3, label_noise, generator)

    def __len__(self) -> int:
        return len(self.labels)

    def unaugmented(self, indices: range) -> TensorDataset:
        """Examples as they are (no flip, no shift): a held-out set."""
        images = self.templates[self.true_labels[indices]] + self.noise[indices]
        return TensorDataset(images, self.labels[indices])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.templates[self.true_labels[index]] + self.noise[index]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        shift = int(torch.randint(-2, 3, ()))
        return image.roll(shift, dims=-2), self.labels[index]


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


POSITIVE, NEGATIVE = range(0, 8), range(8, 16)  # the other tokens of the vocabulary are neutral


def sequence_data(
    generator: torch.Generator,
    n: int = 512,
    length: int = 12,
    vocab: int = 32,
    label_noise: float = 0.1,
) -> TensorDataset:
    """Review-like token sequences: tokens 0-7 are positive words, 8-15 negative, the rest
    neutral; the label says whether positive words outnumber negative ones. Ties are a coin flip
    and 10% of the labels are flipped, so ~75% held-out accuracy is a good model, not 100%."""
    tokens = torch.randint(0, vocab, (n, length), generator=generator)
    positive = (tokens < POSITIVE.stop).sum(1)
    negative = ((tokens >= NEGATIVE.start) & (tokens < NEGATIVE.stop)).sum(1)
    coin = torch.randint(0, 2, (n,), generator=generator)
    labels = torch.where(positive == negative, coin, (positive > negative).long())
    return TensorDataset(tokens, noisy_labels(labels, 2, label_noise, generator))


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
    """Embedding, LSTM, mean of its outputs over time, linear head."""

    def __init__(self, vocab: int = 32, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, num_layers=1)
        self.head = nn.Linear(hidden, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out.mean(1))


def batches(loader: DataLoader) -> Iterator:
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


def assert_learns(
    before: tuple[float, float], after: tuple[float, float], chance: float, what: str
) -> None:
    """Held-out loss fell and accuracy is above chance (for any base seed: checked over 20) --
    yet the task is noisy, so a perfect score would mean the data leaked."""
    (loss_before, _), (loss_after, accuracy) = before, after
    assert loss_after < loss_before, f"{what}: held-out loss {loss_before:.3f} -> {loss_after:.3f}"
    assert chance < accuracy < 1.0, f"{what}: held-out accuracy {accuracy:.3f}"
