"""Planted: the vocabulary is built by iterating over a set of strings. str hashes are
randomised per process (PYTHONHASHSEED), so token ids -- and the whole run -- differ between
processes, while two runs inside one process agree."""

import pytest
import torch
from torch import nn

CORPUS = (
    "the cat sat on the mat while the dog slept by the door and the bird sang in the tree "
    "a fox ran past the barn as rain fell on the field near the old mill"
).split()


@pytest.mark.repro(steps=6)
def test_vocabulary_from_set(repro):
    vocabulary = {word: index for index, word in enumerate(set(CORPUS))}  # BUG: sorted(set(...))
    tokens = torch.tensor([vocabulary[w] for w in CORPUS])
    with repro.seeded("init"):
        model = nn.Sequential(nn.Embedding(len(vocabulary), 8), nn.Linear(8, len(vocabulary)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(repro.steps):
        logits = model(tokens[:-1])
        loss = nn.functional.cross_entropy(logits, tokens[1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, optimizer=optimizer, loss=loss)
