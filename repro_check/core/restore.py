"""Restore a saved step (``pytest --repro --repro-save-checkpoints``) into live objects.

A checkpoint holds what the test passed to ``repro.record(step, **state)``, flattened into dotted
keys (``model.fc1.weight``, ``optimizer.state.0.exp_avg``, ``optimizer.param_groups.0.lr``,
``scheduler.last_epoch``). :func:`load_checkpoint` reverses that for the objects it is given, by
the same names: ``load_checkpoint(path, model=model, optimizer=opt)`` restores the keys the test
recorded as ``model=`` and ``optimizer=``. Nothing is unpickled (safetensors + a verified JSON
manifest), and every key, shape and dtype is checked before anything is written into an object,
so a mismatch is an error that names the key instead of a half-restored model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SHOWN_KEYS = 6  # keys listed in an error before "and N more"


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the object it is loaded into; the message names the key."""


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file for ``path``: a ``step-<n>.safetensors`` file or its ``.json``
    manifest; a replica folder (its last step); or a test folder (replica 0's last step)."""
    p = Path(path)
    if p.is_file() or p.suffix in (".safetensors", ".json"):
        return p.with_suffix(".safetensors")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such checkpoint file or folder")
    folder = p / "replica-0" if (p / "replica-0").is_dir() else p
    steps = [
        (int(m.group(1)), f)
        for f in folder.glob("step-*.safetensors")
        if (m := re.fullmatch(r"step-(\d+)\.safetensors", f.name))
    ]
    if not steps:
        raise FileNotFoundError(
            f"{p}: no checkpoint here; expected step-<n>.safetensors (+ .json) in a replica "
            f"folder, as written by pytest --repro --repro-save-checkpoints under "
            f"REPORT_DIR/checkpoints/<test file>/<test name>/replica-<i>/"
        )
    return max(steps)[1]


def load_checkpoint(path: str | os.PathLike[str], /, **objects: Any) -> dict[str, Any]:
    """Restore the objects recorded under these names from a checkpoint; return its manifest.

    ``load_checkpoint("reports/checkpoints/suites/test_mlp/test_mlp_adam/replica-0",
    model=model, optimizer=optimizer, scheduler=scheduler)`` restores modules (``load_state_dict``,
    strict), optimizers (state and hyperparameters), LR schedulers, tensors (in place) and
    ``torch.Generator`` states. Every object is checked first -- a missing or unexpected key, a
    shape or a dtype that differs raises :class:`CheckpointMismatch` naming the key -- and only
    then restored. The manifest says which test, replica, step and seeds the state comes from.
    """
    import torch

    from repro_check.core.checkpoint import load_checkpoint as load_verified

    if not objects:
        raise TypeError(
            "load_checkpoint(path, model=..., optimizer=...): name the objects to restore, by "
            "the names the test passed to repro.record()"
        )
    file = find_checkpoint(path)
    tensors, manifest = load_verified(file)
    # safetensors sorts its keys; "order" keeps the order they were recorded in (the state
    # dicts' order, e.g. Adam's step, exp_avg, exp_avg_sq): restore in that order.
    order = [k for k in manifest.get("order", []) if k in tensors]
    tensors = {**{k: tensors[k] for k in order}, **tensors}
    restorers = []
    for name, obj in objects.items():
        own = {k[len(name) + 1 :]: t for k, t in tensors.items() if k.startswith(name + ".")}
        if name in tensors:
            own[""] = tensors[name]
        elif f"metric.{name}" in tensors:
            own[""] = tensors[f"metric.{name}"]
        if not own:
            recorded = sorted({k.split(".")[0] for k in tensors if not k.startswith("metric.")})
            raise CheckpointMismatch(
                f"{file}: nothing was recorded as {name!r}; this checkpoint holds "
                f"{', '.join(recorded) or 'no objects'} (the names passed to repro.record)"
            )
        if isinstance(obj, torch.nn.Module):
            restorers.append(_module(obj, name, own, file))
        elif isinstance(obj, torch.optim.Optimizer):
            restorers.append(_optimizer(obj, name, own, file))
        elif isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
            restorers.append(_scheduler(obj, name, own, file))
        elif isinstance(obj, (torch.Tensor, torch.Generator)):
            restorers.append(_leaf(obj, name, own, file))
        else:
            raise TypeError(
                f"load_checkpoint: cannot restore {name}= of type {type(obj).__qualname__}; it "
                f"restores torch.nn.Module, torch.optim.Optimizer, LR schedulers, tensors and "
                f"torch.Generator objects"
            )
    for restore in restorers:  # every object was checked: now write into them
        restore()
    return manifest


def _listing(keys: list[str], prefix: str) -> str:
    shown = ", ".join(prefix + k for k in keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def _same_keys(file: Path, name: str, saved: Mapping[str, Any], live: Mapping[str, Any]) -> None:
    missing = [k for k in live if k not in saved]
    extra = [k for k in saved if k not in live]
    if missing:
        raise CheckpointMismatch(
            f"{file}: {_listing(missing, name + '.')} {'is' if len(missing) == 1 else 'are'} "
            f"in {name} but not in the checkpoint (a different architecture or class?)"
        )
    if extra:
        raise CheckpointMismatch(
            f"{file}: {_listing(extra, name + '.')} {'is' if len(extra) == 1 else 'are'} in "
            f"the checkpoint but not in {name} (a different architecture or class?)"
        )


def _same_tensor(file: Path, key: str, saved: torch.Tensor, live: torch.Tensor) -> None:
    if tuple(saved.shape) != tuple(live.shape):
        raise CheckpointMismatch(
            f"{file}: {key}: shape {tuple(saved.shape)} in the checkpoint, {tuple(live.shape)} here"
        )
    if saved.dtype != live.dtype:
        raise CheckpointMismatch(
            f"{file}: {key}: dtype {str(saved.dtype).removeprefix('torch.')} in the checkpoint, "
            f"{str(live.dtype).removeprefix('torch.')} here"
        )


def _module(module: Any, name: str, saved: dict[str, Any], file: Path) -> Any:
    live = module.state_dict()
    _same_keys(file, name, saved, live)
    for key, tensor in live.items():
        _same_tensor(file, f"{name}.{key}", saved[key], tensor)
    return lambda: module.load_state_dict(saved, strict=True)


def _number_like(saved: Any, live: Any) -> Any:
    """A value stored as a 0-d tensor, given back as the type the live object holds."""
    import torch

    if isinstance(live, torch.Tensor) or not isinstance(saved, torch.Tensor):
        return saved
    value = saved.item()
    return type(live)(value) if isinstance(live, (bool, int, float)) else value


def _fill(template: Mapping[str, Any], saved: dict[str, Any], key: str, file: Path) -> dict:
    """The numeric leaves of a state dict (``template``, from the live object) replaced by the
    checkpoint's; leaves repro.record() does not store (strings, None, callables) are kept."""
    import torch

    out: dict[str, Any] = {}
    for name, live in template.items():
        sub = {k[len(name) + 1 :]: v for k, v in saved.items() if k.startswith(f"{name}.")}
        if isinstance(live, (bool, int, float, torch.Tensor)):
            if name not in saved:
                raise CheckpointMismatch(f"{file}: {key}.{name} is not in the checkpoint")
            out[name] = _number_like(saved[name], live)
        elif isinstance(live, (list, tuple)) and all(
            isinstance(x, (bool, int, float, torch.Tensor)) for x in live
        ):
            if sorted(sub) != sorted(map(str, range(len(live)))):
                raise CheckpointMismatch(
                    f"{file}: {key}.{name} has {len(live)} entries here but {len(sub)} in the "
                    f"checkpoint"
                )
            out[name] = type(live)(_number_like(sub[str(i)], x) for i, x in enumerate(live))
        elif isinstance(live, Mapping):
            out[name] = _fill(live, sub, f"{key}.{name}", file)
        else:
            out[name] = live
    return out


def _optimizer(optimizer: Any, name: str, saved: dict[str, Any], file: Path) -> Any:
    live = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    groups: dict[int, dict[str, Any]] = {}
    for key, tensor in saved.items():
        part, _, rest = key.partition(".")
        index, _, leaf = rest.partition(".")
        if part not in ("state", "param_groups") or not index.isdigit() or not leaf:
            raise CheckpointMismatch(f"{file}: {name}.{key} is not an optimizer key")
        (state if part == "state" else groups).setdefault(int(index), {})[leaf] = tensor
    if sorted(groups) != list(range(len(live["param_groups"]))):
        raise CheckpointMismatch(
            f"{file}: {name} has {len(live['param_groups'])} parameter groups here but "
            f"{len(groups)} in the checkpoint"
        )
    for index, entries in state.items():
        where = f"{name}.state.{index}"
        if index >= len(params):
            raise CheckpointMismatch(
                f"{file}: {where}: the checkpoint has state for parameter {index}, but {name} "
                f"has {len(params)} parameters"
            )
        current = live["state"].get(index, {})
        for leaf, tensor in entries.items():
            if leaf in current and isinstance(current[leaf], type(tensor)):
                _same_tensor(file, f"{where}.{leaf}", tensor, current[leaf])
                entries[leaf] = _number_like(tensor, current[leaf])
            elif tensor.dim() == params[index].dim() and tensor.shape != params[index].shape:
                raise CheckpointMismatch(
                    f"{file}: {where}.{leaf}: shape {tuple(tensor.shape)} in the checkpoint, "
                    f"but parameter {index} has shape {tuple(params[index].shape)}"
                )
    param_groups = []
    for index, group in enumerate(live["param_groups"]):
        hyper = {k: v for k, v in group.items() if k != "params"}
        if "initial_lr" in groups[index]:  # set by an LR scheduler, maybe not created yet
            hyper.setdefault("initial_lr", 0.0)
        extra = sorted({k.split(".")[0] for k in groups[index]} - set(hyper))
        if extra:
            raise CheckpointMismatch(
                f"{file}: {_listing(extra, f'{name}.param_groups.{index}.')} in the checkpoint "
                f"but not in {name} (another optimizer class?)"
            )
        filled = _fill(hyper, groups[index], f"{name}.param_groups.{index}", file)
        param_groups.append({**filled, "params": group["params"]})

    def restore() -> None:
        try:
            optimizer.load_state_dict({"state": state, "param_groups": param_groups})
        except (ValueError, KeyError) as exc:
            raise CheckpointMismatch(f"{file}: {name}: {exc}") from None

    return restore


def _scheduler(scheduler: Any, name: str, saved: dict[str, Any], file: Path) -> Any:
    live = scheduler.state_dict()
    known = {k.split(".")[0] for k in saved}
    extra = sorted(known - set(live))
    if extra:
        raise CheckpointMismatch(
            f"{file}: {_listing(extra, name + '.')} in the checkpoint but not in {name} "
            f"(another scheduler class?)"
        )
    filled = _fill(live, saved, name, file)
    return lambda: scheduler.load_state_dict(filled)


def _leaf(obj: Any, name: str, saved: dict[str, Any], file: Path) -> Any:
    import torch

    if "" not in saved:
        raise CheckpointMismatch(
            f"{file}: {name} was recorded as a collection ({_listing(sorted(saved), name + '.')})"
            f", not as one {type(obj).__name__}"
        )
    value = saved[""]
    if isinstance(obj, torch.Generator):
        _same_tensor(file, name, value, obj.get_state())
        return lambda: obj.set_state(value)
    _same_tensor(file, name, value, obj)

    def restore() -> None:
        with torch.no_grad():
            obj.copy_(value)

    return restore
