"""What a resume-equivalence check saves, restores and compares (``repro.checkpoint`` and
``repro.restore``).

A test with ``@pytest.mark.repro(resume_at=k)`` runs three times: *straight* (to the end; at
``checkpoint(k)`` the harness notes the state), *stop* (saves a checkpoint at ``checkpoint(k)``
and stops there, as a killed job would) and, in a fresh process, *resume* (``restore()`` loads
that checkpoint into the live objects; the run continues to the end). A :class:`ResumeController`
does each role's part inside the test and leaves plain JSON in ``run_info["resume"]`` for the
parent, which decides (:mod:`repro_check.orchestration.resume`).

The checkpoint is the safetensors + JSON manifest format of :mod:`repro_check.core.checkpoint`
(no pickle). The global RNGs are stored losslessly (Python's cached gauss and numpy's cached
gaussian included), so a restored run draws exactly what the straight run drew.

"State" here is a fingerprint per dotted key (``optimizer.state.0.exp_avg``,
``scheduler.last_epoch``, ``rng.torch``, ``data.consumed``) of the objects the test passes to
``restore()`` and ``checkpoint()``, plus the global RNGs, always: what was not carried shows up as
a key that differs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.record import RNGState, as_tensor, flatten_state

if TYPE_CHECKING:
    import torch

ROLES = ("straight", "stop", "resume")
RNG_PREFIX = "rng."
PREVIEW_ELEMENTS = 8  # values shown for a small differing tensor ("0 after restore, 4 before")


class StopAtCheckpoint(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """Raised by ``repro.checkpoint(k)`` in the run that stops after step ``k``.

    A BaseException, so that a test's own ``except Exception`` does not swallow it; the worker
    reports the run as stopped where it was asked to stop.
    """


class ResumeError(ValueError):
    """A checkpoint that cannot be restored into what the test passed; the message names it."""


@dataclass(frozen=True)
class ResumePlan:
    """This run's part in a resume check: ``role``, the step ``at`` which it stops or resumes,
    and the checkpoint ``path`` (written by *stop*, read by *resume*)."""

    role: str
    at: int
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "at": self.at, "path": self.path}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResumePlan:
        role = str(data["role"])
        if role not in ROLES:
            raise ValueError(f"resume role {role!r}: expected one of {', '.join(ROLES)}")
        return cls(role, int(data["at"]), str(data.get("path", "")))


# ------------------------------------------------------------------ global RNGs, losslessly


def global_rng_tensors() -> dict[str, torch.Tensor]:
    """Every global RNG state as tensors, without loss: ``rng.python`` (+ its cached gauss),
    ``rng.numpy`` (+ cached gaussian), ``rng.torch`` and ``rng.cuda.<i>`` when CUDA is in use."""
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    if name != "MT19937":  # pragma: no cover - numpy's legacy global RNG is always MT19937
        raise ResumeError(f"numpy's global RNG is {name}, not MT19937; it cannot be saved")
    states = {
        "rng.python": torch.tensor([version, *internal], dtype=torch.int64),
        "rng.python_gauss": torch.tensor(
            [0.0 if gauss is None else 1.0, gauss or 0.0], dtype=torch.float64
        ),
        "rng.numpy": torch.from_numpy(
            np.concatenate([keys.astype(np.int64), np.array([pos, has_gauss], dtype=np.int64)])
        ),
        "rng.numpy_gauss": torch.tensor([float(cached)], dtype=torch.float64),
        "rng.torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{index}"] = state
    return states


def set_global_rngs(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Set the global RNGs from :func:`global_rng_tensors`' keys; returns the keys set."""
    import torch

    done = []
    if "rng.python" in tensors:
        values = [int(v) for v in tensors["rng.python"].tolist()]
        flag, gauss = tensors.get("rng.python_gauss", torch.zeros(2, dtype=torch.float64)).tolist()
        random.setstate((values[0], tuple(values[1:]), gauss if flag else None))
        done.append("rng.python")
    if "rng.numpy" in tensors:
        values = tensors["rng.numpy"].numpy()
        cached = float(tensors.get("rng.numpy_gauss", torch.zeros(1)).item())
        state = ("MT19937", values[:-2].astype(np.uint32), int(values[-2]), int(values[-1]), cached)
        np.random.set_state(state)
        done.append("rng.numpy")
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
        done.append("rng.torch")
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda:
        if not torch.cuda.is_available():
            raise ResumeError(
                f"the checkpoint carries CUDA RNG states ({', '.join(cuda)}) but CUDA is not "
                f"available here; resume on a machine with the same GPUs"
            )
        for key in cuda:
            torch.cuda.set_rng_state(tensors[key].to(torch.uint8), int(key.rsplit(".", 1)[1]))
        done += cuda
    return done


# ------------------------------------------------------------------ state fingerprints


def kind_of(value: Any) -> str:
    """What a named piece of state is, in the words the findings use."""
    import torch

    kinds = (
        (torch.nn.Module, "module"),
        (torch.optim.Optimizer, "optimizer"),
        (torch.optim.lr_scheduler.LRScheduler, "scheduler"),
        (torch.Generator, "generator"),
        (torch.Tensor, "tensor"),
        (RNGState, "rng"),
        (Mapping, "mapping"),
    )
    for cls, kind in kinds:
        if isinstance(value, cls):
            return kind
    try:  # GradScaler, EMA helpers... anything with a state_dict
        return "stateful" if callable(value.state_dict) else "value"
    except AttributeError:
        return "value"


def _leaves(name: str, value: Any) -> list[tuple[str, Any]]:
    if kind_of(value) == "stateful":  # e.g. torch.amp.GradScaler: its state_dict's numbers
        return list(flatten_state(name, dict(value.state_dict()), top_level=False))
    return list(flatten_state(name, value, top_level=False))


def state_tensors(objects: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The dotted-key tensors of ``objects`` (as ``repro.record`` flattens them); an RNGState
    stands for the global RNGs, stored losslessly under ``rng.*``."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in objects.items():
        if isinstance(value, RNGState):
            tensors.update(global_rng_tensors())
            continue
        for key, leaf in _leaves(name, value):
            tensors[key] = as_tensor(leaf).detach()
    return tensors


def probe(objects: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``key -> [digest, dtype, shape, preview]`` for ``objects`` and the global RNGs: the
    state compared between the straight run at step k and the resumed run after restore."""
    from repro_check.core.fingerprint import fingerprint_many

    tensors = {**state_tensors(objects), **global_rng_tensors()}
    batch = fingerprint_many(list(tensors.values()), count_nonfinite=False)
    out: dict[str, list[Any]] = {}
    for (key, tensor), fp in zip(tensors.items(), batch.fingerprints, strict=True):
        preview = None
        if tensor.numel() <= PREVIEW_ELEMENTS:
            preview = tensor.detach().cpu().reshape(-1).tolist()
        out[key] = [fp.digest, fp.dtype, list(fp.shape), preview]
    return out


# ------------------------------------------------------------------ saving and restoring


def save_state(path: str | Path, step: int, state: Mapping[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``state`` as a checkpoint (safetensors + manifest); returns the manifest's path."""
    from repro_check.core.checkpoint import save_checkpoint

    tensors = state_tensors(state)
    resume = {
        "step": step,
        "names": list(state),
        "kinds": {name: kind_of(value) for name, value in state.items()},
        "rng": any(isinstance(v, RNGState) for v in state.values()),
        "order": list(tensors),  # safetensors sorts its keys; state dicts keep this order
    }
    return save_checkpoint(Path(path), tensors, {**meta, "resume": resume})


def restore_state(path: str | Path, live: Mapping[str, Any]) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into the ``live`` objects it carries, and the global RNGs
    when it carries them. Returns what was restored, what ``live`` holds that the checkpoint
    does not carry (``missing``), and what it carries that ``live`` lacks (``not_given``)."""
    from repro_check.core.checkpoint import load_checkpoint

    file = Path(path).with_suffix(".safetensors")
    tensors, manifest = load_checkpoint(file)
    saved = manifest.get("resume") or {}
    names = [str(n) for n in saved.get("names", [])]
    carried = {n for n in names if n in live and kind_of(live[n]) != "rng"}
    missing = [n for n in live if n not in names and kind_of(live[n]) != "rng"]
    delegated = {}
    for name in sorted(carried, key=list(live).index):
        value = live[name]
        kind = kind_of(value)
        own = {k[len(name) + 1 :]: t for k, t in tensors.items() if k.startswith(name + ".")}
        if kind == "mapping":
            _fill_mapping(value, own, name, file)
        elif kind == "stateful":
            value.load_state_dict(_filled(dict(value.state_dict()), own, name, file))
        elif kind in ("module", "optimizer", "scheduler", "tensor", "generator"):
            delegated[name] = value
        else:
            raise ResumeError(
                f"{file}: cannot restore {name}= of type {type(value).__qualname__} in place; "
                f"put plain numbers in a dict (repro.restore(data=position_dict)), which is "
                f"restored in place"
            )
    if delegated:
        from repro_check.core.restore import CheckpointMismatch
        from repro_check.core.restore import load_checkpoint as load_into

        try:
            load_into(file, **delegated)
        except CheckpointMismatch as exc:
            raise ResumeError(str(exc)) from None
        for name, value in delegated.items():
            if kind_of(value) == "optimizer":
                _reorder_optimizer_state(value, name, saved.get("order", []))
    rng = set_global_rngs(tensors)
    return {
        "step": int(saved.get("step", -1)),
        "restored": [n for n in live if n in carried] + (["rng"] if rng else []),
        "missing": missing,
        "not_given": [n for n in names if n not in live and saved.get("kinds", {}).get(n) != "rng"],
        "rng": bool(rng),
        "kinds": dict(saved.get("kinds", {})),
    }


def _reorder_optimizer_state(optimizer: Any, name: str, order: list[str]) -> None:
    """Give the restored state the order it had when saved -- parameters, and each one's
    entries (``step``, ``exp_avg``, ...): a record lists keys in state-dict order, and the
    safetensors file keeps its own."""
    leaves: dict[int, list[str]] = {}
    prefix = f"{name}.state."
    for key in order:
        if key.startswith(prefix):
            index, _, leaf = key[len(prefix) :].partition(".")
            if index.isdigit() and leaf and "." not in leaf:
                leaves.setdefault(int(index), []).append(leaf)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = optimizer.state
    ordered = []
    for index, names in leaves.items():
        if index < len(params) and params[index] in state:
            entries = state[params[index]]
            ordered.append(
                (params[index], {**{k: entries[k] for k in names if k in entries}, **entries})
            )
    rest = [(p, entries) for p, entries in state.items() if all(p is not q for q, _ in ordered)]
    state.clear()
    for param, entries in ordered + rest:
        state[param] = entries


def _filled(template: Mapping[str, Any], saved: Mapping[str, Any], where: str, file: Path) -> dict:
    out = dict(template)
    _fill_mapping(out, saved, where, file)
    return out


def _fill_mapping(target: Any, saved: Mapping[str, Any], where: str, file: Path) -> None:
    """Restore a dict in place: tensors, numbers, generators and nested dicts, by key."""
    import torch

    for key, live in list(target.items()):
        name = f"{where}.{key}"
        sub = {k[len(str(key)) + 1 :]: t for k, t in saved.items() if k.startswith(f"{key}.")}
        if isinstance(live, Mapping):
            _fill_mapping(live, sub, name, file)
            continue
        if str(key) not in saved:
            raise ResumeError(f"{file}: {name} is not in the checkpoint")
        value = saved[str(key)]
        if isinstance(live, torch.Generator):
            live.set_state(value.to(torch.uint8))
        elif isinstance(live, torch.Tensor):
            if tuple(live.shape) != tuple(value.shape) or live.dtype != value.dtype:
                raise ResumeError(
                    f"{file}: {name}: {value.dtype} {tuple(value.shape)} in the checkpoint, "
                    f"{live.dtype} {tuple(live.shape)} here"
                )
            target[key] = value.clone().to(live.device)
        elif isinstance(live, (bool, int, float)):
            target[key] = type(live)(value.item())
        else:
            target[key] = value.clone()


# ------------------------------------------------------------------ the controller


class ResumeController:
    """One run's part in a resume check, driven by ``repro.checkpoint`` / ``repro.restore`` /
    ``repro.record``; findings go to ``info`` (the run's ``run_info["resume"]``)."""

    def __init__(self, plan: ResumePlan, info: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.plan = plan
        self.info = info
        self.info.update(plan.to_json())
        self.metadata = metadata
        self.live: dict[str, Any] = {}
        self._probe_next = False

    def restore(self, live: Mapping[str, Any]) -> int:
        """Register the live state; in the resumed run, load the checkpoint into it. Returns the
        first step to run: ``at + 1`` when resuming, else 0."""
        self.live = dict(live)
        self.info["kinds"] = {name: kind_of(value) for name, value in live.items()}
        if self.plan.role != "resume":
            return 0
        restored = restore_state(self.plan.path, self.live)
        self.info["restore"] = restored
        self.info["restored_state"] = probe(self.live)
        self._probe_next = True
        return self.plan.at + 1

    def checkpoint(self, step: int, state: Mapping[str, Any]) -> None:
        if int(step) != self.plan.at or self.plan.role == "resume":
            return
        self.info["checkpoint_kinds"] = {name: kind_of(value) for name, value in state.items()}
        if self.plan.role == "straight":
            self.info["state_at"] = probe({**self.live, **state})
            self.info["checkpoint_names"] = list(state)
            self._probe_next = True
            return
        manifest = save_state(self.plan.path, int(step), state, self.metadata)
        self.info["checkpoint"] = str(manifest)
        self.info["stopped"] = True
        raise StopAtCheckpoint(f"stopped after step {step} (resume check)")

    def on_record(self, step: int) -> None:
        """After the first step that follows the checkpoint: what that step left in the small
        state (generators, schedulers, dicts) and the global RNGs -- what it drew from them."""
        if not self._probe_next or int(step) <= self.plan.at:
            return
        self._probe_next = False
        small = {
            name: value
            for name, value in self.live.items()
            if kind_of(value) not in ("module", "optimizer", "tensor")
        }
        self.info["after_step"] = {"step": int(step), "state": probe(small)}
