"""Recording: turn what a training step passes to ``record(step, **state)`` into fingerprints.

State is flattened into dotted keys -- ``model.fc1.weight``, ``optimizer.state.3.exp_avg``,
``optimizer.param_groups.0.lr``, ``scheduler.last_epoch``, ``metric.loss``, ``rng.torch`` -- and
every tensor of one record is fingerprinted in one batched pass (digests, NaN/inf counts and
statistics; :func:`repro_check.core.fingerprint.fingerprint_many`), then, within a budget,
spilled for detailed diffs. Only fingerprints (and the values of scalar metrics) stay in memory.
Python numbers (optimizer hyper-parameters) are fingerprinted without making tensors of them.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repro_check.core.atomic import decode_float, encode_float
from repro_check.core.fingerprint import (
    Fingerprint,
    FingerprintBatch,
    fingerprint_many,
    fingerprint_scalar,
    frozen_constructor,
)
from repro_check.core.leaves import (
    ACCEPTED,
    drop_unset,
    explain_unrecordable,
    module_leaves,
    optimizer_state,
    plain_leaves,
)
from repro_check.core.spill import SpillRef, SpillWriter

SCALAR_PREFIX = "metric."
_PLAIN_NUMBERS = frozenset((float, int, bool))


@dataclass(frozen=True, slots=True)
class Entry:
    """One recorded value: its fingerprint, its value when scalar, where its bytes were spilled."""

    fingerprint: Fingerprint
    value: float | None = None
    spill: SpillRef | None = None

    def to_json(self) -> list[Any]:
        spill = [self.spill.offset, self.spill.nbytes] if self.spill else None
        value = None if self.value is None else encode_float(self.value)
        return [self.fingerprint.to_json(), value, spill]

    @classmethod
    def from_json(cls, data: list[Any], spill_path: str | None) -> Entry:
        fp, value, spill = data
        ref = SpillRef(spill_path, spill[0], spill[1]) if spill and spill_path else None
        value = None if value is None else decode_float(value)
        return cls(Fingerprint.from_json(fp), value, ref)


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
    out: list[tuple[str, Any]] = []
    _flatten(out, name, value, top_level)
    yield from out


def flatten_leaves(state: Mapping[str, Any], *, live: bool = False) -> list[tuple[str, Any]]:
    """``(dotted_key, tensor_or_number)`` for everything one ``record`` call was given.
    ``live``: modules give their parameters themselves rather than detached views (cheaper,
    for callers that only read them without autograd)."""
    out: list[tuple[str, Any]] = []
    for name, value in state.items():
        _flatten(out, name, value, True, live)
    return out


def _flatten(
    out: list[tuple[str, Any]], name: str, value: Any, top_level: bool, live: bool = False
) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        out.append((SCALAR_PREFIX + name if top_level and value.dim() == 0 else name, value))
    elif isinstance(value, (bool, int, float, complex, np.number, np.bool_)):
        out.append((SCALAR_PREFIX + name if top_level else name, value))
    elif isinstance(value, np.ndarray):
        array = np.require(value, requirements="C")  # keeps 0-d arrays 0-d
        _flatten(out, name, torch.from_numpy(array), top_level, live)
    elif isinstance(value, torch.nn.Module):
        if live:
            module_leaves(out, name, value)
        else:
            state = value.state_dict(keep_vars=False)
            out += [(f"{name}.{key}", tensor) for key, tensor in state.items()]
    elif isinstance(value, torch.optim.Optimizer):
        _flatten_optimizer(out, name, optimizer_state(value))
    elif isinstance(value, torch.optim.lr_scheduler.LRScheduler):
        _flatten_numbers(out, name, value.state_dict())
    elif isinstance(value, torch.Generator):
        out.append((name, value.get_state()))
    elif isinstance(value, RNGState):
        out += [(f"rng.{key}", state) for key, state in value.states.items()]
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(out, f"{name}.{key}", item, False, live)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _flatten(out, f"{name}.{index}", item, False, live)
    else:
        raise TypeError(
            f"repro.record(): cannot record {name!r} of type {type(value).__module__}."
            f"{type(value).__qualname__}; record accepts {ACCEPTED}"
        )


def _flatten_optimizer(
    out: list[tuple[str, Any]], name: str, state_dict: Mapping[str, Any]
) -> None:
    import torch

    tensor = torch.Tensor
    for index, per_param in state_dict["state"].items():
        head = f"{name}.state.{index}."
        for key, item in per_param.items():
            if type(item) is tensor:  # the usual case, without the dispatch of _flatten
                out.append((f"{head}{key}", item))
            elif item is not None:  # LBFGS keeps what it has not filled yet as None
                _flatten(out, f"{head}{key}", drop_unset(item), False)
    for index, group in enumerate(state_dict["param_groups"]):
        _flatten_numbers(out, f"{name}.param_groups.{index}", group, skip="params")


def _flatten_numbers(
    out: list[tuple[str, Any]], name: str, mapping: Mapping[str, Any], skip: str | None = None
) -> None:
    """Flatten the numeric/tensor leaves of a state dict (but the key ``skip``); skip callables,
    strings and None."""
    import torch

    for key, item in mapping.items():
        if key == skip:
            continue
        if type(item) in _PLAIN_NUMBERS:  # the usual case, without the dispatch of _flatten
            out.append((f"{name}.{key}", item))
        elif isinstance(item, (bool, int, float, torch.Tensor)):
            _flatten(out, f"{name}.{key}", item, False)
        elif isinstance(item, (list, tuple)) and all(
            isinstance(x, (bool, int, float, torch.Tensor)) for x in item
        ):
            _flatten(out, f"{name}.{key}", item, False)
        elif isinstance(item, Mapping):
            _flatten_numbers(out, f"{name}.{key}", item)


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
        import torch

        _check_step(step)
        leaves = plain_leaves(flatten_leaves(state, live=True), _flatten_nested)
        keys = [key for key, _ in leaves]
        if len(set(keys)) != len(keys):
            # Names with dots, set behind register_parameter's back, can make the direct walk
            # of a module repeat a key that state_dict keeps once: flatten as state_dict does.
            leaves = plain_leaves(flatten_leaves(state), _flatten_nested)
            keys = [key for key, _ in leaves]
            if len(set(keys)) != len(keys):
                _raise_duplicate(step, keys)
        count = len(keys)
        # Scalars are fingerprinted here; tensors, all at once below.
        fingerprints: list[Any] = [None] * count
        scalar_bytes: list[bytes | None] = [None] * count
        sizes = [0] * count  # bytes fingerprinted, per key
        positions, tensors = [], []
        tensor_type = torch.Tensor
        for position, (_, leaf) in enumerate(leaves):
            if isinstance(leaf, tensor_type):
                positions.append(position)
                tensors.append(leaf)
                continue
            scalar = fingerprint_scalar(leaf)
            if scalar is None:  # complex numbers, and whatever as_tensor makes of the rest
                positions.append(position)
                tensors.append(as_tensor(leaf))
            else:
                fingerprints[position], data = scalar
                scalar_bytes[position] = data
                sizes[position] = len(data)
        try:
            batch = fingerprint_many(tensors)
        except (TypeError, ValueError, RuntimeError, NotImplementedError):
            explained = explain_unrecordable([keys[p] for p in positions], tensors)
            if explained is None:
                raise
            raise explained from None
        for position, fp, nbytes in zip(positions, batch.fingerprints, batch.nbytes, strict=True):
            fingerprints[position] = fp
            sizes[position] = nbytes
        self.run.bytes_fingerprinted += sum(sizes)
        refs: list[SpillRef | None] = [None] * count
        if self._spill is not None:
            refs = self._spill_all(fingerprints, sizes, scalar_bytes, positions, batch)
        values: list[float | None] = [None] * count
        for position in [p for p, key in enumerate(keys) if key.startswith(SCALAR_PREFIX)]:
            if not fingerprints[position].shape:
                values[position] = _metric_value(leaves[position][1], fingerprints[position])
        entries = map(_new_entry, fingerprints, values, refs)
        record = StepRecord(int(step), dict(zip(keys, entries, strict=True)))
        self.run.steps.append(record)
        return record

    def _spill_all(
        self,
        fingerprints: list[Fingerprint],
        sizes: list[int],
        scalar_bytes: list[bytes | None],
        positions: list[int],
        batch: FingerprintBatch,
    ) -> list[SpillRef | None]:
        """Reserve every new tensor's place in the spill file, in key order, until the budget
        runs out; then hand over their bytes (a device's cross to the host only here): the
        places, per key."""
        spill = self._spill
        assert spill is not None
        if spill.exhausted:
            self.run.spill_exhausted = True
            return [None] * len(fingerprints)
        refs, fresh = spill.reserve_many(list(map(_SPILL_KEY, fingerprints)), sizes)
        self.run.spill_exhausted = self.run.spill_exhausted or spill.exhausted
        if not fresh:
            return refs
        in_batch = dict(zip(positions, range(len(positions)), strict=True))
        indices = list(map(in_batch.get, fresh))
        if None in indices:  # numbers among them (a hyper-parameter's new value, say)
            spill.put([(refs[p], scalar_bytes[p], False) for p in fresh if p not in in_batch])
            fresh = [p for p in fresh if p in in_batch]
            indices = list(map(in_batch.__getitem__, fresh))
        batch_refs = list(map(refs.__getitem__, fresh))
        spill.put_spans(batch_refs, batch.host_spans(indices))  # type: ignore[arg-type]
        return refs

    def close(self) -> RunRecord:
        if self._spill is not None:
            self._spill.flush()
            self._spill.close()
        return self.run


_new_entry = frozen_constructor(Entry)
#: What the spill file de-duplicates by: (digest, dtype, shape).
_SPILL_KEY = operator.attrgetter("digest", "dtype", "shape")


def _raise_duplicate(step: int, keys: list[str]) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(
                f"repro.record(step={step}): key {key!r} recorded twice in one step; "
                f"give the values distinct names"
            )
        seen.add(key)


def _metric_value(leaf: Any, fp: Fingerprint) -> float:
    """The value of a 0-d metric: the real part for complex values."""
    import torch

    if fp.stats is not None:  # the element itself, as float64 (real part first if complex)
        return fp.stats.sample[0]
    if isinstance(leaf, torch.Tensor):
        return float((leaf.real if leaf.is_complex() else leaf).detach())
    return float(leaf.real if isinstance(leaf, (complex, np.complexfloating)) else leaf)


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


def _flatten_nested(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    """Nested containers inside a module's state flatten like record()'s own arguments."""
    return flatten_state(key, value, top_level=False)
