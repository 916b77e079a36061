"""One root seed, many independent streams.

A test's root seed is derived from a base seed (``--repro-seed``) and the test id, so it is stable
across machines and runs. ``seed_for(name)`` derives an independent stream per source of
randomness (numpy ``SeedSequence`` with a spawn key per name), so that perturbing one source --
``init``, ``data``, ``augment``, ``dropout`` -- leaves every other stream untouched. A
``SeedPlan`` may carry per-source *perturbations* (used by sensitivity sweeps): perturbing a
source changes its stream and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

if TYPE_CHECKING:
    import torch

DEFAULT_BASE_SEED = 0
#: Source whose stream seeds the global RNGs (random, numpy legacy, torch) before the test body.
GLOBAL_SOURCE = "global"
MAX_SEED = 2**63 - 1


#: How names become seed-sequence words. 2: 128-bit hashes; 1 (before 2026-11): 32-bit xxh32,
#: under which distinct names shared seeds (``source_23161`` and ``source_113779``).
SEED_SCHEME = 2


def _name_key(name: str, scheme: int = SEED_SCHEME) -> int:
    data = name.encode("utf-8", "surrogatepass")
    if scheme == 1:
        return xxhash.xxh32_intdigest(data)
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "little")


def root_seed_for_test(base_seed: int, test_id: str, *, scheme: int = SEED_SCHEME) -> int:
    """The stable root seed of one test: a function of the base seed and the test id only
    (``scheme=1`` gives the root seed older repro-check versions derived)."""
    sequence = np.random.SeedSequence([base_seed & (2**64 - 1), _name_key(test_id, scheme)])
    return int(sequence.generate_state(1, np.uint64)[0]) & MAX_SEED


def legacy_seed_note(test_id: Any, base_seed: Any, recorded_seed: Any, seed: int) -> str:
    """Why a stored root seed (a baseline's) differs from this run's when the base seed is the
    same: the older 32-bit derivation (``""`` when that is not the reason)."""
    if (
        not isinstance(test_id, str)
        or isinstance(base_seed, bool)
        or not isinstance(base_seed, int)
    ):
        return ""
    if recorded_seed != root_seed_for_test(base_seed, test_id, scheme=1):
        return ""
    if seed != root_seed_for_test(base_seed, test_id):
        return ""
    return (
        f"the root seed changed: the baseline was recorded by an older repro-check, which "
        f"derived seeds from 32-bit hashes of test ids and source names (distinct names could "
        f"share a seed); --repro-seed={base_seed} now gives root seed {seed}, not "
        f"{recorded_seed}, so every stream differs. Rewrite the baseline with --repro-update"
    )


def pairing_id(test_id: str, pair: str | None = None) -> str:
    """The id a sensitivity sweep derives a test's root seed from, so variants share seeds:
    ``pair:<name>`` for tests paired by name, else the test id without its parametrization
    suffix (``test_m[a]`` and ``test_m[b]`` -> ``test_m``): run k of every variant then
    draws the same seeds, and A/B comparisons are paired by construction."""
    if pair:
        return f"pair:{pair}"
    head, sep, name = test_id.rpartition("::")
    return head + sep + name.split("[", 1)[0]


def derive_seed(root_seed: int, name: str, perturbation: int = 0) -> int:
    """An independent 63-bit seed for stream ``name`` (and perturbation index) of ``root_seed``."""
    spawn_key = (_name_key(name),) if perturbation == 0 else (_name_key(name), perturbation)
    words = np.random.SeedSequence(root_seed, spawn_key=spawn_key).generate_state(2, np.uint64)
    return int(words[0]) & MAX_SEED


@dataclass(frozen=True)
class SeedPlan:
    """The root seed of a run and which sources, if any, are perturbed (and how)."""

    root: int
    perturbations: Mapping[str, int] = field(default_factory=dict)

    def seed_for(self, name: str) -> int:
        """The seed of source ``name``; ``"all"`` in perturbations perturbs every source."""
        perturbation = self.perturbations.get(name, self.perturbations.get("all", 0))
        return derive_seed(self.root, name, perturbation)

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "perturbations": dict(self.perturbations)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeedPlan:
        return cls(int(data["root"]), {str(k): int(v) for k, v in data["perturbations"].items()})


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, numpy's legacy global RNG and torch (CPU and every CUDA device)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device, lazily when CUDA initialises


@contextlib.contextmanager
def forked_global_rngs(seed: int) -> Iterator[None]:
    """Run a block with all global RNGs seeded from ``seed``; restore their states afterwards."""
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=_cuda_devices_if_initialized()):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _cuda_devices_if_initialized() -> list[int]:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker initialiser: seed ``random`` and numpy from the worker's torch seed.

    PyTorch seeds each worker's torch RNG from the loader's generator; Python's and numpy's
    global RNGs are left as forked copies of the parent's, so every worker would draw the same
    augmentations. This is PyTorch's documented recipe (notes/randomness.html).
    """
    import torch

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def seeded_generator(seed: int, device: str = "cpu") -> torch.Generator:
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
