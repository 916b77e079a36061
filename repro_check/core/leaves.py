"""What ``record()`` makes of values that are not plain tensors and numbers, and its checks.

:func:`plain_leaves` runs on the flattened ``(key, value)`` pairs of one ``record`` call and
hands the fingerprinting only strided tensors and numbers: a quantized tensor becomes its
integer representation plus its scale and zero point (so a change in either shows), a
``torch.dtype`` in a module's state its name, containers inside a module's state (e.g. what
``get_extra_state`` returned) their leaves; anything else is refused with its key. Tensors that
hold no plain bytes (meta, nested, sparse) are refused where fingerprinting fails
(:func:`explain_unrecordable`), so the common case pays nothing for them. Steps must increase
(:func:`check_step_order`): the replicas are compared step by step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

ACCEPTED = (
    "torch.nn.Module, torch.optim.Optimizer, LR scheduler, torch.Tensor, numpy array, "
    "int/float/bool, torch.Generator, repro.rng_state(), or a dict/list/tuple of these"
)
#: How record() flattens a nested value into dotted keys: ``flatten(key, value)``.
Flatten = Callable[[str, Any], Iterable[tuple[str, Any]]]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NUMBER_TYPES: tuple[type, ...] = (bool, int, float, complex)


def plain_leaves(leaves: list[tuple[str, Any]], flatten: Flatten) -> list[tuple[str, Any]]:
    """``leaves`` with every value a plain tensor or number (see the module docstring); the
    list itself when nothing needed changing. ``flatten`` expands nested containers found
    inside a module's state (record() passes its own flattening, so the two stay one rule)."""
    import numpy as np
    import torch

    changed: list[tuple[str, Any]] | None = None
    tensor, numbers = torch.Tensor, (*_NUMBER_TYPES, np.number, np.bool_)
    for position, (key, leaf) in enumerate(leaves):
        if isinstance(leaf, tensor):
            if not leaf.is_quantized:  # the common case: nothing to do
                if changed is not None:
                    changed.append((key, leaf))
                continue
            expanded = _quantized(key, leaf)
        elif isinstance(leaf, numbers):
            if type(leaf) is int and not INT64_MIN <= leaf <= INT64_MAX:
                raise ValueError(
                    f"repro.record(): {key!r} is the integer {leaf}, which does not fit in 64 "
                    f"bits; record it as a float, or split it into 64-bit parts"
                )
            expanded = None
        else:
            expanded = _other(key, leaf, flatten)
        if expanded is not None and changed is None:
            changed = leaves[:position]
        if changed is not None:
            changed += expanded if expanded is not None else [(key, leaf)]
    return leaves if changed is None else changed


def _quantized(key: str, tensor: Any) -> list[tuple[str, Any]]:
    """The integer representation under ``key``, and what maps it to real values beside it."""
    import torch

    parts = [(key, tensor.int_repr())]
    if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        parts += [
            (f"{key}.q_scale", torch.tensor(tensor.q_scale(), dtype=torch.float64)),
            (f"{key}.q_zero_point", torch.tensor(tensor.q_zero_point(), dtype=torch.int64)),
        ]
    else:
        parts += [
            (f"{key}.q_scales", tensor.q_per_channel_scales()),
            (f"{key}.q_zero_points", tensor.q_per_channel_zero_points()),
            (f"{key}.q_axis", torch.tensor(tensor.q_per_channel_axis(), dtype=torch.int64)),
        ]
    return parts


def _other(key: str, leaf: Any, flatten: Flatten) -> list[tuple[str, Any]]:
    """A value from inside a module's state that is neither a tensor nor a number."""
    import torch

    if isinstance(leaf, torch.dtype):  # e.g. a quantized module's packed-parameter dtype
        name = str(leaf).encode("ascii")
        return [(key, torch.frombuffer(bytearray(name), dtype=torch.uint8))]
    if isinstance(leaf, (Mapping, list, tuple)):
        return plain_leaves(list(flatten(key, leaf)), flatten)
    source = (
        " (what the module's get_extra_state() returned)" if key.endswith("_extra_state") else ""
    )
    raise TypeError(
        f"repro.record(): cannot record {key!r}{source}: a {type(leaf).__module__}."
        f"{type(leaf).__qualname__}; record accepts {ACCEPTED}"
    )


def module_leaves(out: list[tuple[str, Any]], name: str, module: Any) -> None:
    """Append ``(f"{name}.{key}", value)`` for each item of ``module.state_dict(keep_vars=True)``,
    in its order. The module tree is walked directly (``state_dict`` builds an ordered dict,
    its metadata and a call per submodule: most of flattening a model); where any module in it
    customises ``state_dict`` (hooks, overrides, extra state), ``state_dict`` itself runs."""
    if not _DEFAULTS:
        import torch

        base = torch.nn.Module
        _DEFAULTS.extend((base.state_dict, base._save_to_state_dict, base.get_extra_state))
    start = len(out)
    if not _walk_module(out, module, name + "."):
        del out[start:]
        state = module.state_dict(keep_vars=True)
        out += [(f"{name}.{key}", tensor) for key, tensor in state.items()]


#: Module.state_dict, Module._save_to_state_dict and Module.get_extra_state: what a module
#: whose state dict follows the default rules has (set on the first walk).
_DEFAULTS: list[Any] = []


def _walk_module(out: list[tuple[str, Any]], module: Any, prefix: str) -> bool:
    """What ``Module.state_dict(keep_vars=True)`` gives, appended to ``out``; False (and ``out``
    partly filled) where a module in the tree does not follow its default rules."""
    cls = type(module)
    own = module.__dict__
    try:
        if (
            cls.state_dict is not _DEFAULTS[0]
            or cls._save_to_state_dict is not _DEFAULTS[1]
            or cls.get_extra_state is not _DEFAULTS[2]
            or own["_state_dict_pre_hooks"]
            or own["_state_dict_hooks"]
            or "state_dict" in own
            or "_save_to_state_dict" in own
            or "get_extra_state" in own
        ):
            return False
        parameters, buffers = own["_parameters"], own["_buffers"]
        skip, children = own["_non_persistent_buffers_set"], own["_modules"]
    except KeyError:  # not set up by Module.__init__: let state_dict deal with it
        return False
    for key, value in parameters.items():
        if value is not None:
            out.append((prefix + key, value))
    if buffers:
        if parameters and not parameters.keys().isdisjoint(buffers):
            return False  # one key twice: state_dict keeps one of them
        for key, value in buffers.items():
            if value is not None and key not in skip:
                out.append((prefix + key, value))
    for key, child in children.items():
        if child is not None and not _walk_module(out, child, f"{prefix}{key}."):
            return False
    return True


def optimizer_state(optimizer: Any) -> Mapping[str, Any]:
    """``optimizer.state_dict()``, with the live ``param_groups`` (``params`` included, which
    the caller skips) rather than copies, when the optimizer customises nothing about it."""
    import torch

    pre = getattr(optimizer, "_optimizer_state_dict_pre_hooks", None)
    post = getattr(optimizer, "_optimizer_state_dict_post_hooks", None)
    if (
        pre is None
        or post is None
        or pre
        or post
        or type(optimizer).state_dict is not torch.optim.Optimizer.state_dict
        or "state_dict" in optimizer.__dict__
    ):
        return optimizer.state_dict()
    # Optimizer.state_dict's own numbering: a parameter's index in the first group holding it.
    index: dict[int, int] = {}
    start = 0
    for group in optimizer.param_groups:
        params = group["params"]
        index.update({id(p): i for i, p in enumerate(params, start) if id(p) not in index})
        start += len(params)
    tensor = torch.Tensor
    state = {(index[id(k)] if isinstance(k, tensor) else k): v for k, v in optimizer.state.items()}
    return {"state": state, "param_groups": optimizer.param_groups}


def explain_unrecordable(keys: Sequence[str], tensors: Sequence[Any]) -> TypeError | None:
    """Why fingerprinting one of ``tensors`` failed, naming its key (None: no tensor here is of
    a kind that cannot be fingerprinted, so the failure is something else)."""
    import torch

    for key, tensor in zip(keys, tensors, strict=True):
        if tensor.is_meta:
            why = "a meta tensor: it has a shape but no values to compare"
            fix = "record a tensor that holds data (build the model on a real device)"
        elif tensor.is_nested:
            why = "a nested tensor (no single shape)"
            fix = f"record its components ({key.split('.')[-1]}.unbind()) or a padded copy"
        elif tensor.layout is not torch.strided:
            why = f"a {tensor.layout} tensor"
            fix = "record .to_dense()"
        else:
            continue
        return TypeError(f"repro.record(): {key!r} is {why}; {fix}")
    return None


def drop_unset(value: Any) -> Any:
    """An optimizer's per-parameter state entry without the ``None`` placeholders some keep for
    what they have not filled yet (LBFGS): list positions keep their indices as keys."""
    if isinstance(value, (list, tuple)) and any(item is None for item in value):
        return {str(i): item for i, item in enumerate(value) if item is not None}
    return value


def check_step_order(previous: int | None, step: int) -> None:
    """Steps are recorded in increasing order, each once, from 0 up."""
    if step < 0:
        raise ValueError(f"repro.record(step={step}): steps must be >= 0")
    if previous is None or step > previous:
        return
    if step == previous:
        raise ValueError(
            f"repro.record(step={step}) after step {previous}: each step is recorded once; "
            f"pass every value of the step in one record() call"
        )
    raise ValueError(
        f"repro.record(step={step}) after step {previous}: steps must increase (the replicas "
        f"are compared step by step)"
    )
