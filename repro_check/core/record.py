"""Recording: turn what a training step passes to ``record(step, **state)`` into fingerprints.

State is flattened into dotted keys -- ``model.fc1.weight``, ``optimizer.state.3.exp_avg``,
``optimizer.param_groups.0.lr``, ``scheduler.last_epoch``, ``metric.loss``, ``rng.torch`` -- and
each tensor is fingerprinted (and, within a budget, spilled for detailed diffs). Only
fingerprints (and the values of scalar metrics) stay in memory.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repro_check.core.fingerprint import Fingerprint, fingerprint_with_bytes
from repro_check.core.spill import SpillRef, SpillWriter

SCALAR_PREFIX = "metric."
ACCEPTED = (
    "torch.nn.Module, torch.optim.Optimizer, LR scheduler, torch.Tensor, numpy array, "
    "int/float/bool, torch.Generator, repro.rng_state(), or a dict/list/tuple of these"
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One recorded value: its fingerprint, its value when scalar, where its bytes were spilled."""

    fingerprint: Fingerprint
    value: float | None = None
    spill: SpillRef | None = None

    def to_json(self) -> list[Any]:
        spill = [self.spill.offset, self.spill.nbytes] if self.spill else None
        value = self.value
        if value is not None and not np.isfinite(value):
            value = repr(value)  # JSON has no NaN/inf; keep them readable
        return [self.fingerprint.to_json(), value, spill]

    @classmethod
    def from_json(cls, data: list[Any], spill_path: str | None) -> Entry:
        fp, value, spill = data
        ref = SpillRef(spill_path, spill[0], spill[1]) if spill and spill_path else None
        return cls(Fingerprint.from_json(fp), None if value is None else float(value), ref)


@dataclass
class StepRecord:
    step: int
    entries: dict[str, Entry] = field(default_factory=dict)


@dataclass
class RunRecord:
    """Everything one replica recorded for one test, in recording order."""

    steps: list[StepRecord] = field(default_factory=list)
    bytes_fingerprinted: int = 0
    spill_path: str | None = None
    spill_exhausted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": [
                [s.step, [[k, *e.to_json()] for k, e in s.entries.items()]] for s in self.steps
            ],
            "bytes_fingerprinted": self.bytes_fingerprinted,
            "spill_path": self.spill_path,
            "spill_exhausted": self.spill_exhausted,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        path = data.get("spill_path")
        steps = [
            StepRecord(int(step), {row[0]: Entry.from_json(row[1:], path) for row in rows})
            for step, rows in data["steps"]
        ]
        return cls(steps, int(data["bytes_fingerprinted"]), path, bool(data["spill_exhausted"]))

    @property
    def keys(self) -> set[str]:
        return {key for step in self.steps for key in step.entries}


class RNGState:
    """A snapshot of the global RNG states, recordable as ``rng.python``, ``rng.numpy``, ..."""

    def __init__(self) -> None:
        import torch

        self.states: dict[str, Any] = {
            "python": _python_rng_tensor(random.getstate()),
            "numpy": _numpy_rng_tensor(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for index, state in enumerate(torch.cuda.get_rng_state_all()):
                self.states[f"cuda.{index}"] = state


def _python_rng_tensor(state: tuple[Any, ...]) -> Any:
    import torch

    version, internal, gauss = state
    return torch.tensor([version, *internal, 0 if gauss is None else 1], dtype=torch.int64)


def _numpy_rng_tensor(state: tuple[Any, ...]) -> Any:
    import torch

    _, keys, pos, has_gauss, cached = state
    head = np.array([pos, has_gauss], dtype=np.int64)
    return torch.from_numpy(np.concatenate([keys.astype(np.int64), head]))


def flatten_state(name: str, value: Any, *, top_level: bool = True) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted_key, tensor_or_number)`` for one keyword argument of ``record``."""
    import torch

    if isinstance(value, torch.Tensor):
        yield (SCALAR_PREFIX + name if top_level and value.dim() == 0 else name), value
    elif isinstance(value, (bool, int, float, complex, np.number, np.bool_)):
        yield (SCALAR_PREFIX + name if top_level else name), value
    elif isinstance(value, np.ndarray):
        array = np.require(value, requirements="C")  # keeps 0-d arrays 0-d
        yield from flatten_state(name, torch.from_numpy(array), top_level=top_level)
    elif isinstance(value, torch.nn.Module):
        for key, tensor in value.state_dict().items():
            yield f"{name}.{key}", tensor
    elif isinstance(value, torch.optim.Optimizer):
        yield from _flatten_optimizer(name, value.state_dict())
    elif isinstance(value, torch.optim.lr_scheduler.LRScheduler):
        yield from _flatten_numbers(name, value.state_dict())
    elif isinstance(value, torch.Generator):
        yield f"{name}", value.get_state()
    elif isinstance(value, RNGState):
        for key, state in value.states.items():
            yield f"rng.{key}", state
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from flatten_state(f"{name}.{key}", item, top_level=False)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from flatten_state(f"{name}.{index}", item, top_level=False)
    else:
        raise TypeError(
            f"repro.record(): cannot record {name!r} of type {type(value).__module__}."
            f"{type(value).__qualname__}; record accepts {ACCEPTED}"
        )


def _flatten_optimizer(name: str, state_dict: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for index, per_param in state_dict["state"].items():
        for key, item in per_param.items():
            yield from flatten_state(f"{name}.state.{index}.{key}", item, top_level=False)
    for index, group in enumerate(state_dict["param_groups"]):
        yield from _flatten_numbers(
            f"{name}.param_groups.{index}", {k: v for k, v in group.items() if k != "params"}
        )


def _flatten_numbers(name: str, mapping: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Flatten the numeric/tensor leaves of a state dict; skip callables, strings and None."""
    import torch

    for key, item in mapping.items():
        if isinstance(item, (bool, int, float, torch.Tensor)):
            yield from flatten_state(f"{name}.{key}", item, top_level=False)
        elif isinstance(item, (list, tuple)) and all(
            isinstance(x, (bool, int, float, torch.Tensor)) for x in item
        ):
            yield from flatten_state(f"{name}.{key}", item, top_level=False)
        elif isinstance(item, Mapping):
            yield from _flatten_numbers(f"{name}.{key}", item)


def as_tensor(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (bool, np.bool_)):
        return torch.tensor(bool(value), dtype=torch.bool)
    if isinstance(value, (int, np.integer)):
        return torch.tensor(int(value), dtype=torch.int64)
    if isinstance(value, (complex, np.complexfloating)):
        return torch.tensor(complex(value), dtype=torch.complex128)
    return torch.tensor(float(value), dtype=torch.float64)


class Recorder:
    """Fingerprints (and spills) what a replica records, step by step."""

    def __init__(self, spill: SpillWriter | None = None) -> None:
        self.run = RunRecord(
            spill_path=spill.path if spill else None,
            spill_exhausted=bool(spill and spill.exhausted),
        )
        self._spill = spill

    def record(self, step: int, state: Mapping[str, Any]) -> StepRecord:
        _check_step(step)
        record = StepRecord(int(step))
        for name, value in state.items():
            for key, leaf in flatten_state(name, value):
                if key in record.entries:
                    raise ValueError(
                        f"repro.record(step={step}): key {key!r} recorded twice in one step; "
                        f"give the values distinct names"
                    )
                record.entries[key] = self._entry(key, leaf)
        self.run.steps.append(record)
        return record

    def _entry(self, key: str, leaf: Any) -> Entry:
        tensor = as_tensor(leaf)
        fingerprint, data = fingerprint_with_bytes(tensor)
        self.run.bytes_fingerprinted += data.nbytes
        value = None
        if tensor.dim() == 0 and key.startswith(SCALAR_PREFIX):
            value = float((tensor.real if tensor.is_complex() else tensor).detach())
        spill = None
        if self._spill is not None:
            if not self._spill.exhausted:
                identity = (fingerprint.digest, fingerprint.dtype, fingerprint.shape)
                spill = self._spill.write(identity, data)
            self.run.spill_exhausted = self.run.spill_exhausted or self._spill.exhausted
        return Entry(fingerprint, value, spill)

    def close(self) -> RunRecord:
        if self._spill is not None:
            self._spill.flush()
            self._spill.close()
        return self.run


def check_recordable(step: Any, state: Mapping[str, Any]) -> None:
    """The cheap path of ``record`` when nothing is compared: type errors only, no hashing."""
    import torch

    _check_step(step)
    leaf_types = (
        torch.Tensor,
        torch.nn.Module,
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.LRScheduler,
        torch.Generator,
        RNGState,
        bool,
        int,
        float,
        complex,
        np.number,
        np.bool_,
        np.ndarray,
    )

    def check(name: str, value: Any) -> None:
        if isinstance(value, leaf_types):
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                check(f"{name}.{key}", item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                check(f"{name}.{index}", item)
        else:
            list(flatten_state(name, value))  # raises the TypeError naming key and type

    for name, value in state.items():
        check(name, value)


def _check_step(step: Any) -> None:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"repro.record(): step must be an int, got {type(step).__name__}")


class MetricRecorder:
    """Keeps only the scalar metrics of the last recorded step (sensitivity sweeps): memory
    and time stay flat however many runs a sweep makes."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def record(self, step: int, state: Mapping[str, Any]) -> None:
        _check_step(step)
        metrics = {}
        for name, value in state.items():
            for key, leaf in flatten_state(name, value):
                if key.startswith(SCALAR_PREFIX):
                    tensor = as_tensor(leaf).detach()
                    metrics[key] = float(tensor.real if tensor.is_complex() else tensor)
        self.metrics = metrics

    def close(self) -> dict[str, float]:
        return self.metrics
