"""Hypothesis strategies for property-based determinism tests.

Import them in your own tests::

    from hypothesis import given
    from repro_check.strategies import seeds, source_seed_maps, tensors, small_perturbations

    @given(seed=seeds())
    def test_two_replicas_agree(seed):
        assert fingerprint(train(seed)) == fingerprint(train(seed))

    @given(x=tensors())
    def test_fingerprint_is_stable(x):
        assert fingerprint(x) == fingerprint(x.clone())

torch is imported lazily, inside the strategies, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALL_DTYPES",
    "DEFAULT_SOURCES",
    "FLOAT_DTYPES",
    "KNOWN_DTYPES",
    "LAYOUTS",
    "MAX_SEED",
    "TORCH_MAX_SEED",
    "Perturbation",
    "nudge",
    "seeds",
    "small_perturbations",
    "source_seed_maps",
    "tensors",
]

#: Largest seed repro-check itself derives (63 bits: safe in an int64 everywhere).
MAX_SEED = 2**63 - 1
#: Largest seed ``torch.manual_seed`` accepts. It also takes negatives down to ``-2**63``, but
#: those alias ``2**64 + seed`` (torch.initial_seed() of -1 is 2**64 - 1), so they add nothing.
TORCH_MAX_SEED = 2**64 - 1

#: Sources of randomness that ``RunContext.seed_for`` knows by convention.
DEFAULT_SOURCES = ("init", "data", "augment", "dropout")

#: dtype names :func:`tensors` draws from by default (attribute names of ``torch``).
ALL_DTYPES = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
    "complex64",
)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

#: Memory layouts :func:`tensors` can produce. "expanded" (stride-0, overlapping memory; in-place
#: writes fail on it) is available but not drawn by default.
LAYOUTS = ("contiguous", "transposed", "strided", "offset", "expanded")
DEFAULT_LAYOUTS = ("contiguous", "transposed", "strided", "offset")


#: Every dtype name :func:`tensors` understands (strings are checked without importing torch).
KNOWN_DTYPES = (*ALL_DTYPES, "complex128")


def _dtype_name(dtype: Any) -> str:
    """The torch attribute name of ``dtype`` (a ``torch.dtype`` or a name), validated."""
    name = str(dtype).removeprefix("torch.")
    if name not in KNOWN_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose from {KNOWN_DTYPES}")
    return name


def _dtype(dtype: Any) -> torch.dtype:
    import torch

    return getattr(torch, _dtype_name(dtype))


# --------------------------------------------------------------------------------------------
# seeds


def seeds(min_value: int = 0, max_value: int = MAX_SEED) -> st.SearchStrategy[int]:
    """Seeds as non-negative ints, by default ``[0, 2**63 - 1]`` (what repro-check derives).

    Pass ``max_value=TORCH_MAX_SEED`` (``2**64 - 1``) for the full range ``torch.manual_seed``
    accepts. Hypothesis favours the boundaries (0, 1, the maximum), where seed handling that
    truncates to 32 bits or overflows an int64 breaks. ::

        @given(seed=seeds())
        def test_two_replicas_agree(seed):
            assert train(seed) == train(seed)
    """
    if not 0 <= min_value <= max_value <= TORCH_MAX_SEED:
        raise ValueError(
            f"need 0 <= min_value <= max_value <= 2**64 - 1, got {min_value}, {max_value}"
        )
    return st.integers(min_value=min_value, max_value=max_value)


def source_seed_maps(
    sources: Sequence[str] = DEFAULT_SOURCES,
    seed_strategy: st.SearchStrategy[int] | None = None,
    distinct: bool = False,
) -> st.SearchStrategy[dict[str, int]]:
    """Dicts mapping each source of randomness to a seed, e.g. ``{"init": 3, "data": 17, ...}``.

    ``distinct=True`` draws pairwise-different seeds (Hypothesis otherwise likes to repeat
    values, which is exactly the case where two streams accidentally coincide). ::

        @given(plan=source_seed_maps())
        def test_dropout_seed_only_changes_masks(plan):
            ...
    """
    names = list(dict.fromkeys(sources))
    if len(names) != len(sources):
        raise ValueError(f"duplicate source names in {sources!r}")
    strategy = seed_strategy if seed_strategy is not None else seeds()
    if not distinct:
        return st.fixed_dictionaries({name: strategy for name in names}).map(
            lambda drawn: {name: drawn[name] for name in names}  # keep the sources' order
        )
    return st.lists(strategy, min_size=len(names), max_size=len(names), unique=True).map(
        lambda values: dict(zip(names, values, strict=True))
    )


# --------------------------------------------------------------------------------------------
# ulp perturbations


def nudge(tensor: torch.Tensor, index: tuple[int, ...], ulps: int) -> torch.Tensor:
    """A copy of ``tensor`` with element ``index`` moved ``ulps`` representable values.

    Uses ``torch.nextafter`` towards +inf (``ulps > 0``) or -inf (``ulps < 0``), so each step is
    exactly one unit in the last place of the element's dtype (float16, bfloat16, float32,
    float64). The copy keeps the input's strides where ``clone`` can. Raises ``ValueError`` for
    a non-floating dtype or when the element cannot move (NaN, or already at the infinity it is
    pushed towards).
    """
    import torch

    if not tensor.is_floating_point():
        raise ValueError(f"nudge needs a floating-point tensor, got {tensor.dtype}")
    index = tuple(int(i) for i in index)
    out = tensor.clone()
    if ulps == 0:
        return out
    target = torch.tensor(float("inf") if ulps > 0 else float("-inf"), dtype=tensor.dtype)
    element = out[index].detach().cpu()
    original = element.clone()
    for _ in range(abs(int(ulps))):
        element = torch.nextafter(element, target)
    if torch.equal(element, original) or torch.isnan(original):
        raise ValueError(
            f"element {index} = {original.item()!r} ({tensor.dtype}) cannot move {ulps} ulp(s)"
        )
    with torch.no_grad():
        out[index] = element.to(out.device)
    return out


@dataclass(frozen=True)
class Perturbation:
    """Move element ``index`` of a tensor by ``ulps`` units in the last place (see :func:`nudge`)."""

    index: tuple[int, ...]
    ulps: int

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """A perturbed copy of ``tensor``; the input is left unchanged."""
        return nudge(tensor, self.index, self.ulps)

    __call__ = apply


def small_perturbations(
    shape: Sequence[int], dtype: Any = "float32", max_ulps: int = 4
) -> st.SearchStrategy[Perturbation]:
    """:class:`Perturbation` objects for tensors of ``shape``: one element, 1..max_ulps ulps, +-.

    The smallest change a tensor of this dtype can undergo -- the kind a different reduction
    order or CPU instruction set produces. Use it to check that comparisons and fingerprints
    notice a single-ulp difference, and that tolerances accept it::

        @given(p=small_perturbations((4, 3)))
        def test_fingerprint_sees_one_ulp(p):
            x = torch.randn(4, 3)
            assert fingerprint(p.apply(x)) != fingerprint(x)

    ``dtype`` (a torch dtype or its name) must be floating point; ``shape`` must hold at least
    one element (``()`` is fine: a 0-d tensor).
    """
    name = _dtype_name(dtype)
    if name not in FLOAT_DTYPES:
        raise ValueError(f"small_perturbations needs a floating-point dtype, got {name}")
    shape = tuple(int(s) for s in shape)
    if any(s == 0 for s in shape):
        raise ValueError(f"shape {shape} has no elements to perturb")
    if max_ulps < 1:
        raise ValueError(f"max_ulps must be >= 1, got {max_ulps}")
    index = st.tuples(*(st.integers(0, s - 1) for s in shape))
    ulps = st.integers(1, max_ulps).flatmap(lambda k: st.sampled_from((k, -k)))
    return st.builds(Perturbation, index=index, ulps=ulps)


# --------------------------------------------------------------------------------------------
# tensors


_BF16_MAX = 3.3895313892515355e38  # torch.finfo(torch.bfloat16).max, exact in float32


def _numpy_array(draw: Any, dtype_name: str, shape: tuple[int, ...], finite: dict[str, bool]):
    import numpy as np
    from hypothesis.extra import numpy as hnp

    if dtype_name == "bfloat16":  # numpy has no bfloat16: draw float32, cast in torch
        np_dtype = np.dtype("float32")
    else:
        np_dtype = np.dtype(dtype_name)
    elements = None
    if dtype_name == "bfloat16" and not finite["allow_infinity"]:
        # float32 values beyond bfloat16's largest finite value would round to inf
        elements = st.floats(-_BF16_MAX, _BF16_MAX, width=32, allow_nan=finite["allow_nan"])
    elif np_dtype.kind == "f":
        elements = st.floats(width=np_dtype.itemsize * 8, **finite)
    elif np_dtype.kind == "c":
        elements = st.complex_numbers(width=np_dtype.itemsize * 8, **finite)
    return draw(hnp.arrays(np_dtype, shape, elements=elements))


def _special_values(dtype: torch.dtype, finite: dict[str, bool]) -> list[float]:
    """Edge values of a floating dtype: NaN, +-inf, -0, subnormal, smallest normal, +-max."""
    import torch

    real = dtype.to_real() if dtype.is_complex else dtype
    info = torch.finfo(real)
    smallest_subnormal = torch.nextafter(torch.zeros((), dtype=real), torch.ones((), dtype=real))
    values = [float("nan")] if finite["allow_nan"] else []
    if finite["allow_infinity"]:
        values += [float("inf"), float("-inf")]
    return values + [-0.0, float(smallest_subnormal), info.tiny, info.max, -info.max]


@st.composite
def _tensors(
    draw: Any,
    dtypes: tuple[Any, ...],
    min_dims: int,
    max_dims: int,
    min_side: int,
    max_side: int,
    layouts: tuple[str, ...],
    finite: dict[str, bool],
) -> torch.Tensor:
    import torch

    name = draw(st.sampled_from(dtypes))
    dtype = _dtype(name)
    shape = tuple(
        draw(st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims))
    )
    layout = draw(st.sampled_from(layouts))
    if layout == "transposed" and len(shape) < 2:
        layout = "contiguous"
    if layout in ("strided", "offset", "expanded") and len(shape) == 0:
        layout = "contiguous"

    def make(base_shape: tuple[int, ...]) -> torch.Tensor:
        array = _numpy_array(draw, name, base_shape, finite)
        base = torch.from_numpy(array.copy()).to(dtype)
        if (base.is_floating_point() or base.is_complex()) and base.numel() > 0:
            # Hypothesis rarely puts NaN/inf/-0/subnormals in an array: plant one, often
            specials = _special_values(dtype, finite)
            if draw(st.booleans()):
                flat = base.view(-1)
                flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(specials))
        return base

    if layout == "contiguous":
        return make(shape)
    if layout == "transposed":
        # a contiguous tensor with the last two dims swapped, then transposed back to ``shape``
        base = make(shape[:-2] + (shape[-1], shape[-2]))
        return base.transpose(-1, -2)
    if layout == "strided":
        dim = draw(st.integers(0, len(shape) - 1))
        step = draw(st.integers(2, 3))
        base_shape = list(shape)
        base_shape[dim] = shape[dim] * step
        base = make(tuple(base_shape))
        index = [slice(None)] * len(shape)
        index[dim] = slice(None, None, step)
        return base[tuple(index)]
    if layout == "offset":
        # a view that starts inside its storage: storage_offset() > 0
        dim = draw(st.integers(0, len(shape) - 1))
        start = draw(st.integers(1, 2))
        base_shape = list(shape)
        base_shape[dim] = shape[dim] + start
        base = make(tuple(base_shape))
        return base.narrow(dim, start, shape[dim])
    # expanded: stride 0 along one dim
    dim = draw(st.integers(0, len(shape) - 1))
    base_shape = list(shape)
    base_shape[dim] = 1
    return make(tuple(base_shape)).expand(*shape)


def tensors(
    dtypes: Sequence[Any] = ALL_DTYPES,
    min_dims: int = 0,
    max_dims: int = 3,
    min_side: int = 0,
    max_side: int = 5,
    layouts: Sequence[str] = DEFAULT_LAYOUTS,
    allow_nan: bool = True,
    allow_infinity: bool = True,
) -> st.SearchStrategy[torch.Tensor]:
    """Real CPU torch tensors over the common dtypes, shapes and memory layouts.

    Draws 0-d tensors (``min_dims=0``), empty ones (a side of 0), and non-contiguous views:
    ``"transposed"`` (last two dims swapped), ``"strided"`` (a ``::2`` / ``::3`` slice),
    ``"offset"`` (``storage_offset() > 0``) and, on request, ``"expanded"`` (stride 0).
    Floating and complex values include NaN and +-inf unless ``allow_nan`` / ``allow_infinity``
    say otherwise -- remember that ``torch.equal`` is False for NaN. ::

        @given(x=tensors(dtypes=FLOAT_DTYPES, allow_nan=False))
        def test_roundtrip(x):
            assert torch.equal(load(save(x)), x)
    """
    dtypes = tuple(dtypes)
    if not dtypes:
        raise ValueError("dtypes must not be empty")
    dtypes = tuple(_dtype_name(d) for d in dtypes)  # fail fast, without importing torch
    layouts = tuple(layouts)
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if unknown or not layouts:
        raise ValueError(f"layouts must be a non-empty subset of {LAYOUTS}, got {layouts}")
    if not 0 <= min_dims <= max_dims:
        raise ValueError(f"need 0 <= min_dims <= max_dims, got {min_dims}, {max_dims}")
    if not 0 <= min_side <= max_side:
        raise ValueError(f"need 0 <= min_side <= max_side, got {min_side}, {max_side}")
    finite = {"allow_nan": allow_nan, "allow_infinity": allow_infinity}
    return _tensors(dtypes, min_dims, max_dims, min_side, max_side, layouts, finite)
