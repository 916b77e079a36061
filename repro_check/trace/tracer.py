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
* **Events are built when read.** Per op the hook keeps a row of what must be read while the
  op runs (fingerprints, source line, module, autograd links); call indices, the argument hash
  of non-view ops and the ``OpEvent`` objects are made when ``events`` is first read.

Tracing does not change numerics: the mode calls each op exactly as it was called and only
reads the results.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import torch
import xxhash
from torch.utils._python_dispatch import TorchDispatchMode

from repro_check.trace.events import OpEvent, TensorSig
from repro_check.trace.frames import SourceLocator, caller_depth
from repro_check.trace.hashing import (
    BUFFER_TYPES,
    DTYPE_NAMES,
    EMPTY_HASH,
    MIX_PACK,
    content_hash,
    data_ptr,
    dtype_name,
    fast_dtypes,
    memory_hash,
)
from repro_check.trace.opinfo import (
    OP_INFO,
    OpInfo,
    flatten,
    keep_dynamo_out,
    rng_hash,
    scalars_hash,
)

__all__ = ["DEFAULT_MAX_EVENTS", "OpTracer"]

# Default cap on recorded events. Measured ~750 bytes per event (the event, its fingerprints
# and the tracer's lookup tables) on a Transformer training step, so ~190 MB at the cap:
# ~400 training steps of a 600-op model. Raise it (or pass None) for longer traces.
DEFAULT_MAX_EVENTS = 250_000

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_STRIDED = torch.strided
_Tensor = torch.Tensor
_UNINITIALIZED = "uninitialized"
_xxh = xxhash.xxh3_64_intdigest
_new_tuple = tuple.__new__
_getframe = sys._getframe
_ref = weakref.ref


def _sig(fields: tuple) -> TensorSig:
    """``TensorSig(*fields)`` without NamedTuple's Python-level ``__new__`` (hot path)."""
    return _new_tuple(TensorSig, fields)


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
        # The hook records a row per op (what must be read while the op runs); the OpEvents
        # are built from the rows when ``events`` is read, in one loop.
        self._rows: list[tuple] = []
        self._built: list[OpEvent] = []
        self.truncated = False
        self.captured: dict[int, tuple[torch.Tensor, ...]] = {}
        self._limit = sys.maxsize if max_events is None else max_events
        self._calls: dict[str, int] = {}
        # content key -> first event producing it; filled from _hashed when an input needs it
        self._produced: dict[tuple, int] = {}
        self._hashed: list[TensorSig] = []  # outputs hashed by content, in order
        self._hashed_seen = 0  # how many of them _produced holds
        self._first_seen: dict[tuple, int] = {}  # external content key -> first event using it
        self._uninit: dict[tuple, tuple[int, int]] = {}  # garbage key -> (data_ptr, event)
        self._uninit_hashes: set[int] = set()  # their hashes (may hold stale ones)
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
        self._current_node = getattr(torch._C, "_current_autograd_node", lambda: None)

    _depth = 0  # frames from the hook up to the op's caller, once known (per class)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # no torch wrapper: keep_dynamo_out marks the code instead

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__torch_dispatch__" in cls.__dict__:
            cls.__torch_dispatch__ = keep_dynamo_out(cls.__dict__["__torch_dispatch__"])

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

    # -- fingerprints (the general paths; the common cases are inlined in the hook) ------------

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

    def _producer(self, key: tuple) -> int | None:
        """The first event whose output had content ``key`` (outputs are indexed only when an
        input needs the index: most inputs are found by their producer's tensor instead)."""
        hashed = self._hashed
        if self._hashed_seen < len(hashed):
            produced = self._produced
            for sig in hashed[self._hashed_seen :]:
                produced.setdefault(sig[:3], sig[4])  # (hash, dtype, shape): the key
            self._hashed_seen = len(hashed)
        return self._produced.get(key)

    def _input(self, t: torch.Tensor, index: int, entry: Any) -> TensorSig:
        """An input the hook could not take from its producer: hash it, and say where its
        content came from. ``entry``: what ``_live`` holds for ``id(t)``."""
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
            if u is not None and u[0] == data_ptr(t):  # still the garbage it was allocated with
                return _sig((0, dtype, shape, "traced", u[1], _UNINITIALIZED))
        producer = self._producer(key)
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
        """Fingerprint an output the hook's inline path does not take (not a contiguous
        CPU tensor of a common dtype, or uninitialised memory); ``trusted``: reuse the
        fingerprint for reads while the version counter holds."""
        h, dtype, shape, cls = self._hash(t)
        if uninit:
            self._uninit[(h, dtype, shape)] = (data_ptr(t), index)
            self._uninit_hashes.add(h)
            sig = _sig((0, dtype, shape, "traced", index, _UNINITIALIZED))
            trusted = False
        else:
            sig = _sig((h, dtype, shape, "traced", index, cls))
            self._initialised(t, sig)
            self._hashed.append(sig)
        self._remember(t, sig, trusted)
        return sig

    def _initialised(self, t: torch.Tensor, sig: TensorSig) -> None:
        """A traced op wrote the very bytes uninitialised memory held (recycled memory from
        an identical earlier run): it is initialised now."""
        key = (sig[0], sig[1], sig[2])
        u = self._uninit.get(key)
        if u is not None and u[0] == data_ptr(t):
            del self._uninit[key]

    def _remember(self, t: torch.Tensor, sig: TensorSig, trusted: bool) -> None:
        try:
            version = t._version if trusted else None
            self._live[id(t)] = (_ref(t), version, sig)
        except (TypeError, RuntimeError):
            pass

    # -- the dispatch hook -------------------------------------------------------------------

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        # One function on purpose: the cost of tracing is Python work per op, and a call per
        # tensor (or per part) costs as much as the work itself. The general cases are calls.
        info = OP_INFO.get(id(func))  # by id: an OpOverload's __hash__ runs Python code
        if info is None:
            info = OP_INFO[id(func)] = OpInfo(func)
        if kwargs is None:
            kwargs = {}
        rows = self._rows
        index = len(self._built) + len(rows)
        if index >= self._limit:
            self.truncated = True
            return info.call(*args, **kwargs)
        live = self._live
        if self._settle:
            # the views / in-place outputs of the last op, with the version counter that
            # ADInplaceOrView (above this mode) set after the op returned. Weak references:
            # holding the tensors would change what autograd does (it steals buffers nobody
            # else holds)
            for ref, sig in self._settle:
                t = ref()
                if t is not None:
                    try:
                        live[id(t)] = (ref, t._version, sig)
                    except RuntimeError:  # an inference tensor: no version counter to trust
                        pass
            self._settle = []

        if info.nested or kwargs:
            leaves: Any = []
            flatten(args, leaves)
            if kwargs:
                out_names = info.out_names
                if out_names:
                    flatten([v for k, v in kwargs.items() if k not in out_names], leaves)
                else:
                    flatten(list(kwargs.values()), leaves)
        else:
            leaves = args
        trust = not self.verify_inputs
        inputs = []
        scalars = []
        first = first_entry = None  # the first tensor input (a view's base), its _live entry
        for x in leaves:
            if isinstance(x, _Tensor):
                e = live.get(id(x))  # trusted while its producer's version holds
                if trust and e is not None and e[1] is not None and e[0]() is x:
                    inputs.append(e[2] if x._version == e[1] else self._input(x, index, e))
                else:
                    inputs.append(self._input(x, index, e))
                if first is None:
                    first, first_entry = x, e
            else:
                scalars.append(x)
        # the argument hash is needed now only by views (their fingerprint mixes it in)
        args_hash = (scalars_hash(info, scalars) if scalars else 0) if info.view else None
        rng = rng_hash(kwargs, leaves) if info.random else None
        flags: tuple[Any, ...] = ()
        if info.flag_pos:
            flags = info.flags(args, kwargs)

        # autograd linkage: backward ops run inside an autograd node; forward ops that need a
        # gradient have just had their node created (the sequence counter moved).
        node = self._current_node()
        node_name = None
        forward_index = -1
        requires_grad = False
        if node is not None:
            node_name = node.name()
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

        out = info.call(*args, **kwargs)

        if isinstance(out, _Tensor):
            out_tensors = [out]
        else:
            out_leaves: list[Any] = []
            flatten(out, out_leaves)
            out_tensors = [x for x in out_leaves if isinstance(x, _Tensor)]
        written = info.written(args, kwargs) if info.mutated else ()
        for x in written:  # tensors the op wrote in place (in-place and out= ops)
            if isinstance(x, _Tensor):
                for o in out_tensors:
                    if x is o:
                        break
                else:
                    out_tensors.append(x)
        interned = self._interned
        outputs: Any
        if (
            info.view
            and inputs
            and trust
            and inputs[0][5] != _UNINITIALIZED
            # a buffer (the output of a factory op, or a view of one: code may fill it): hashed
            and not (first_entry and first_entry[1] is None and first_entry[0]() is first)
        ):
            # a view computes nothing: its fingerprint is its base's mixed with the op
            base = inputs[0]
            outputs = []
            op_hash = info.op_hash
            for k, t in enumerate(out_tensors):
                size = t.shape
                shape = interned.get(size)
                if shape is None:
                    shape = interned[size] = tuple(size)
                h = _xxh(MIX_PACK(base[0], op_hash, args_hash, k))
                dtype = DTYPE_NAMES.get(t.dtype) or dtype_name(t.dtype)
                outputs.append(_new_tuple(TensorSig, (h, dtype, shape, "traced", index, base[5])))
            # a view shares its base's version counter only once ADInplaceOrView (above this
            # mode) has wrapped it: remember it when the next op starts
            self._settle = list(zip(map(_ref, out_tensors), outputs, strict=True))
        else:
            # outputs computed from tensors are trusted while their version counter holds;
            # factory outputs (no tensor input: zeros, full, empty...) are buffers code fills,
            # and so are views of them: hashed, and re-hashed whenever read
            trusted = not info.view and len(inputs) > 0
            uninit = info.uninit or (info.view and inputs and inputs[0][5] == _UNINITIALIZED)
            outputs = []
            fast = self._fast
            hashed = self._hashed
            check_uninit = self._uninit_hashes
            for t in out_tensors:
                dtype = fast.get(t.dtype)
                if (
                    uninit
                    or dtype is None
                    or not t.is_cpu
                    or type(t) not in _PLAIN
                    or t.layout != _STRIDED
                    or not t.is_contiguous()
                ):
                    outputs.append(self._output(t, index, trusted, uninit))
                    continue
                n = t.nbytes
                buffer = BUFFER_TYPES.get(n)
                if buffer is not None:
                    h = _xxh(buffer.from_address(t.data_ptr()))
                else:
                    h = memory_hash(t.data_ptr(), n) if n else EMPTY_HASH
                size = t.shape
                shape = interned.get(size)
                if shape is None:
                    shape = interned[size] = tuple(size)
                sig = _new_tuple(TensorSig, (h, dtype, shape, "traced", index, None))
                if h in check_uninit:
                    self._initialised(t, sig)
                hashed.append(sig)
                try:
                    live[id(t)] = (_ref(t), t._version if trusted else None, sig)
                except (TypeError, RuntimeError):
                    pass
                outputs.append(sig)
            if written and trusted and not uninit:
                # their version counter moves once more when the op returns (ADInplaceOrView
                # bumps it above this mode): read it when the next op starts
                self._settle = list(zip(map(_ref, out_tensors), outputs, strict=True))
        if index in self.capture_outputs_of:
            self.captured[index] = tuple(t.detach().to("cpu", copy=True) for t in out_tensors)

        if self._module_stack:
            module_path = self._module_stack[-1][1]
        elif forward_index >= 0:  # a backward op: the module of its forward op
            built = len(self._built)
            if forward_index >= built:
                module_path = rows[forward_index - built][4]
            else:
                module_path = self._built[forward_index].module_path
        else:
            module_path = ""
        try:
            frame = _getframe(self._depth or self._find_depth())
        except ValueError:  # the autograd engine's device threads: the stack ends above us
            frame = None
        locator = self._locator
        if frame in locator.held_set:  # below the frames of the last op: the same line
            source = locator.held_text
        else:
            source = self._locate(frame)
        rows.append(
            (
                info,
                tuple(inputs),
                tuple(outputs),
                source,
                module_path,
                args_hash,
                scalars,
                rng,
                flags,
                node_name,
                forward_index,
                requires_grad,
            )
        )
        return out

    @classmethod
    def _find_depth(cls) -> int:
        cls._depth = caller_depth(_getframe(2))
        return cls._depth

    # -- the events --------------------------------------------------------------------------

    @property
    def events(self) -> list[OpEvent]:
        """The recorded events, in order (built from the hook's rows on read, and kept)."""
        rows = self._rows
        if rows:
            built = self._built
            calls = self._calls
            interned = self._interned
            for info, inputs, outputs, source, module_path, ahash, scalars, rng, *rest in rows:
                flags, node_name, forward_index, requires_grad = rest
                op = info.op
                count = calls.get(op, 0)
                calls[op] = count + 1
                if ahash is None:  # not needed while tracing: hashed here
                    ahash = scalars_hash(info, scalars) if scalars else 0
                if flags:  # shared per op (per op: (True,) == (1,) across ops)
                    flags = info.flag_values.setdefault(flags, flags)
                if node_name is not None:
                    node_name = interned.setdefault(node_name, node_name)
                built.append(
                    OpEvent(
                        len(built),
                        op,
                        info.overload,
                        count,
                        inputs,
                        outputs,
                        source,
                        module_path,
                        ahash,
                        rng,
                        flags,
                        node_name,
                        forward_index,
                        requires_grad,
                    )
                )
            rows.clear()
        return self._built

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


OpTracer.__torch_dispatch__ = keep_dynamo_out(OpTracer.__dict__["__torch_dispatch__"])
