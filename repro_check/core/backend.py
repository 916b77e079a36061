"""A variant's in-process settings, applied in the worker before a test body runs.

Settings read at import time (``ATEN_CPU_CAPABILITY``, ``OMP_NUM_THREADS``) travel in the
worker's environment instead; see :mod:`repro_check.orchestration.variants`.

Running a test "in float64" or "on CUDA" must not change *which* random numbers it draws, or the
comparison with the reference would compare two different initialisations. PyTorch draws
differently per dtype (``uniform_`` takes 24 random bits for float32 and 53 for float64;
``normal_`` and ``randn`` consume the stream differently) and per device (CUDA uses Philox). So
:class:`ReferenceRNG` -- a TorchDispatchMode -- makes every random op draw as the float32 CPU
reference would (float32, on the CPU, with the same generator) and only then casts to float64 or
moves to the device. The float64 run then starts from exactly the reference's weights, data and
dropout masks, and differs from it only by rounding: the yardstick of the float64 rule.

This module never imports pytest; torch is imported when a setting is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["apply_settings"]


def apply_settings(settings: Mapping[str, Any] | None) -> Callable[[], None]:
    """Apply ``settings`` (``mkldnn``, ``deterministic``, ``tf32``, ``float64``, ``device``,
    ``compile``) in this process; returns the function that undoes them."""
    if not settings:
        return lambda: None
    import torch

    undo: list[Callable[[], None]] = []
    try:
        if "mkldnn" in settings:
            previous = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = bool(settings["mkldnn"])
            undo.append(lambda: setattr(torch.backends.mkldnn, "enabled", previous))
        if settings.get("deterministic"):
            from repro_check.core.determinism import enable_deterministic_mode

            undo.append(enable_deterministic_mode())
        if "tf32" in settings:
            undo.append(_set_tf32(torch, bool(settings["tf32"])))
        float64 = bool(settings.get("float64"))
        device = settings.get("device")
        if float64:
            dtype = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            undo.append(lambda: torch.set_default_dtype(dtype))
        if device:
            previous_device = torch.get_default_device()
            torch.set_default_device(device)
            undo.append(lambda: torch.set_default_device(previous_device))
        if float64 or device:
            for mode_class in _modes(torch):
                mode = mode_class(float64=float64, device=device)
                mode.__enter__()
                undo.append(lambda mode=mode: mode.__exit__(None, None, None))
        if settings.get("compile"):
            undo.append(_compile_top_level_modules(torch))
    except BaseException:
        _undo_all(undo)
        raise
    return lambda: _undo_all(undo)


def _undo_all(undo: list[Callable[[], None]]) -> None:
    while undo:
        undo.pop()()


def _set_tf32(torch: Any, on: bool) -> Callable[[], None]:
    previous = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")

    def restore() -> None:
        torch.backends.cuda.matmul.allow_tf32 = previous[0]
        torch.backends.cudnn.allow_tf32 = previous[1]
        torch.set_float32_matmul_precision(previous[2])

    return restore


#: Factories that make floating tensors of the default dtype when no dtype is given.
_FLOAT_FACTORIES = frozenset({"aten::randn", "aten::rand", "aten::normal"})


def _modes(torch: Any) -> tuple[type, type]:
    """The two mode classes (built lazily: their base classes live in torch): random numbers
    drawn as the reference draws them (dispatch level), and operands unified (function level,
    before PyTorch's own dtype/device checks, e.g. conv2d's)."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves, tree_map

    seeded = torch.Tag.nondeterministic_seeded
    low_precision = (torch.float32, torch.float16, torch.bfloat16)

    def unify(args: tuple, kwargs: dict, float64: bool, target: Any) -> tuple[tuple, dict]:
        """Mixed operands as a float64 or GPU port of the code would pass them: lower-precision
        floats next to float64 ones upcast, CPU tensors next to ``target`` ones moved."""
        tensors = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        if len(tensors) < 2:
            return args, kwargs
        floats = {t.dtype for t in tensors if t.is_floating_point()}
        upcast = float64 and torch.float64 in floats and bool(floats & set(low_precision))
        move = target is not None and any(t.device.type == target.type for t in tensors)
        if not (upcast or move):
            return args, kwargs

        def fix(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            if upcast and x.dtype in low_precision and x.dim() > 0:
                x = x.to(torch.float64)
            if move and x.device.type == "cpu" and x.dim() > 0:
                x = x.to(target)
            return x

        return tree_map(fix, (args, kwargs))

    class Unify(TorchFunctionMode):
        """``unify`` for every torch function that creates new tensors (not in-place ones)."""

        def __init__(self, *, float64: bool, device: str | None) -> None:
            super().__init__()
            self.float64 = float64
            self.device = torch.device(device) if device else None

        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            mutates = (
                (name.endswith("_") and not name.endswith("__"))
                or name.startswith(("__i", "__set"))
                or "out" in kwargs
            )
            if not mutates:
                args, kwargs = unify(args, kwargs, self.float64, self.device)
            return func(*args, **kwargs)

    class ReferenceRNG(TorchDispatchMode):
        """Random ops draw as the float32 CPU reference would; mixed operands are unified.

        * A random op whose result would be float64 or on ``device`` runs in float32 on the CPU
          (same generator, same stream position) and its result is cast/moved afterwards. An op
          given a generator of another device runs as it is (it cannot draw on the CPU).
        * A non-mutating op that mixes float64 with lower-precision floating tensors (code that
          calls ``.float()`` on data) gets its lower-precision operands upcast, and one that
          mixes ``device`` tensors with CPU tensors gets the CPU ones moved, as a float64 or GPU
          port of the code would do.
        """

        def __init__(self, *, float64: bool, device: str | None) -> None:
            super().__init__()
            self.float64 = float64
            self.device = torch.device(device) if device else None

        def _to_reference(self, x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            if self.float64 and x.dtype == torch.float64:
                x = x.to(torch.float32)
            return x.cpu() if self.device is not None else x

        def _from_reference(self, x: Any, device: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            if self.float64 and x.dtype == torch.float32:
                x = x.to(torch.float64)
            return x.to(device) if device is not None and x.device != device else x

        def _moves(self, device: Any) -> bool:
            return self.device is not None and device is not None and device.type != "cpu"

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
            kwargs = kwargs or {}
            if seeded in func.tags:
                return self._random(func, args, kwargs)
            if not func._schema.is_mutable:
                args = self._unify(args)
            return func(*args, **kwargs)

        def _random(self, func: Any, args: tuple, kwargs: dict) -> Any:
            generator = kwargs.get("generator")
            if generator is None:
                generator = next((a for a in args if isinstance(a, torch.Generator)), None)
            if self.device is not None and generator is not None and generator.device.type != "cpu":
                return func(*args, **kwargs)
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if func._schema.is_mutable and tensors:  # normal_, uniform_, bernoulli_, ...
                target = args[0]
                wide = self.float64 and target.dtype == torch.float64
                if not (wide or self._moves(target.device)):
                    return func(*args, **kwargs)
                scratch = torch.empty(
                    target.shape, dtype=torch.float32 if wide else target.dtype, device="cpu"
                )
                rest = tree_map(self._to_reference, (args[1:], kwargs))
                func(scratch, *rest[0], **rest[1])
                target.copy_(scratch)
                return target
            if not tensors:  # randn, rand, randint, randperm, normal(size=...), ...
                dtype = kwargs.get("dtype")
                name = func._schema.name
                wide = self.float64 and (
                    dtype == torch.float64
                    or (
                        dtype is None
                        and name in _FLOAT_FACTORIES
                        and torch.get_default_dtype() == torch.float64
                    )
                )
                device = kwargs.get("device")
                device = torch.device(device) if device is not None else None
                moved = self._moves(device)
                if not (wide or moved):
                    return func(*args, **kwargs)
                changed = dict(kwargs)
                if wide:
                    changed["dtype"] = torch.float32
                if moved:
                    changed["device"] = torch.device("cpu")
                out = func(*args, **changed)
                return tree_map(lambda x: self._from_reference(x, device), out)
            # bernoulli(p), rand_like, multinomial, native_dropout, ...: inputs to the reference
            device = tensors[0].device
            wide = self.float64 and any(t.dtype == torch.float64 for t in tensors)
            if not (wide or self._moves(device)):
                return func(*args, **kwargs)
            ref_args, ref_kwargs = tree_map(self._to_reference, (args, kwargs))
            out = func(*ref_args, **ref_kwargs)
            return tree_map(lambda x: self._from_reference(x, device), out)

        def _unify(self, args: tuple) -> tuple:
            return unify(args, {}, self.float64, self.device)[0]

    return ReferenceRNG, Unify


def _compile_top_level_modules(torch: Any) -> Callable[[], None]:
    """``torch.compile`` every module the test calls from its own code (not from inside another
    module), from that module's second call on: the first call, during which the module is
    found, runs eagerly. Returns the function that removes the hooks."""
    from torch.nn.modules import module as nn_module

    depth = [0]
    compiled: set[int] = set()

    def before(module: Any, args: Any) -> None:
        if torch.compiler.is_compiling():
            return
        if depth[0] == 0 and id(module) not in compiled:
            compiled.add(id(module))
            module.forward = torch.compile(module.forward)
        depth[0] += 1

    def after(module: Any, args: Any, output: Any) -> None:
        if not torch.compiler.is_compiling():
            depth[0] = max(0, depth[0] - 1)

    hooks = [
        nn_module.register_module_forward_pre_hook(before),
        nn_module.register_module_forward_hook(after, always_call=True),
    ]

    def remove() -> None:
        for hook in hooks:
            hook.remove()

    return remove
