"""What the tracer knows about each op overload, and how it reads an op's arguments.

:class:`OpInfo` is computed once per op overload per process from its schema (which
arguments the op writes, which are flags, whether its output is a view, how its arguments
are laid out), so that the tracer's per-op work is a few attribute reads. Beside it: the hash
of the non-tensor arguments and of the generator state, and how the tracer's hook keeps
Dynamo out. No torch at import (the trace package is read without torch); the first op
imports it.
"""

from __future__ import annotations

import array
import operator
import re
import sys
from collections.abc import Callable
from typing import Any

import xxhash

from repro_check.trace.events import is_flag_type

__all__ = [
    "OP_INFO",
    "OpInfo",
    "arg",
    "flatten",
    "keep_dynamo_out",
    "op_info",
    "rng_hash",
    "scalars_hash",
]

# Ops whose output is uninitialised memory: their content is garbage, not a result.
_UNINIT_OPS = frozenset(
    {
        "aten::empty",
        "aten::empty_like",
        "aten::empty_strided",
        "aten::empty_permuted",
        "aten::new_empty",
        "aten::new_empty_strided",
    }
)
_INT_TYPE = re.compile(r"^(int|SymInt|bool|List\[int\]|List\[SymInt\])$")


def flatten(obj: Any, out: list[Any]) -> None:
    """Leaves of aten arguments / results: tensors, scalars, (nested) lists of them."""
    for o in obj if isinstance(obj, (list, tuple)) else (obj,):
        if isinstance(o, (list, tuple)):
            for p in o:  # aten's lists (int[], Tensor[]) hold leaves: one level inline
                if isinstance(p, (list, tuple)):
                    flatten(p, out)
                else:
                    out.append(p)
        else:
            out.append(o)


def arg(args: tuple, kwargs: dict, pos: int, name: str, kwarg_only: bool, default: Any) -> Any:
    """The argument at schema position ``pos`` (named ``name``), however it was passed."""
    if not kwarg_only and pos < len(args):
        return args[pos]
    return kwargs.get(name, default)


def _getter(positions: list[int]) -> Callable[[tuple], tuple] | None:
    """``args -> tuple(args[p] for p in positions)`` at C speed (None: no positions)."""
    if not positions:
        return None
    if len(positions) == 1:
        return operator.itemgetter(slice(positions[0], positions[0] + 1))  # a 1-tuple
    return operator.itemgetter(*positions)


class OpInfo:
    """One op overload as the tracer sees it."""

    __slots__ = (
        "op",
        "overload",
        "random",
        "mutated",
        "flag_pos",
        "uninit",
        "view",
        "out_names",
        "op_hash",
        "nested",
        "func",
        "call",
        "flag_last",
        "flags_of",
        "int_args",
        "writes_of",
        "write_last",
        "flag_values",
    )

    def __init__(self, func: Any) -> None:
        import torch

        self.func = func  # keeps id(func) from being reused while it keys OP_INFO
        # OpOverload.__call__ is a Python frame around this builtin: call the builtin
        self.call: Callable[..., Any] = getattr(func, "_op", func)
        schema = func._schema
        self.op: str = sys.intern(schema.name)
        self.overload: str = sys.intern(func._overloadname)
        self.random: bool = torch.Tag.nondeterministic_seeded in func.tags
        self.uninit: bool = self.op in _UNINIT_OPS
        self.op_hash = xxhash.xxh3_64_intdigest(f"{self.op}.{self.overload}".encode())
        # out= arguments are written, not read: their old content is not an input
        self.out_names = frozenset(
            a.name for a in schema.arguments if a.kwarg_only and getattr(a, "is_out", False)
        )
        # (position, name) of arguments the op writes to (in-place / out=): outputs too.
        mutated = []
        flags = []
        for i, a in enumerate(schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                mutated.append((i, a.name, a.kwarg_only))
            if is_flag_type(a.type):
                default = a.default_value if a.has_default_value() else None
                flags.append((i, a.name, a.kwarg_only, default))
        self.mutated = tuple(mutated)
        self.flag_pos = tuple(flags)
        self.flag_last = max((p for p, _n, ko, _d in flags if not ko), default=-1)
        if any(ko for _p, _n, ko, _d in flags):
            self.flag_last = len(schema.arguments)  # kwarg-only flags: always the slow way
        self.flags_of = _getter([p for p, _n, _ko, _d in flags])
        self.flag_values: dict[tuple, tuple] = {}  # interned flag tuples (events share them)
        # written arguments that are single tensors passed positionally (in-place ops): read
        # by position; lists (foreach ops) and out= arguments take the general way
        types = {a.name: str(a.type) for a in schema.arguments}
        simple = all(not ko and types[n] == "Tensor" for _p, n, ko in mutated)
        self.writes_of = _getter([p for p, _n, _ko in mutated]) if simple else None
        self.write_last = max((p for p, _n, _ko in mutated), default=-1)
        # list arguments (Tensor[], int[]) must be flattened; the others are read as they come
        self.nested = any(str(a.type).endswith("]") for a in schema.arguments)
        # one tensor argument and every other one an int or a bool (never None: views, mostly):
        # hashed as packed int64s. A second Tensor argument can arrive as a Python float.
        tensors = [a for a in schema.arguments if "Tensor" in str(a.type)]
        self.int_args = [str(a.type) for a in tensors] == ["Tensor"] and all(
            _INT_TYPE.match(str(getattr(a, "real_type", a.type)))
            for a in schema.arguments
            if a not in tensors
        )
        # a pure view: aliases its input and writes nothing, so its content needs no hash
        self.view: bool = bool(getattr(func, "is_view", False)) and not mutated

    def flags(self, args: tuple, kwargs: dict) -> tuple[Any, ...]:
        """The values of the op's flag arguments, in schema order (defaults filled in)."""
        if kwargs or len(args) <= self.flag_last:
            return tuple([arg(args, kwargs, p, n, ko, d) for p, n, ko, d in self.flag_pos])
        return self.flags_of(args)  # type: ignore[misc]  # every flag passed positionally

    def written(self, args: tuple, kwargs: dict) -> list[Any]:
        """The tensors the op writes in place (in-place and out= arguments), flattened."""
        if self.writes_of is not None and len(args) > self.write_last:
            return list(self.writes_of(args))
        out: list[Any] = []
        for pos, name, kwarg_only in self.mutated:
            flatten(arg(args, kwargs, pos, name, kwarg_only, None), out)
        return out


OP_INFO: dict[int, OpInfo] = {}  # id(OpOverload) -> info; the info holds the op alive


def op_info(func: Any) -> OpInfo:
    """The info of ``func`` (an ``OpOverload``), computed on first use. Keyed by id: an
    OpOverload's ``__hash__`` runs Python code."""
    info = OP_INFO.get(id(func))
    if info is None:
        info = OP_INFO[id(func)] = OpInfo(func)
    return info


_REPR_TYPES: frozenset[type] = frozenset()
_SCALAR_TYPES: tuple[type, ...] = ()


def _scalar_repr(x: Any) -> str:
    if type(x) in _REPR_TYPES or isinstance(x, _SCALAR_TYPES):
        return repr(x)
    return type(x).__name__  # Generator, SymInt, ...: the type only (no addresses)


def scalars_hash(info: OpInfo, scalars: list[Any]) -> int:
    """xxh3 of an op's non-tensor arguments (numbers, sizes, flags, dtypes): packed as int64s
    when the op takes only ints besides its tensor (a third of the cost of their text)."""
    global _REPR_TYPES, _SCALAR_TYPES
    packed: Any = None
    if info.int_args:
        try:
            packed = array.array("q", scalars)
        except (TypeError, OverflowError):  # beyond int64, or a value torch converts
            pass
    if packed is None:
        if not _SCALAR_TYPES:
            import torch

            _SCALAR_TYPES = (int, float, bool, complex, str, type(None), torch.dtype, torch.device)
            _REPR_TYPES = frozenset(_SCALAR_TYPES + (torch.layout, torch.memory_format))
        packed = "\x1f".join(map(_scalar_repr, scalars)).encode()
    return xxhash.xxh3_64_intdigest(packed)


def rng_hash(kwargs: dict, leaves: Any) -> int:
    """Hash of the state of the generator a random op will draw from (0: unreadable)."""
    import torch

    gen = kwargs.get("generator")
    if gen is None:
        gen = next((x for x in leaves if isinstance(x, torch.Generator)), None)
    if gen is None:
        device = kwargs.get("device")
        if device is None:
            device = next((x.device for x in leaves if isinstance(x, torch.Tensor)), None)
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cuda":
            idx = device.index if device.index is not None else torch.cuda.current_device()
            gen = torch.cuda.default_generators[idx]
        else:
            gen = torch.default_generator
    try:
        return xxhash.xxh3_64_intdigest(gen.get_state().numpy())
    except Exception:
        return 0


def keep_dynamo_out(fn: Any) -> Any:
    """``fn`` (a ``__torch_dispatch__``) with Dynamo kept out of it and of what it calls.

    torch does this by wrapping the method in ``torch._disable_dynamo`` (two Python frames and
    four eval-frame switches per op, ~0.6 µs: a sixth of any dispatch mode's cost, and the
    first op imports ``torch._dynamo``, ~1 s). Marking the code object "skip, recursively" is
    the same promise at no cost per op: a ``torch.compile``d function run under the tracer
    compiles nothing into the tracer, and its ops are traced eagerly. The wrapper remains the
    fallback where torch lacks the marking."""
    import torch

    try:
        from torch._C._dynamo.eval_frame import (
            _FrameAction,
            _FrameExecStrategy,
            set_code_exec_strategy,
        )

        skip = _FrameAction.SKIP
        set_code_exec_strategy(fn.__code__, _FrameExecStrategy(skip, skip))
        return fn
    except (ImportError, AttributeError, TypeError, RuntimeError):
        return torch._disable_dynamo(fn, recursive=True)
