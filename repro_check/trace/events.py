"""What a trace is made of: one :class:`OpEvent` per aten op, one :class:`TensorSig` per tensor.

Plain data, no torch at import: the parent process reads traces from files and diffs them
without tracing anything itself. Only :meth:`OpEvent.flag_dict` asks torch (for the op's schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["OpEvent", "TensorSig", "flag_names", "is_flag_type"]


class TensorSig(NamedTuple):
    """Fingerprint of one tensor seen by the tracer (a plain tuple: cheap to store).

    ``origin`` says where the tensor came from when it was an *input*: ``"traced"`` (an earlier
    traced op produced exactly this content: ``origin_event`` is that op's index), ``"external"``
    (no traced op produced it; ``origin_event`` is the event where this content was first seen)
    or ``"modified"`` (the same tensor object was produced by traced op ``origin_event`` but its
    content changed afterwards outside the dispatcher). Outputs have ``origin="traced"`` and
    ``origin_event`` = their own event. ``cls`` is the tensor subclass / layout name for
    anything that is not a plain strided tensor, else ``None``; ``hash`` is 0 when the content
    could not be read (meta tensors, exotic subclasses) and for ``cls="uninitialized"``: the
    output of ``aten::empty``-like ops (and views of it), and inputs that still hold those
    garbage bytes, whose content is meaningless and may differ between runs.
    """

    hash: int
    dtype: str
    shape: tuple[int, ...]
    origin: str = "traced"
    origin_event: int = -1
    cls: str | None = None

    @property
    def key(self) -> tuple[int, str, tuple[int, ...]]:
        """What identifies the content: (hash, dtype, shape)."""
        return (self.hash, self.dtype, self.shape)

    def describe(self) -> str:
        kind = f"{self.cls} " if self.cls else ""
        return f"{kind}{self.dtype}{list(self.shape)} #{self.hash:016x}"


@dataclass(slots=True, eq=False)
class OpEvent:
    """One aten op executed under :class:`~repro_check.trace.tracer.OpTracer`."""

    index: int
    op: str  # "aten::index_put_"
    overload: str  # "default", "Tensor", ...
    call_index: int  # how many times this op (by name) ran before in this trace
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    source: str  # "path/to/file.py:42 in func"
    module_path: str  # "encoder.layers.0.self_attn"; root: its class name; "" outside modules
    args_hash: int = 0  # xxh3 of the non-tensor arguments (numbers, sizes, flags, dtypes)
    rng_state: int | None = None  # random ops: hash of the generator state before the op
    flags: tuple[Any, ...] = ()  # values of the op's bool/int/str schema arguments, in order
    autograd_node: str | None = None  # backward ops: the autograd node running them
    forward_index: int = -1  # backward ops: the forward event that created that node
    requires_grad: bool = False  # forward ops: created an autograd node (will be differentiated)

    @property
    def is_backward(self) -> bool:
        return self.autograd_node is not None

    @property
    def qualname(self) -> str:
        return self.op if self.overload == "default" else f"{self.op}.{self.overload}"

    def flag_dict(self) -> dict[str, Any]:
        """``flags`` keyed by schema argument name (``{"accumulate": True}``)."""
        return dict(zip(flag_names(self.op, self.overload), self.flags, strict=False))

    def describe(self) -> str:
        where = f" in {self.module_path}" if self.module_path else ""
        return f"#{self.index} {self.qualname} (call {self.call_index}){where} at {self.source}"


_FLAG_TYPES = {"bool", "int", "str", "SymInt", "Optional[bool]", "Optional[int]", "Optional[str]"}


def is_flag_type(schema_type: Any) -> bool:
    """Is a schema argument of this type kept in ``OpEvent.flags`` (bool, int, str)?"""
    return str(schema_type) in _FLAG_TYPES


_flag_name_cache: dict[tuple[str, str], tuple[str, ...]] = {}


def flag_names(op: str, overload: str) -> tuple[str, ...]:
    """Names of the flag arguments of ``op.overload``, in schema order (torch's registry)."""
    key = (op, overload)
    names = _flag_name_cache.get(key)
    if names is None:
        names = ()
        try:
            import torch

            ns, _, name = op.partition("::")
            schema = getattr(getattr(getattr(torch.ops, ns), name), overload)._schema
            names = tuple(a.name for a in schema.arguments if is_flag_type(a.type))
        except Exception:  # an op this torch does not know (a trace from another version)
            pass
        _flag_name_cache[key] = names
    return names
