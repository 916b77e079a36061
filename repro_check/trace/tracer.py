"""Aten-op tracer: record every op a run executes, so that two runs can be diffed.

``OpTracer`` is a :class:`~torch.utils._python_dispatch.TorchDispatchMode`: every aten op that
goes through the dispatcher inside its ``with`` block (forward *and* backward, since the CPU
autograd engine runs backward in the calling thread under the same mode) becomes one
:class:`~repro_check.trace.events.OpEvent` holding

* the op (``aten::index_put_``) and overload, and how many times it ran before (``call_index``);
* fingerprints (xxh3-64 of the raw bytes + dtype + shape) of its outputs, taken *after* the op
  (for in-place / ``out=`` ops the mutated arguments are the outputs);
* its tensor inputs, identified by the op that produced them (see below), and where each came
  from: produced by an earlier traced op (``origin="traced"``), never produced by a traced op
  (``"external"``: ``torch.from_numpy``, a DataLoader batch, a parameter created before tracing
  began) or produced by a traced op and changed afterwards by code the dispatcher did not see
  (``"modified"``);
* a hash of the non-tensor arguments, and for random ops a hash of the generator state;
* the user's source line and the module path (``encoder.layers.0.self_attn``);
* for backward ops, the autograd node that ran them and the forward event behind it.

What is hashed, and what is not (the cost of tracing is Python work per op, so the tracer does
as little per op as the diff needs):

* **Outputs are hashed; inputs are identified by their producer.** A tensor a traced op
  produced, read later with its version counter unchanged (the same Python object), reuses the
  producer's fingerprint; so does a parameter (a tensor that requires grad) after its first
  read. Other tensors no traced op computed from other tensors are hashed each time they are
  read: external data, factory outputs (``zeros``, ``full``: buffers that code fills) and
  uninitialised memory. The blind spot: a write that bypasses the dispatcher *and* the
  version counter (through ``.numpy()``, DLPack, a raw pointer) into a tensor a traced op
  computed from other tensors goes unseen until a later op's output differs, and that op is
  blamed. ``verify_inputs=True`` re-hashes every input (and hashes views by content) and
  closes it, at a cost measured in ``benchmarks/bench_localize.py``.
* **Views are not hashed.** The output of a view op (``view``, ``transpose``, ``t``,
  ``expand``, ``detach``...) is its input's fingerprint mixed with the op and its arguments: a
  view computes nothing, and its content is equal exactly when its input's is.

Tracing does not change numerics: the mode calls each op exactly as it was called and only
reads the results.
"""

from __future__ import annotations

import array
import re
import sys
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import torch
import xxhash
from torch.utils._python_dispatch import TorchDispatchMode

from repro_check.trace.events import OpEvent, TensorSig, is_flag_type
from repro_check.trace.frames import SourceLocator
from repro_check.trace.hashing import content_hash, dtype_name, fast_dtypes, memory_hash, mix

__all__ = ["DEFAULT_MAX_EVENTS", "OpTracer"]

# Default cap on recorded events. Measured ~750 bytes per event (the event, its fingerprints
# and the tracer's lookup tables) on a Transformer training step, so ~190 MB at the cap:
# ~400 training steps of a 600-op model. Raise it (or pass None) for longer traces.
DEFAULT_MAX_EVENTS = 250_000

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
_SCALAR_TYPES = (int, float, bool, complex, str, type(None), torch.dtype, torch.device)
_REPR_TYPES = frozenset(_SCALAR_TYPES + (torch.layout, torch.memory_format))
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_STRIDED = torch.strided


def _sig(fields: tuple) -> TensorSig:
    """``TensorSig(*fields)`` without NamedTuple's Python-level ``__new__`` (hot path)."""
    return tuple.__new__(TensorSig, fields)


_Tensor = torch.Tensor


def _scalar_repr(x: Any) -> str:
    if type(x) in _REPR_TYPES or isinstance(x, _SCALAR_TYPES):
        return repr(x)
    return type(x).__name__  # Generator, SymInt, ...: the type only (no addresses)


def _flatten(obj: Any, out: list[Any]) -> None:
    """Leaves of aten arguments / results: tensors, scalars, (nested) lists of them."""
    for o in obj if isinstance(obj, (list, tuple)) else (obj,):
        if isinstance(o, (list, tuple)):
            _flatten(o, out)
        else:
            out.append(o)


_INT_TYPE = re.compile(r"^(int|SymInt|bool|List\[int\]|List\[SymInt\])$")
_int64s = array.array


def _arg(args: tuple, kwargs: dict, pos: int, name: str, kwarg_only: bool, default: Any) -> Any:
    if not kwarg_only and pos < len(args):
        return args[pos]
    return kwargs.get(name, default)


def _data_ptr(t: torch.Tensor) -> int:
    try:
        return t.data_ptr()
    except Exception:
        return -1


class _OpInfo:
    """What the tracer needs to know about one op overload, computed once per process."""

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
        "flag_last",
        "int_args",
    )

    def __init__(self, func: Any) -> None:
        self.func = func  # keeps id(func) from being reused while it keys _OP_INFO
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
        # list arguments (Tensor[], int[]) must be flattened; the others are read as they come
        self.nested = any(str(a.type).endswith("]") for a in schema.arguments)
        # every non-tensor argument an int or a bool (never None): hashed as packed int64s
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


_OP_INFO: dict[int, _OpInfo] = {}  # id(OpOverload) -> info; the info holds the op alive
_WRAPPERS = (("_dynamo", "eval_frame.py", "_fn"), ("torch", "_compile.py", "inner"))
_depth: list[int] = []  # frames from __torch_dispatch__ up to the op's caller, once known


def _caller(depth: int) -> Any:
    """The frame ``depth`` levels above the caller, or None: in the autograd engine's device
    threads (CUDA backward) the stack ends right above the dispatch."""
    try:
        return sys._getframe(depth + 1)
    except ValueError:
        return None


def _caller_depth(frame: Any) -> int:
    """torch wraps ``__torch_dispatch__`` (dynamo's disable), adding frames that are new on
    every call; the source locator starts above them, where consecutive ops share frames."""
    depth = 1
    while frame is not None:
        code = frame.f_code
        parts = code.co_filename.replace("\\", "/").split("/")[-2:]
        if (*parts, code.co_name) not in _WRAPPERS:
            break
        depth += 1
        frame = frame.f_back
    return depth


class OpTracer(TorchDispatchMode):
    """Record every aten op run inside ``with OpTracer(model):`` as an ``OpEvent``.

    ``root_module``: names for the module path come from ``root_module.named_modules()``
    (computed on ``__enter__``); modules not found there are named by their class.
    ``max_events``: stop recording after this many events and set ``truncated`` (the run goes
    on untouched). ``capture_outputs_of``: event indices whose output tensors are copied into
    ``captured[index]`` (CPU clones) so that two replays can be compared element by element.
    ``verify_inputs``: re-hash every tensor input instead of trusting the fingerprint its
    producer recorded while its version counter is unchanged, and hash views by content (see
    the module docstring).
    """

    def __init__(
        self,
        root_module: torch.nn.Module | None = None,
        *,
        max_events: int | None = DEFAULT_MAX_EVENTS,
        capture_outputs_of: Iterable[int] | None = None,
        verify_inputs: bool = False,
    ) -> None:
        super().__init__()
        self.root_module = root_module
        self.max_events = max_events
        self.verify_inputs = verify_inputs
        self.capture_outputs_of = frozenset(capture_outputs_of or ())
        self.events: list[OpEvent] = []
        self.truncated = False
        self.captured: dict[int, tuple[torch.Tensor, ...]] = {}
        self._limit = sys.maxsize if max_events is None else max_events
        self._calls: dict[str, int] = {}
        self._produced: dict[tuple, int] = {}  # content key -> first event producing it
        self._first_seen: dict[tuple, int] = {}  # external content key -> first event using it
        self._uninit: dict[tuple, tuple[int, int]] = {}  # garbage key -> (data_ptr, event)
        # id(tensor) -> (weakref, version when produced or None: not trusted, signature)
        self._live: dict[int, tuple[Any, int | None, TensorSig]] = {}
        self._settle: list[tuple[Any, TensorSig]] = []  # views / writes of the last op
        self._seq_to_event: dict[int, int] = {}  # autograd sequence nr -> forward event
        self._last_seq = -1
        self._interned: dict[Any, Any] = {}
        self._devices: set[str] = set()
        self._locator = SourceLocator()
        self._locate = self._locator.locate
        self._fast = fast_dtypes()
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
            self._live.clear()  # weak references to the run's tensors: not needed any more
            self._settle = []
            self._locator.release()

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

    # -- fingerprints ------------------------------------------------------------------------

    def _hash(self, t: torch.Tensor) -> tuple[int, str, tuple[int, ...], str | None]:
        dtype = self._fast.get(t.dtype)
        if dtype is not None and type(t) in _PLAIN and t.is_cpu and t.layout == _STRIDED:
            contiguous = t.is_contiguous()
        else:
            contiguous = False
        if contiguous:
            h = memory_hash(t.data_ptr(), t.nbytes)
            cls = None
        else:
            h, cls = content_hash(t)
            dtype = dtype_name(t.dtype)
            if not t.is_cpu:  # every non-CPU tensor takes this path
                self._devices.add(t.device.type)
        return h, dtype, self._shape(t), cls

    def _shape(self, t: torch.Tensor) -> tuple[int, ...]:
        try:
            size = t.shape
            shape = self._interned.get(size)
            if shape is None:
                shape = self._interned[size] = tuple(size)
            return shape
        except Exception:
            return ()

    def _input(self, t: torch.Tensor, index: int) -> TensorSig:
        entry = self._live.get(id(t))
        if entry is not None:
            if entry[0]() is not t:
                entry = None  # a dead tensor's id, reused
            elif entry[1] is not None and not self.verify_inputs:
                try:
                    if t._version == entry[1]:
                        return entry[2]  # unchanged since a traced op produced it
                except Exception:
                    pass
        h, dtype, shape, cls = self._hash(t)
        key = (h, dtype, shape)
        if self._uninit:
            u = self._uninit.get(key)
            if u is not None and u[0] == _data_ptr(t):  # still the garbage it was allocated with
                return _sig((0, dtype, shape, "traced", u[1], "uninitialized"))
        producer = self._produced.get(key)
        if producer is not None:
            return _sig((h, dtype, shape, "traced", producer, cls))
        if entry is not None:
            return _sig((h, dtype, shape, "modified", entry[2].origin_event, cls))
        first = self._first_seen.setdefault(key, index)
        sig = _sig((h, dtype, shape, "external", first, cls))
        if entry is None and t.requires_grad:
            # a parameter made before tracing began: trusted like an output from now on
            # (data and buffers are not: code refills them through numpy)
            self._remember(t, sig, True)
        return sig

    def _output(self, t: torch.Tensor, index: int, trusted: bool, uninit: bool) -> TensorSig:
        """Fingerprint an output; ``trusted``: reuse it for reads while the version holds."""
        h, dtype, shape, cls = self._hash(t)
        key = (h, dtype, shape)
        if uninit:
            self._uninit[key] = (_data_ptr(t), index)
            sig = _sig((0, dtype, shape, "traced", index, "uninitialized"))
            trusted = False
        else:
            if self._uninit:
                u = self._uninit.get(key)
                if u is not None and u[0] == _data_ptr(t):
                    # a traced op wrote the very bytes the memory held (recycled memory
                    # from an identical earlier run): it is initialised now
                    del self._uninit[key]
            self._produced.setdefault(key, index)
            sig = _sig((h, dtype, shape, "traced", index, cls))
        self._remember(t, sig, trusted)
        return sig

    def _view(
        self,
        t: torch.Tensor,
        base: TensorSig,
        position: int,
        args_hash: int,
        info: _OpInfo,
        index: int,
    ) -> TensorSig:
        h = mix(base.hash, info.op_hash, args_hash, position)
        return _sig((h, dtype_name(t.dtype), self._shape(t), "traced", index, base.cls))

    def _remember(self, t: torch.Tensor, sig: TensorSig, trusted: bool) -> None:
        try:
            version = t._version if trusted else None
            self._live[id(t)] = (weakref.ref(t), version, sig)
        except (TypeError, RuntimeError):
            pass

    def _rng_hash(self, kwargs: dict, leaves: list[Any]) -> int:
        gen = kwargs.get("generator")
        if gen is None:
            gen = next((x for x in leaves if isinstance(x, torch.Generator)), None)
        if gen is None:
            device = kwargs.get("device")
            if device is None:
                device = next((x.device for x in leaves if isinstance(x, _Tensor)), None)
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
        if kwargs is None:
            kwargs = {}
        events = self.events
        index = len(events)
        if index >= self._limit:
            self.truncated = True
            return func(*args, **kwargs)
        info = _OP_INFO.get(id(func))  # by id: an OpOverload's __hash__ runs Python code
        if info is None:
            info = _OP_INFO[id(func)] = _OpInfo(func)
        if self._settle:  # weak references: holding the tensors would change what autograd
            for ref, sig in self._settle:  # does (it steals buffers nobody else holds)
                t = ref()
                if t is not None:
                    self._live[id(t)] = (ref, t._version, sig)
            self._settle = []

        if info.nested or kwargs:
            leaves: Any = []
            _flatten(args, leaves)
            if kwargs:
                out_names = info.out_names
                _flatten([v for k, v in kwargs.items() if k not in out_names], leaves)
        else:
            leaves = args
        live = self._live
        trust = not self.verify_inputs
        inputs = []
        scalars = []
        first = None  # the first tensor input: a view's base
        for x in leaves:
            if isinstance(x, _Tensor):
                e = live.get(id(x))  # the inline fast path of _input: a trusted producer
                if trust and e is not None and e[1] is not None and e[0]() is x:
                    inputs.append(e[2] if x._version == e[1] else self._input(x, index))
                else:
                    inputs.append(self._input(x, index))
                if first is None:
                    first = x
            else:
                scalars.append(x)
        args_hash = 0
        if scalars:
            packed = None
            if info.int_args:  # sizes, dims, flags: packed as they are (a third of the cost)
                try:
                    packed = _int64s("q", scalars)
                except (TypeError, OverflowError):  # beyond int64, or a value torch converts
                    pass
            if packed is None:
                packed = "\x1f".join(map(_scalar_repr, scalars)).encode()
            args_hash = xxhash.xxh3_64_intdigest(packed)
        rng = self._rng_hash(kwargs, leaves) if info.random else None
        flags: tuple[Any, ...] = ()
        if info.flag_pos:
            if kwargs or len(args) <= info.flag_last:
                flags = tuple([_arg(args, kwargs, p, n, ko, d) for p, n, ko, d in info.flag_pos])
            else:  # every flag passed positionally
                flags = tuple([args[p] for p, _n, _ko, _d in info.flag_pos])
            flags = self._interned.setdefault(flags, flags)

        # autograd linkage: backward ops run inside an autograd node; forward ops that need a
        # gradient have just had their node created (the sequence counter moved).
        node = self._current_node() if self._current_node is not None else None
        node_name = None
        forward_index = -1
        requires_grad = False
        if node is not None:
            name = node.name()
            node_name = self._interned.setdefault(name, name)
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

        if isinstance(out, _Tensor):
            out_tensors = [out]
        else:
            out_leaves: list[Any] = []
            _flatten(out, out_leaves)
            out_tensors = [x for x in out_leaves if isinstance(x, _Tensor)]
        written: list[Any] = []  # tensors the op wrote in place (in-place and out= ops)
        for pos, name, kwarg_only in info.mutated:
            _flatten(_arg(args, kwargs, pos, name, kwarg_only, None), written)
        for x in written:
            if isinstance(x, _Tensor) and not any(x is o for o in out_tensors):
                out_tensors.append(x)
        if (
            info.view
            and inputs
            and not self.verify_inputs
            and not self._is_buffer(first, inputs[0])
        ):
            base = inputs[0]
            outputs = tuple(
                [self._view(t, base, k, args_hash, info, index) for k, t in enumerate(out_tensors)]
            )
            # a view shares its base's version counter only once ADInplaceOrView (above this
            # mode) has wrapped it: remember it when the next op starts
            self._settle = [(weakref.ref(t), o) for t, o in zip(out_tensors, outputs, strict=True)]
        else:
            # outputs computed from tensors are trusted while their version counter holds;
            # factory outputs (no tensor input: zeros, full, empty...) are buffers code fills,
            # and so are views of them: hashed, and re-hashed whenever read
            trusted = bool(inputs) and not info.view
            uninit = info.uninit or bool(info.view and inputs and inputs[0].cls == "uninitialized")
            outputs = tuple([self._output(t, index, trusted, uninit) for t in out_tensors])
            if written and trusted and not uninit:
                # their version counter moves once more when the op returns (ADInplaceOrView
                # bumps it above this mode): read it when the next op starts
                self._settle = [
                    (weakref.ref(t), o) for t, o in zip(out_tensors, outputs, strict=True)
                ]
        if index in self.capture_outputs_of:
            self.captured[index] = tuple(t.detach().to("cpu", copy=True) for t in out_tensors)

        calls = self._calls.get(info.op, 0)
        self._calls[info.op] = calls + 1
        module_path = ""
        if self._module_stack:
            module_path = self._module_stack[-1][1]
        elif forward_index >= 0:
            module_path = events[forward_index].module_path
        events.append(
            OpEvent(
                index,
                info.op,
                info.overload,
                calls,
                tuple(inputs),
                outputs,
                self._locate(_caller(_depth[0] if _depth else self._find_depth())),
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

    @staticmethod
    def _find_depth() -> int:
        _depth.append(_caller_depth(sys._getframe(2)))
        return _depth[0]

    def _is_buffer(self, t: torch.Tensor, sig: TensorSig) -> bool:
        """Is ``t`` memory that code outside the dispatcher may fill (uninitialised, or the
        output of a factory op, or a view of one)? Views of it are hashed, not derived."""
        if sig.cls == "uninitialized":
            return True
        entry = self._live.get(id(t))
        return entry is not None and entry[1] is None and entry[0]() is t

    # -- conveniences ------------------------------------------------------------------------

    @property
    def traced_on(self) -> str:
        """The device the traced run computed on: "cuda" when a CUDA tensor was seen, "cpu"
        when only CPU tensors were (the audit's rows for CPU stand-ins depend on it)."""
        return "cuda" if "cuda" in self._devices else "cpu"

    def forward_source(self, event: OpEvent) -> str:
        """Source line of the forward op behind a backward event (else the event's own)."""
        if event.forward_index >= 0:
            return self.events[event.forward_index].source
        return event.source
