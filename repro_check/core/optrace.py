"""Aten-op tracer: record every op a run executes, then find where two runs first part.

``OpTracer`` is a :class:`~torch.utils._python_dispatch.TorchDispatchMode`: every aten op that
goes through the dispatcher inside its ``with`` block (forward *and* backward, since the CPU
autograd engine runs backward in the calling thread under the same mode) becomes one
:class:`OpEvent` holding

* the op (``aten::index_put_``) and overload, and how many times it ran before (``call_index``);
* fingerprints (xxh3-64 of the raw bytes + dtype + shape) of its tensor inputs, taken *before*
  the op runs, and of its outputs, taken *after* (for in-place / ``out=`` ops the mutated
  arguments are the outputs; for views the output's content);
* for each input, where it came from: produced by an earlier traced op (``origin="traced"``),
  never produced by a traced op (``"external"``: ``torch.from_numpy``, a DataLoader batch, a
  parameter created before tracing began) or produced by a traced op and changed afterwards by
  code the dispatcher did not see (``"modified"``);
* a hash of the non-tensor arguments (Python numbers, sizes, flags), and for random ops
  (tag ``nondeterministic_seeded``) a hash of the generator state before the op;
* the user's source line (innermost frame outside torch, repro_check and the standard library)
  and the module path (``encoder.layers.0.self_attn``) from global forward hooks;
* for backward ops, the autograd node that ran them and the forward event that created that
  node (linked through autograd sequence numbers), so a backward kernel can be blamed on the
  forward line that called it.

:func:`diff_traces` walks two traces in order and classifies the *first* difference
("nondeterministic-op", "external-input", "structural" or "identical"). Tracing does not change
numerics: the mode calls each op exactly as it was called and only reads the results.

This module never imports pytest.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import xxhash
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "DETERMINISTIC_ALTERNATIVES",
    "OpEvent",
    "OpTracer",
    "OutputComparison",
    "TensorSig",
    "TraceDiff",
    "compare_event_outputs",
    "diff_traces",
    "replay_divergence",
]

# Default cap on recorded events. Measured ~750 bytes per event (the event, its fingerprints
# and the tracer's lookup tables) on a Transformer training step, so ~190 MB at the cap:
# ~400 training steps of a 600-op model. Raise it (or pass None) for longer traces.
DEFAULT_MAX_EVENTS = 250_000


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
    """One aten op executed under :class:`OpTracer`."""

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
        return dict(zip(_flag_names(self.op, self.overload), self.flags, strict=False))

    def describe(self) -> str:
        where = f" in {self.module_path}" if self.module_path else ""
        return f"#{self.index} {self.qualname} (call {self.call_index}){where} at {self.source}"


# --------------------------------------------------------------------------------------------
# hashing and small helpers

_NUMPY_DTYPES = {
    torch.float32,
    torch.float64,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.complex128,
}
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
# dtypes hashed through a zero-copy numpy view (complex goes the slow way: conj/neg bits)
_FAST_DTYPES = {d: str(d).replace("torch.", "") for d in _NUMPY_DTYPES if not d.is_complex}
_DTYPE_NAMES: dict[Any, str] = {}


def _dtype_name(dtype: Any) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = sys.intern(str(dtype).replace("torch.", ""))
    return name


def _content_hash(t: torch.Tensor) -> tuple[int, str | None]:
    """xxh3-64 of the tensor's raw bytes (row-major), and a class/layout label if not plain.

    Private on purpose: ``repro_check.core.fingerprint`` is the public fingerprint; this copy
    keeps the tracer free of that dependency (to be de-duplicated).
    """
    label = None if type(t) in _PLAIN_TYPES else type(t).__name__
    try:
        if t.layout != torch.strided:
            layout = str(t.layout).replace("torch.", "")
            if t.layout == torch.sparse_coo:
                t = t.coalesce()
                h = xxhash.xxh3_64()
                for part in (t._indices(), t._values()):
                    h.update(_bytes_of(part))
                return h.intdigest(), layout
            return 0, layout
        if t.is_quantized:
            return xxhash.xxh3_64_intdigest(_bytes_of(t.int_repr())), label or "quantized"
        if t.device.type == "meta":
            return 0, label or "meta"
        if (
            label is None
            and t.device.type == "cpu"
            and t.dtype in _NUMPY_DTYPES
            and t.is_contiguous()
            and not t.is_conj()
            and not t.is_neg()
        ):
            return xxhash.xxh3_64_intdigest(t.detach().numpy()), None
        return xxhash.xxh3_64_intdigest(_bytes_of(t)), label
    except Exception:  # subclass without storage, functional tensor, ...: don't crash the run
        return 0, label or "unreadable"


def _bytes_of(t: torch.Tensor) -> Any:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def _data_ptr(t: torch.Tensor) -> int:
    try:
        return t.data_ptr()
    except Exception:
        return -1


def _flatten(obj: Any, out: list[Any]) -> None:
    """Leaves of aten arguments / results: tensors, scalars, (nested) lists of them.

    Aten schemas nest at most a list inside the argument tuple, so this plain loop replaces
    ``torch.utils._pytree`` (several times slower per op).
    """
    for o in obj if isinstance(obj, (list, tuple)) else (obj,):
        if isinstance(o, (list, tuple)):
            _flatten(o, out)
        else:
            out.append(o)


_SCALAR_TYPES = (int, float, bool, complex, str, type(None), torch.dtype, torch.device)


_REPR_TYPES = frozenset(_SCALAR_TYPES + (torch.layout, torch.memory_format))


def _scalar_repr(x: Any) -> str:
    if type(x) in _REPR_TYPES or isinstance(x, _SCALAR_TYPES):
        return repr(x)
    return type(x).__name__  # Generator, SymInt, ...: the type only (no addresses)


_flag_name_cache: dict[tuple[str, str], tuple[str, ...]] = {}


def _flag_names(op: str, overload: str) -> tuple[str, ...]:
    key = (op, overload)
    names = _flag_name_cache.get(key)
    if names is None:
        names = ()
        try:
            ns, _, name = op.partition("::")
            packet = getattr(getattr(torch.ops, ns), name)
            schema = getattr(packet, overload)._schema
            names = tuple(a.name for a in schema.arguments if _is_flag_type(a.type))
        except Exception:
            pass
        _flag_name_cache[key] = names
    return names


_FLAG_TYPES = {"bool", "int", "str", "SymInt", "Optional[bool]", "Optional[int]", "Optional[str]"}


def _is_flag_type(t: Any) -> bool:
    return str(t) in _FLAG_TYPES


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


class _OpInfo:
    __slots__ = ("op", "overload", "random", "mutated", "flag_pos", "uninit", "view", "out_names")

    def __init__(self, func: Any) -> None:
        schema = func._schema
        self.op: str = sys.intern(schema.name)
        self.overload: str = sys.intern(func._overloadname)
        self.random: bool = torch.Tag.nondeterministic_seeded in func.tags
        self.uninit: bool = self.op in _UNINIT_OPS
        self.view: bool = bool(getattr(func, "is_view", False))
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
            if _is_flag_type(a.type):
                default = a.default_value if a.has_default_value() else None
                flags.append((i, a.name, a.kwarg_only, default))
        self.mutated = tuple(mutated)
        self.flag_pos = tuple(flags)


def _arg(args: tuple, kwargs: dict, pos: int, name: str, kwarg_only: bool, default: Any) -> Any:
    if not kwarg_only and pos < len(args):
        return args[pos]
    return kwargs.get(name, default)


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_STDLIB_DIR = os.path.normpath(sysconfig.get_paths()["stdlib"]) + os.sep
_SITE_DIRS = tuple(
    os.path.normpath(p) + os.sep
    for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
)


def _is_internal_file(filename: str) -> bool:
    if filename.startswith("<frozen"):
        return True
    f = os.path.normpath(filename)
    if f.startswith(_TORCH_DIR) or f.startswith(_PKG_DIR):
        return True
    if f.startswith(_STDLIB_DIR) and not f.startswith(_SITE_DIRS):
        return True
    return False


_internal_code: dict[Any, bool] = {}


def _display_path(filename: str) -> str:
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


# --------------------------------------------------------------------------------------------
# the tracer


class OpTracer(TorchDispatchMode):
    """Record every aten op run inside ``with OpTracer(model):`` as :class:`OpEvent`.

    ``root_module``: names for the module path come from ``root_module.named_modules()``
    (computed on ``__enter__``); modules not found there are named by their class.
    ``max_events``: stop recording after this many events and set ``truncated`` (the run goes
    on untouched). ``capture_outputs_of``: event indices whose output tensors are copied into
    ``captured[index]`` (CPU clones) so that two replays can be compared element by element.
    ``trust_version_counter``: do not re-hash an input that is the very tensor a traced op
    produced, with its in-place version counter unchanged since; reuse that fingerprint
    (about half the hashing). Writes that do not bump the counter -- through numpy
    (``t.numpy()[:] = ...``), DLPack, raw pointers, custom kernels outside the dispatcher --
    then go unseen until a later op's output differs, and are blamed on that op.
    """

    def __init__(
        self,
        root_module: torch.nn.Module | None = None,
        *,
        max_events: int | None = DEFAULT_MAX_EVENTS,
        capture_outputs_of: Iterable[int] | None = None,
        trust_version_counter: bool = False,
    ) -> None:
        super().__init__()
        self.trust_version_counter = trust_version_counter
        self.root_module = root_module
        self.max_events = max_events
        self.capture_outputs_of = frozenset(capture_outputs_of or ())
        self.events: list[OpEvent] = []
        self.truncated = False
        self.captured: dict[int, tuple[torch.Tensor, ...]] = {}
        self._ops: dict[Any, _OpInfo] = {}
        self._calls: dict[str, int] = {}
        self._produced: dict[tuple, int] = {}  # content key -> first event producing it
        self._first_seen: dict[tuple, int] = {}  # external content key -> first event using it
        self._uninit: dict[tuple, tuple[int, int]] = {}  # garbage key -> (data_ptr, event)
        # id(tensor) -> (weakref, producer event, version when produced or None, output sig)
        self._by_id: dict[int, tuple[Any, int, int | None, TensorSig]] = {}
        self._seq_to_event: dict[int, int] = {}  # autograd sequence nr -> forward event
        self._last_seq = -1
        self._interned: dict[Any, Any] = {}
        self._sources: dict[tuple[Any, int], str] = {}
        self._module_names: dict[int, str] = {}
        self._module_stack: list[tuple[int, str]] = []
        self._hooks: list[Any] = []
        self._thread = 0
        self._get_seq = getattr(torch._C._autograd, "_get_sequence_nr", None)
        self._current_node = getattr(torch._C, "_current_autograd_node", None)

    # -- context management ------------------------------------------------------------------

    def __enter__(self) -> OpTracer:
        from torch.nn.modules import module as nn_module

        self._thread = threading.get_ident()
        self._module_names = {}
        if self.root_module is not None:
            for name, mod in self.root_module.named_modules(remove_duplicate=True):
                self._module_names.setdefault(id(mod), name or type(mod).__name__)
        self._module_stack = []
        if self._get_seq is not None:
            self._last_seq = self._get_seq()
        self._hooks = [
            nn_module.register_module_forward_pre_hook(self._pre_hook),
            nn_module.register_module_forward_hook(self._post_hook, always_call=True),
        ]
        try:
            return super().__enter__()
        except BaseException:
            self._remove_hooks()
            raise

    def __exit__(self, *exc: Any) -> Any:
        try:
            return super().__exit__(*exc)
        finally:
            self._remove_hooks()
            self._module_stack = []

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _pre_hook(self, module: torch.nn.Module, args: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        name = self._module_names.get(id(module))
        if name is None:
            name = type(module).__name__
            if self._module_stack and self.root_module is None:
                name = f"{self._module_stack[-1][1]}.{name}"
        self._module_stack.append((id(module), name))

    def _post_hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        stack = self._module_stack
        mid = id(module)
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] == mid:
                del stack[i:]
                return

    # -- helpers -----------------------------------------------------------------------------

    def _intern(self, x: Any) -> Any:
        return self._interned.setdefault(x, x)

    def _source(self) -> str:
        f = sys._getframe(2)
        cache = _internal_code
        while f is not None:
            code = f.f_code
            internal = cache.get(code)
            if internal is None:
                internal = cache[code] = _is_internal_file(code.co_filename)
            if not internal:
                key = (code, f.f_lineno)
                s = self._sources.get(key)
                if s is None:
                    s = self._sources[key] = sys.intern(
                        f"{_display_path(code.co_filename)}:{f.f_lineno} in {code.co_name}"
                    )
                return s
            f = f.f_back
        return "<unknown>"

    def _sig(self, t: torch.Tensor, index: int, as_output: bool, uninit: bool = False) -> TensorSig:
        if self.trust_version_counter and not as_output:
            entry = self._by_id.get(id(t))
            if entry is not None and entry[2] is not None and entry[0]() is t:
                try:
                    same = t._version == entry[2]
                except Exception:
                    same = False
                if same:  # unchanged since a traced op produced it: reuse that fingerprint
                    return entry[3]
        dtype = _FAST_DTYPES.get(t.dtype)
        if (
            dtype is not None
            and type(t) in _PLAIN_TYPES
            and t.is_cpu
            and t.layout == torch.strided
            and t.is_contiguous()
        ):
            h = xxhash.xxh3_64_intdigest(t.detach().numpy() if t.requires_grad else t.numpy())
            cls = None
        else:
            h, cls = _content_hash(t)
            dtype = _dtype_name(t.dtype)
        interned = self._interned
        try:
            size = t.shape
            shape = interned.get(size)
            if shape is None:
                shape = tuple(size)
                interned[shape] = shape
        except Exception:
            shape = ()
        key = (h, dtype, shape)
        if as_output:
            if uninit:
                self._uninit[key] = (_data_ptr(t), index)
                out = TensorSig(0, dtype, shape, "traced", index, "uninitialized")
            else:
                if self._uninit:
                    u = self._uninit.get(key)
                    if u is not None and u[0] == _data_ptr(t):
                        # a traced op wrote the very bytes the memory held (recycled memory
                        # from an identical earlier run): it is initialised now
                        del self._uninit[key]
                self._produced.setdefault(key, index)
                out = TensorSig(h, dtype, shape, "traced", index, cls)
            try:
                version = t._version if self.trust_version_counter and not uninit else None
                self._by_id[id(t)] = (weakref.ref(t), index, version, out)
            except (TypeError, RuntimeError):
                pass
            return out
        if self._uninit:
            u = self._uninit.get(key)
            if u is not None and u[0] == _data_ptr(t):  # still the garbage it was allocated with
                return TensorSig(0, dtype, shape, "traced", u[1], "uninitialized")
        producer = self._produced.get(key)
        if producer is not None:
            return TensorSig(h, dtype, shape, "traced", producer, cls)
        entry = self._by_id.get(id(t))
        if entry is not None and entry[0]() is t:
            return TensorSig(h, dtype, shape, "modified", entry[1], cls)
        first = self._first_seen.setdefault(key, index)
        return TensorSig(h, dtype, shape, "external", first, cls)

    def _rng_hash(self, args: tuple, kwargs: dict, leaves: list[Any]) -> int:
        gen = kwargs.get("generator")
        if gen is None:
            for x in leaves:
                if isinstance(x, torch.Generator):
                    gen = x
                    break
        if gen is None:
            device = kwargs.get("device")
            if device is None:
                for x in leaves:
                    if isinstance(x, torch.Tensor):
                        device = x.device
                        break
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

    # -- the dispatch hook -------------------------------------------------------------------

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if self.truncated:
            return func(*args, **kwargs)
        index = len(self.events)
        if self.max_events is not None and index >= self.max_events:
            self.truncated = True
            return func(*args, **kwargs)

        info = self._ops.get(func)
        if info is None:
            info = self._ops[func] = _OpInfo(func)

        leaves: list[Any] = []
        _flatten(args, leaves)
        if kwargs:
            out_names = info.out_names
            _flatten([v for k, v in kwargs.items() if k not in out_names], leaves)
        inputs = []
        scalars = []
        sig = self._sig
        Tensor = torch.Tensor
        for x in leaves:
            if isinstance(x, Tensor):
                inputs.append(sig(x, index, False))
            else:
                scalars.append(_scalar_repr(x))
        args_hash = xxhash.xxh3_64_intdigest("\x1f".join(scalars).encode()) if scalars else 0
        rng = self._rng_hash(args, kwargs, leaves) if info.random else None
        flags = ()
        if info.flag_pos:
            flags = self._intern(
                tuple(_arg(args, kwargs, p, n, ko, d) for p, n, ko, d in info.flag_pos)
            )

        # autograd linkage: backward ops run inside an autograd node; forward ops that need a
        # gradient have just had their node created (the sequence counter moved).
        node = self._current_node() if self._current_node is not None else None
        node_name = None
        forward_index = -1
        requires_grad = False
        if node is not None:
            node_name = self._intern(node.name())
            try:
                forward_index = self._seq_to_event.get(node._sequence_nr(), -1)
            except Exception:
                forward_index = -1
        elif self._get_seq is not None:
            seq = self._get_seq()
            if seq != self._last_seq:
                self._last_seq = seq
                self._seq_to_event[seq - 1] = index
                requires_grad = True

        out = func(*args, **kwargs)

        if isinstance(out, Tensor):
            out_tensors = [out]
        else:
            out_leaves: list[Any] = []
            _flatten(out, out_leaves)
            out_tensors = [x for x in out_leaves if isinstance(x, Tensor)]
        for pos, name, kwarg_only in info.mutated:
            m = _arg(args, kwargs, pos, name, kwarg_only, None)
            ml: list[Any] = []
            _flatten(m, ml)
            for x in ml:
                if isinstance(x, torch.Tensor) and not any(x is o for o in out_tensors):
                    out_tensors.append(x)
        uninit = info.uninit or (
            info.view and any(x.cls == "uninitialized" for x in inputs)  # view of garbage
        )
        outputs = tuple([sig(t, index, True, uninit) for t in out_tensors])
        if index in self.capture_outputs_of:
            self.captured[index] = tuple(t.detach().to("cpu", copy=True) for t in out_tensors)

        calls = self._calls.get(info.op, 0)
        self._calls[info.op] = calls + 1
        module_path = ""
        if self._module_stack:
            module_path = self._module_stack[-1][1]
        elif forward_index >= 0:
            module_path = self.events[forward_index].module_path
        self.events.append(
            OpEvent(
                index,
                info.op,
                info.overload,
                calls,
                tuple(inputs),
                outputs,
                self._source(),
                module_path,
                args_hash,
                rng,
                flags,
                node_name,
                forward_index,
                requires_grad,
            )
        )
        return out

    # -- conveniences ------------------------------------------------------------------------

    def forward_source(self, event: OpEvent) -> str:
        """Source line of the forward op behind a backward event (else the event's own)."""
        if event.forward_index >= 0:
            return self.events[event.forward_index].source
        return event.source


# --------------------------------------------------------------------------------------------
# advice

_USE_DET = "torch.use_deterministic_algorithms(True)"

DETERMINISTIC_ALTERNATIVES: dict[str, str] = {
    "aten::index_put_": (
        f"with accumulate=True: call {_USE_DET} (documented: makes index_put with accumulate=True "
        "deterministic on CPU tensors; on CUDA the accumulate kernel sorts indices) or accumulate "
        "with a deterministic op such as index_add_/scatter_add_ on CPU; with accumulate=False and "
        "duplicate indices the value that wins is undefined: make the indices unique or call "
        f"{_USE_DET} (documented deterministic for accumulate=False)"
    ),
    "aten::_index_put_impl_": (
        "this is the kernel behind x[idx] = v / x[idx] += v, index_put_ and the backward of "
        f"advanced indexing x[list_of_tensors]: call {_USE_DET} (documented deterministic for "
        "accumulate=False, and for accumulate=True on CPU) or make the indices unique"
    ),
    "aten::put_": (
        "with accumulate=True on CPU: call "
        f"{_USE_DET} (documented deterministic); with accumulate=False duplicate indices "
        "make the result undefined and deterministic mode raises: make the indices unique "
        "(torch.unique) or switch to accumulate=True"
    ),
    "aten::index_copy_": (
        "duplicate entries in index: which copy lands last is undefined; make index unique or "
        f"call {_USE_DET} (documented deterministic for index_copy on CPU and CUDA)"
    ),
    "aten::scatter_": (
        "duplicate indices with a Tensor src: which value is written is undefined; make the "
        f"indices unique, or call {_USE_DET} (documented deterministic on CUDA for a Tensor src)"
    ),
    "aten::scatter_add_": (
        f"nondeterministic on CUDA (atomic adds); {_USE_DET} switches to a deterministic "
        "algorithm there (documented); on CPU not documented as nondeterministic"
    ),
    "aten::scatter_reduce_": (
        f"reduce='sum'/'mean' on CUDA: {_USE_DET} uses a deterministic algorithm; "
        "reduce='prod' on CUDA has none and raises in deterministic mode"
    ),
    "aten::index_add_": (
        f"nondeterministic on CUDA (atomic adds); {_USE_DET} switches to a deterministic "
        "algorithm there (documented)"
    ),
    "aten::index_reduce_": (
        "duplicate indices: result order-dependent on parallel backends; make indices unique"
    ),
    "aten::masked_scatter_": "check that the mask/source pairing does not depend on thread order",
}
for _name in ("index_put", "index_copy", "scatter", "scatter_add", "scatter_reduce", "index_add"):
    DETERMINISTIC_ALTERNATIVES[f"aten::{_name}"] = DETERMINISTIC_ALTERNATIVES[f"aten::{_name}_"]
DETERMINISTIC_ALTERNATIVES["aten::put"] = DETERMINISTIC_ALTERNATIVES["aten::put_"]

_GENERIC_ADVICE = (
    "this op gave different outputs for identical inputs: try "
    f"{_USE_DET} (it makes documented ops deterministic or raises for those that have no "
    "deterministic kernel), check for duplicate indices in scatter/index ops, and for in-place "
    "ops on tensors with internal memory overlap (not covered by that flag)"
)


def advice_for(op: str) -> str:
    return DETERMINISTIC_ALTERNATIVES.get(op, _GENERIC_ADVICE)


# --------------------------------------------------------------------------------------------
# diffing


@dataclass
class TraceDiff:
    """Where two traces first part, and why (``kind``)."""

    kind: str  # "identical" | "nondeterministic-op" | "external-input" | "structural"
    index: int | None = None  # event index (the same in both traces up to the difference)
    event_a: OpEvent | None = None
    event_b: OpEvent | None = None
    input_position: int | None = None  # external-input: which tensor input (-1: non-tensor args)
    entered_at: str | None = None  # external-input: source line where the input was first seen
    entered_event: int | None = None
    forward_source: str | None = None  # backward events: the forward line behind the node
    first_structural: int | None = None  # later: first event where the op sequences part
    events_compared: int = 0
    truncated: bool = False
    advice: str | None = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


_UNTRACED_NOTE = (
    "If this tensor was produced by a custom C++/CUDA/Triton kernel that bypasses the dispatcher, "
    "the op that produced this input was not seen by the dispatcher: the nondeterminism is in "
    "that kernel, which ran just before this line, and shows up here one op later."
)


def _events_of(x: OpTracer | Sequence[OpEvent]) -> tuple[Sequence[OpEvent], bool]:
    if isinstance(x, OpTracer):
        return x.events, x.truncated
    return x, False


def _key(sig: TensorSig) -> tuple:
    return (sig.hash, sig.dtype, sig.shape)


def _fmt_sigs(sigs: Sequence[TensorSig]) -> str:
    return ", ".join(s.describe() for s in sigs) or "(none)"


def _same_op(a: OpEvent, b: OpEvent) -> bool:
    return a.op == b.op and a.overload == b.overload


def diff_traces(
    a: OpTracer | Sequence[OpEvent],
    b: OpTracer | Sequence[OpEvent],
    *,
    labels: tuple[str, str] = ("run A", "run B"),
) -> TraceDiff:
    """Walk two traces in order and classify their first difference (see module docstring)."""
    ev_a, trunc_a = _events_of(a)
    ev_b, trunc_b = _events_of(b)
    la, lb = labels
    n = min(len(ev_a), len(ev_b))
    for i in range(n):
        ea, eb = ev_a[i], ev_b[i]
        if not _same_op(ea, eb) or len(ea.inputs) != len(eb.inputs):
            return _structural(i, ea, eb, ev_a, labels, trunc_a or trunc_b)
        diff_in = [
            k
            for k, (x, y) in enumerate(zip(ea.inputs, eb.inputs, strict=True))
            if _key(x) != _key(y)
        ]
        if diff_in:
            k = diff_in[0]
            return _external(i, k, ea, eb, ev_a, ev_b, labels, trunc_a or trunc_b)
        if ea.rng_state != eb.rng_state:
            return _external(i, -2, ea, eb, ev_a, ev_b, labels, trunc_a or trunc_b)
        if ea.args_hash != eb.args_hash:
            return _external(i, -1, ea, eb, ev_a, ev_b, labels, trunc_a or trunc_b)
        if [_key(x) for x in ea.outputs] != [_key(y) for y in eb.outputs]:
            if _rebinds_storage(ea):
                return _storage_entry(i, ea, eb, labels, trunc_a or trunc_b)
            return _nondeterministic(i, ea, eb, ev_a, ev_b, labels, trunc_a or trunc_b)
    truncated = trunc_a or trunc_b
    if len(ev_a) != len(ev_b) and not truncated:
        longer, name = (ev_a, la) if len(ev_a) > len(ev_b) else (ev_b, lb)
        extra = longer[n]
        d = TraceDiff(
            "structural",
            index=n,
            event_a=ev_a[n] if n < len(ev_a) else None,
            event_b=ev_b[n] if n < len(ev_b) else None,
            events_compared=n,
            message=(
                f"Structural difference: both runs executed the same {n} ops, then {name} went "
                f"on with {extra.describe()} ({len(ev_a)} vs {len(ev_b)} ops in all). Control "
                "flow (a loop count or an early exit) depended on something that differed."
            ),
        )
        return d
    note = f" (over the first {n} ops only: trace truncated by max_events)" if truncated else ""
    return TraceDiff(
        "identical",
        events_compared=n,
        truncated=truncated,
        message=f"Identical: {n} ops with bitwise-equal inputs and outputs{note}.",
    )


def _last_scalar_read(events: Sequence[OpEvent], before: int) -> OpEvent | None:
    for j in range(before - 1, -1, -1):
        if events[j].op in ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::item"):
            return events[j]
    return None


def _first_structural(ev_a: Sequence[OpEvent], ev_b: Sequence[OpEvent], start: int) -> int | None:
    n = min(len(ev_a), len(ev_b))
    for j in range(start, n):
        if not _same_op(ev_a[j], ev_b[j]):
            return j
    return n if len(ev_a) != len(ev_b) else None


def _structural(
    i: int,
    ea: OpEvent,
    eb: OpEvent,
    ev_a: Sequence[OpEvent],
    labels: tuple[str, str],
    truncated: bool,
) -> TraceDiff:
    la, lb = labels
    read = _last_scalar_read(ev_a, i)
    hint = (
        f" The last tensor value read into Python before this point was {read.describe()} "
        "(item()/bool()/if-test): its value was equal in both runs, so the branch was taken on "
        "something outside torch ops (Python/numpy random numbers, data, time, dict/set order)."
        if read is not None
        else " The branch was taken on something outside torch ops (a Python/numpy random "
        "number, data, time, dict/set iteration order)."
    )
    msg = (
        f"Structural difference at op #{i}: the runs executed different ops, so control flow "
        f"depended on a value that differed.\n  {la}: {ea.describe()}\n  {lb}: {eb.describe()}\n"
        f"All {i} ops before agreed bitwise.{hint}"
    )
    return TraceDiff(
        "structural",
        index=i,
        event_a=ea,
        event_b=eb,
        events_compared=i,
        truncated=truncated,
        message=msg,
        details={"source_a": ea.source, "source_b": eb.source},
    )


def _external(
    i: int,
    k: int,
    ea: OpEvent,
    eb: OpEvent,
    ev_a: Sequence[OpEvent],
    ev_b: Sequence[OpEvent],
    labels: tuple[str, str],
    truncated: bool,
) -> TraceDiff:
    la, lb = labels
    later = _first_structural(ev_a, ev_b, i + 1)
    tail = f"\nControl flow parts later, at op #{later}." if later is not None and later > i else ""
    base = dict(
        index=i,
        event_a=ea,
        event_b=eb,
        input_position=k,
        events_compared=i,
        truncated=truncated,
        first_structural=later,
    )
    if k == -2:
        msg = (
            f"External input at op #{i}: {ea.describe()} is a random op and the random generator "
            f"state before it differed ({la}: {ea.rng_state:016x}, {lb}: {eb.rng_state:016x}), "
            f"while all {i} earlier ops agreed. The generator was seeded differently, or random "
            "numbers were drawn outside the traced ops: seed it from the run's seed "
            "(repro.seed_for(...)) before this point."
        )
        return TraceDiff(
            "external-input", entered_at=ea.source, entered_event=i, message=msg, **base
        )
    if k == -1:
        msg = (
            f"External input at op #{i}: {ea.describe()} got different non-tensor arguments "
            "(Python numbers, sizes or flags), with equal tensor inputs. The value came from "
            "Python code, not from a torch op: random.random(), numpy, time, dict/set order... "
            "Seed or remove it."
        )
        return TraceDiff(
            "external-input", entered_at=ea.source, entered_event=i, message=msg, **base
        )
    sa, sb = ea.inputs[k], eb.inputs[k]
    if sa.origin == "traced" and sb.origin == "traced":
        pa, pb = ev_a[sa.origin_event], ev_b[sb.origin_event]
        msg = (
            f"External input at op #{i}: tensor input {k} of {ea.describe()} differs "
            f"({la}: {sa.describe()}, {lb}: {sb.describe()}), while all {i} earlier ops agreed "
            f"bitwise. Both values were produced by traced ops, but different ones ({la}: "
            f"{pa.describe()}; {lb}: {pb.describe()}): Python code chose which tensor to pass "
            "(a random choice, dict/set iteration order, a value read from outside)."
        )
        return TraceDiff(
            "external-input",
            entered_at=ea.source,
            entered_event=i,
            message=msg + tail,
            details={"origin": "traced-choice", "sig_a": sa, "sig_b": sb},
            **base,
        )
    # the side whose value is not traced and was seen most recently is where it entered
    cands = [(s.origin_event, s.origin, evs) for s, evs in ((sa, ev_a), (sb, ev_b))]
    cands = [c for c in cands if c[1] != "traced"]
    first, origin, evs = max(cands, key=lambda c: c[0])
    first_ev = evs[first] if 0 <= first < len(evs) else ea
    if origin == "modified":
        prod = first_ev
        msg = (
            f"External input at op #{i}: tensor input {k} of {ea.describe()} differs "
            f"({la}: {sa.describe()}, {lb}: {sb.describe()}), while all {i} earlier ops agreed "
            f"bitwise. This tensor was produced by traced op {prod.describe()}, and its content "
            "changed afterwards outside the dispatcher: a write through numpy (.numpy() / "
            "from_numpy aliasing), a raw data pointer, or a custom C++/CUDA/Triton kernel. "
            + _UNTRACED_NOTE
        )
        return TraceDiff(
            "external-input",
            entered_at=prod.source,
            entered_event=prod.index,
            message=msg,
            details={"origin": "modified", "sig_a": sa, "sig_b": sb},
            **base,
        )
    msg = (
        f"External input at op #{i}: tensor input {k} of {ea.describe()} differs "
        f"({la}: {sa.describe()}, {lb}: {sb.describe()}), while all {i} earlier ops agreed "
        f"bitwise. No traced op produced this tensor: it entered from outside torch ops, first "
        f"seen at {first_ev.source} (op #{first_ev.index}). The nondeterminism came from outside "
        "the traced ops: numpy or Python RNG (torch.from_numpy / torch.tensor of unseeded "
        "values), the data pipeline (DataLoader order, workers, augmentation), the file "
        "system, or state created before tracing began (model initialisation). " + _UNTRACED_NOTE
    )
    return TraceDiff(
        "external-input",
        entered_at=first_ev.source,
        entered_event=first_ev.index,
        message=msg + tail,
        details={"origin": "external", "sig_a": sa, "sig_b": sb},
        **base,
    )


def _rebinds_storage(event: OpEvent) -> bool:
    """``aten::set_`` onto a Storage: the tensor now shows bytes no traced op wrote -- a
    DataLoader batch arriving from a worker process through shared memory, or a file."""
    return event.op == "aten::set_" and event.overload.startswith("source_Storage")


def _storage_entry(
    i: int, ea: OpEvent, eb: OpEvent, labels: tuple[str, str], truncated: bool
) -> TraceDiff:
    la, lb = labels
    msg = (
        f"External input at op #{i}: {ea.describe()} attached a tensor to memory filled outside "
        f"the traced process (a DataLoader batch built by a worker process, or bytes read from a "
        f"file), and its content differs ({la}: {_fmt_sigs(ea.outputs)}; {lb}: "
        f"{_fmt_sigs(eb.outputs)}). The nondeterminism entered with the data at {ea.source}, "
        "not in a torch op: look at the Dataset, its augmentation and the loader's "
        "worker_init_fn (seed workers from torch.initial_seed(), as repro.dataloader_kwargs() "
        "does)."
    )
    return TraceDiff(
        "external-input",
        index=i,
        event_a=ea,
        event_b=eb,
        entered_at=ea.source,
        entered_event=i,
        events_compared=i,
        truncated=truncated,
        message=msg,
        advice="seed every worker from the loader's generator (repro.dataloader_kwargs())",
    )


def _nondeterministic(
    i: int,
    ea: OpEvent,
    eb: OpEvent,
    ev_a: Sequence[OpEvent],
    ev_b: Sequence[OpEvent],
    labels: tuple[str, str],
    truncated: bool,
) -> TraceDiff:
    la, lb = labels
    fwd = ev_a[ea.forward_index].source if 0 <= ea.forward_index < len(ev_a) else None
    advice = advice_for(ea.op)
    flags = ea.flag_dict()
    flag_txt = (
        " with " + ", ".join(f"{k}={v!r}" for k, v in flags.items() if isinstance(v, (bool, str)))
        if any(isinstance(v, (bool, str)) for v in flags.values())
        else ""
    )
    bwd = (
        f" It ran in backward (autograd node {ea.autograd_node}) for the forward call at {fwd}."
        if ea.is_backward and fwd
        else ""
    )
    random_note = (
        " It is a random op with equal generator state, so its kernel is not repeatable."
        if ea.rng_state is not None
        else ""
    )
    later = _first_structural(ev_a, ev_b, i + 1)
    msg = (
        f"Nondeterministic op at #{i}: {ea.describe()}{flag_txt} got bitwise-equal inputs in "
        f"both runs ({_fmt_sigs(ea.inputs)}) but produced different outputs ({la}: "
        f"{_fmt_sigs(ea.outputs)}; {lb}: {_fmt_sigs(eb.outputs)}). All {i} earlier ops agreed."
        f"{bwd}{random_note}\nAdvice: {advice}"
    )
    if later is not None:
        msg += f"\nControl flow parts later, at op #{later}."
    return TraceDiff(
        "nondeterministic-op",
        index=i,
        event_a=ea,
        event_b=eb,
        events_compared=i,
        truncated=truncated,
        forward_source=fwd,
        first_structural=later,
        advice=advice,
        message=msg,
        details={"flags": flags},
    )


# --------------------------------------------------------------------------------------------
# element-level comparison of captured outputs


@dataclass
class OutputComparison:
    """How two captured output tensors differ, element by element."""

    numel: int
    n_different: int
    max_abs_diff: float
    first_index: tuple[int, ...] | None
    dtype: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]

    @property
    def identical(self) -> bool:
        return self.n_different == 0 and self.shape_a == self.shape_b

    def __str__(self) -> str:
        if self.shape_a != self.shape_b:
            return f"shapes differ: {list(self.shape_a)} vs {list(self.shape_b)}"
        return (
            f"{self.n_different} of {self.numel} elements differ, max abs diff "
            f"{self.max_abs_diff:.3g}, first at index {list(self.first_index or ())}"
        )


def compare_event_outputs(a_tensor: torch.Tensor, b_tensor: torch.Tensor) -> OutputComparison:
    """Count differing elements (bitwise; NaNs with equal bits agree) and the max abs diff."""
    a = a_tensor.detach().cpu()
    b = b_tensor.detach().cpu()
    dtype = str(a.dtype).replace("torch.", "")
    if a.shape != b.shape:
        return OutputComparison(
            a.numel(),
            max(a.numel(), b.numel()),
            float("inf"),
            None,
            dtype,
            tuple(a.shape),
            tuple(b.shape),
        )
    if a.dtype != b.dtype:
        b = b.to(a.dtype)
    if a.dtype.is_floating_point or a.dtype.is_complex:
        same = (a == b) | (a.isnan() & b.isnan())
    else:
        same = a == b
    diff_mask = ~same
    n = int(diff_mask.sum())
    first = None
    max_abs = 0.0
    if n:
        first = tuple(int(v) for v in diff_mask.nonzero()[0])
        if a.dtype == torch.bool:
            max_abs = 1.0
        else:
            da = a[diff_mask].to(torch.complex128 if a.is_complex() else torch.float64)
            db = b[diff_mask].to(da.dtype)
            max_abs = float((da - db).abs().max())
    return OutputComparison(a.numel(), n, max_abs, first, dtype, tuple(a.shape), tuple(b.shape))


def replay_divergence(
    run: Callable[[], Any],
    event_index: int,
    *,
    attempts: int = 3,
    max_events: int | None = DEFAULT_MAX_EVENTS,
) -> list[OutputComparison] | None:
    """Re-run ``run`` (a zero-argument callable that rebuilds its own state) in pairs, copying
    the outputs of ``event_index``, until a pair differs; return the per-output comparisons of
    that pair, or ``None`` when all ``attempts`` pairs agreed (the divergence did not recur).

    ``run`` must be the workload that was traced to find ``event_index``, without a tracer of
    its own: event indices count from the start of the trace.
    """
    for _ in range(attempts):
        caps = []
        for _ in range(2):
            with OpTracer(max_events=max_events, capture_outputs_of={event_index}) as tr:
                run()
            caps.append(tr.captured.get(event_index))
        if caps[0] is None or caps[1] is None:
            return None
        comps = [compare_event_outputs(x, y) for x, y in zip(caps[0], caps[1], strict=False)]
        if any(not c.identical for c in comps):
            return comps
    return None
