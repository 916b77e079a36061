"""Backend variants: the same test in another environment, judged against the reference.

A *variant* is one environment for a marked test -- another thread count, CPU instruction set,
oneDNN off, deterministic algorithms, double precision, ``torch.compile``, a GPU -- written as a
short name (``threads=1``, ``isa=default``, ``mkldnn=off``, ``float64``, ``cuda:deterministic``;
``+`` combines them: ``threads=1+mkldnn=off``). Each runs as replica processes of its own beside
the reference replicas: settings read at import time (``ATEN_CPU_CAPABILITY``,
``OMP_NUM_THREADS``) go in the process environment, the rest are applied in the worker before
each test (:mod:`repro_check.core.backend`).

This module parses variant names, probes which ones this machine can run (never asks for an
instruction set the CPU lacks: the process would die of SIGILL), and plans their replica
specs. Everything but :func:`probe_capabilities` is pure and unit-tested.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from repro_check.orchestration.replicas import ReplicaSpec

#: ``ATEN_CPU_CAPABILITY`` values a variant may ask for (x86-64 only, except ``default``).
ISAS = ("default", "avx2", "avx512")
#: CPU flags (``/proc/cpuinfo``) that PyTorch's dispatcher requires for each capability
#: (aten/src/ATen/native/DispatchStub.cpp: AVX2 needs AVX2 and FMA3; AVX512 needs AVX512 F,
#: BW, VL, DQ and FMA3).
ISA_FLAGS = {
    "avx2": frozenset({"avx2", "fma"}),
    "avx512": frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}),
}
FLOAT64 = "float64"
#: ``--repro-variants=none``: run no variant, not even those a marker asks for.
NO_VARIANTS = "none"
#: The vocabulary, as shown in errors and ``--help``.
VOCABULARY = (
    "threads=N",
    "isa=default|avx2|avx512",
    "mkldnn=off",
    "deterministic",
    "float64",
    "compile",
    "cuda",
    "cuda:deterministic",
    "tf32=on",
    "mps",
)
_DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


class VariantError(ValueError):
    """A variant name that cannot be used; the message says where it came from and the
    vocabulary."""


@dataclass(frozen=True)
class Variant:
    """One environment for a test: process environment, thread count and in-process settings.

    ``settings`` holds what the worker applies before each test (see
    :func:`repro_check.core.backend.apply_settings`): ``float64``, ``mkldnn``,
    ``deterministic``, ``tf32``, ``compile`` (bools) and ``device`` (``cuda``/``mps``).
    """

    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    num_threads: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: Added by repro-check to judge the others (not asked for by the user).
    judge_only: bool = False

    @property
    def isa(self) -> str | None:
        return self.env.get("ATEN_CPU_CAPABILITY")

    @property
    def device(self) -> str:
        return str(self.settings.get("device", "cpu"))

    @property
    def is_float64(self) -> bool:
        return bool(self.settings.get("float64"))

    @property
    def needs_gpu(self) -> bool:
        return self.device == "cuda"

    def describe(self) -> str:
        return f"{self.name} (added: the float64 judge)" if self.judge_only else self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "env": dict(self.env),
            "num_threads": self.num_threads,
            "settings": dict(self.settings),
            "judge_only": self.judge_only,
        }


def _atom(text: str, where: str) -> tuple[dict[str, str], int | None, dict[str, Any]]:
    """One vocabulary word -> (env, threads, settings)."""
    word = text.strip().lower()
    key, sep, value = word.partition("=")
    if word in ("deterministic",):
        return dict(_DETERMINISTIC_ENV), None, {"deterministic": True}
    if word == FLOAT64:
        return {}, None, {"float64": True}
    if word == "compile":
        return {}, None, {"compile": True}
    if word == "cuda":
        return {}, None, {"device": "cuda", "tf32": False}
    if word == "mps":
        return {}, None, {"device": "mps"}
    if key == "threads" and sep:
        if not value.isdigit() or int(value) < 1:
            raise VariantError(f"{where}: {text!r}: threads=N needs a whole number N >= 1")
        return {}, int(value), {}
    if key == "isa" and sep:
        if value not in ISAS:
            raise VariantError(
                f"{where}: {text!r}: isa= takes one of {', '.join(ISAS)} "
                f"(the values of ATEN_CPU_CAPABILITY)"
            )
        return {"ATEN_CPU_CAPABILITY": value}, None, {}
    if key == "mkldnn" and sep:
        if value not in ("off", "on"):
            raise VariantError(f"{where}: {text!r}: write mkldnn=off (oneDNN is on by default)")
        return {}, None, {"mkldnn": value == "on"}
    if key == "tf32" and sep:
        if value not in ("on", "off"):
            raise VariantError(f"{where}: {text!r}: write tf32=on")
        return {}, None, {"device": "cuda", "tf32": value == "on"}
    raise VariantError(
        f"{where}: unknown variant {text!r}; the vocabulary is {', '.join(VOCABULARY)} "
        f"(combine words with '+', e.g. threads=1+mkldnn=off)"
    )


def parse_variant(text: str, where: str = "--repro-variants") -> Variant:
    """``threads=1``, ``cuda:deterministic`` or ``threads=1+mkldnn=off`` -> a :class:`Variant`."""
    words = [w for w in text.replace(":", "+").split("+")]
    if not text.strip() or any(not w.strip() for w in words):
        raise VariantError(f"{where}: {text!r} has an empty variant name")
    env: dict[str, str] = {}
    threads: int | None = None
    settings: dict[str, Any] = {}
    for word in words:
        more_env, more_threads, more_settings = _atom(word, where)
        clash = (
            [k for k in more_env if k in env and env[k] != more_env[k]]
            + (["threads"] if more_threads is not None and threads is not None else [])
            + [k for k in more_settings if k in settings and settings[k] != more_settings[k]]
        )
        if clash:
            raise VariantError(f"{where}: {text!r} sets {clash[0]} twice, differently")
        env.update(more_env)
        threads = more_threads if more_threads is not None else threads
        settings.update(more_settings)
    if settings.get("float64") and settings.get("device") == "mps":
        raise VariantError(f"{where}: {text!r}: MPS has no float64 kernels")
    return Variant(canonical_name(env, threads, settings), env, threads, settings)


def canonical_name(env: Mapping[str, str], threads: int | None, settings: Mapping[str, Any]) -> str:
    """One spelling per environment, so that ``mkldnn=off+threads=1`` and
    ``threads=1+mkldnn=off`` are the same variant."""
    device = settings.get("device")
    words = []
    if device == "cuda":
        words.append("tf32=on" if settings.get("tf32") else "cuda")
    elif device:
        words.append(str(device))
    if threads is not None:
        words.append(f"threads={threads}")
    if "ATEN_CPU_CAPABILITY" in env:
        words.append(f"isa={env['ATEN_CPU_CAPABILITY']}")
    if settings.get("mkldnn") is False:
        words.append("mkldnn=off")
    for flag in ("deterministic", "float64", "compile"):
        if settings.get(flag):
            words.append(flag)
    name = "+".join(words) or "reference"
    return name.replace("cuda+deterministic", "cuda:deterministic", 1)


def parse_variants(items: Iterable[str], where: str = "--repro-variants") -> list[Variant]:
    """Comma-separated lists (or list items) of variant names; duplicates kept once."""
    found: dict[str, Variant] = {}
    for item in items:
        for text in str(item).split(","):
            if not text.strip():
                continue
            variant = parse_variant(text, where)
            found.setdefault(variant.name, variant)
    return list(found.values())


def with_judge(variants: Sequence[Variant]) -> list[Variant]:
    """The float64 run judges every other variant (see :mod:`repro_check.orchestration.drift`):
    when variants are asked for without it, it is added."""
    if not variants or any(v.name == FLOAT64 for v in variants):
        return list(variants)
    judge = replace(parse_variant(FLOAT64), judge_only=True)
    return [*variants, judge]


# --------------------------------------------------------------------------- what runs here


@dataclass(frozen=True)
class Capabilities:
    """What this machine (or cluster) can run. ``isas`` None: unknown (then only ``default``
    is asked for; the others are skipped saying why)."""

    machine: str = "x86_64"
    isas: tuple[str, ...] | None = ("default",)
    isa_source: str = ""
    mkldnn: bool = True
    cuda_devices: int = 0
    #: A Dask cluster with workers that declare a GPU resource (--repro-executor=dask).
    gpu_workers: bool = False
    mps: bool = False
    compile_problem: str | None = None  # None: torch.compile can run here

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "isas": list(self.isas) if self.isas is not None else None,
            "isa_source": self.isa_source,
            "mkldnn": self.mkldnn,
            "cuda_devices": self.cuda_devices,
            "gpu_workers": self.gpu_workers,
            "mps": self.mps,
            "compile_problem": self.compile_problem,
        }


def isas_from_flags(flags: Iterable[str], machine: str) -> tuple[str, ...]:
    """The ``ATEN_CPU_CAPABILITY`` values a CPU with these ``/proc/cpuinfo`` flags supports."""
    if machine.lower() not in ("x86_64", "amd64", "i686", "x86"):
        return ("default",)
    have = set(flags)
    return ("default", *(isa for isa in ("avx2", "avx512") if ISA_FLAGS[isa] <= have))


def isas_from_capability(capability: str) -> tuple[str, ...]:
    """From ``torch.backends.cpu.get_cpu_capability()`` of a process without an override."""
    order = ["default", "avx2", "avx512"]
    top = capability.strip().lower()
    return tuple(order[: order.index(top) + 1]) if top in order else ("default",)


def unsupported_reason(variant: Variant, caps: Capabilities) -> str | None:
    """Why ``variant`` cannot run here, or None when it can."""
    isa = variant.isa
    if isa is not None and isa != "default":
        if caps.isas is None:
            return (
                f"cannot tell whether this CPU supports {isa.upper()} ({caps.isa_source}); an "
                f"instruction set the CPU lacks kills the process, so it is not tried"
            )
        if isa not in caps.isas:
            return (
                f"this CPU ({caps.machine}) does not support {isa.upper()} (it supports "
                f"{', '.join(caps.isas)}; {caps.isa_source}); asking for it would kill the "
                f"process with an illegal instruction"
            )
    if variant.settings.get("mkldnn") is False and not caps.mkldnn:
        return "this torch build has no oneDNN (mkldnn): mkldnn=off would change nothing"
    if variant.device == "cuda" and not (caps.cuda_devices or caps.gpu_workers):
        what = (
            "TF32 only changes CUDA matmuls and convolutions; "
            if variant.settings.get("tf32")
            else ""
        )
        return (
            f"{what}no CUDA device here (torch.cuda.is_available() is False) and no Dask "
            f"worker with a GPU resource"
        )
    if variant.device == "mps" and not caps.mps:
        return "no Apple MPS device here (torch.backends.mps.is_available() is False)"
    if variant.settings.get("compile") and caps.compile_problem:
        return f"torch.compile cannot run here: {caps.compile_problem}"
    return None


def probe_capabilities(*, gpu_workers: bool = False) -> Capabilities:
    """Probe this machine: CPU flags, oneDNN, CUDA, MPS, and whether torch.compile can work."""
    import torch

    machine = platform.machine() or "unknown"
    isas: tuple[str, ...] | None
    flags = _cpuinfo_flags()
    if flags is not None:
        isas, source = isas_from_flags(flags, machine), "from /proc/cpuinfo flags"
    elif not os.environ.get("ATEN_CPU_CAPABILITY"):
        capability = torch.backends.cpu.get_cpu_capability()
        isas, source = isas_from_capability(capability), f"torch reports {capability}"
    else:
        isas = None
        source = "no /proc/cpuinfo, and ATEN_CPU_CAPABILITY is set in this process"
    mps = getattr(torch.backends, "mps", None)
    return Capabilities(
        machine=machine,
        isas=isas,
        isa_source=source,
        mkldnn=bool(torch.backends.mkldnn.is_available()),
        cuda_devices=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        gpu_workers=gpu_workers,
        mps=bool(mps is not None and mps.is_available()),
        compile_problem=_compile_problem(torch),
    )


def _cpuinfo_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


def _compile_problem(torch: Any) -> str | None:
    try:
        supported = torch._dynamo.is_dynamo_supported()
    except Exception as exc:  # noqa: BLE001 - any failure means: not here
        return f"torch._dynamo is unusable ({type(exc).__name__}: {exc})"
    if not supported:
        return "torch._dynamo does not support this Python version"
    if not any(shutil.which(c) for c in (os.environ.get("CXX") or "", "g++", "c++", "clang++")):
        return "inductor needs a C++ compiler for CPU kernels and none is on PATH"
    return None


# --------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedVariant:
    """A variant with its replica specs, or the reason it is skipped on this machine."""

    variant: Variant
    specs: tuple[ReplicaSpec, ...] = ()
    skipped: str = ""
    nodeids: tuple[str, ...] = ()  # the tests that asked for it

    @property
    def name(self) -> str:
        return self.variant.name

    def to_json(self) -> dict[str, Any]:
        return {
            **self.variant.to_json(),
            "replicas": [s.to_json() for s in self.specs],
            "skipped": self.skipped,
        }


def variant_specs(variant: Variant, runs: int, first_index: int) -> tuple[ReplicaSpec, ...]:
    """``runs`` replica specs of ``variant``, indexed from ``first_index``; each replica gets
    its own ``PYTHONHASHSEED``, as the reference replicas do."""
    return tuple(
        ReplicaSpec(
            first_index + i,
            {"PYTHONHASHSEED": str(i), **variant.env},
            variant.num_threads,
            f"variant {variant.name}, replica {i}",
            settings=dict(variant.settings),
        )
        for i in range(runs)
    )


def plan_variants(
    wanted: Mapping[str, Sequence[Variant]],
    caps: Capabilities,
    *,
    runs: int,
    first_index: int,
) -> list[PlannedVariant]:
    """Which variant runs which tests, in which replica processes.

    ``wanted`` maps each test id to its variants (command line, ini and marker together; the
    float64 judge included). A variant this machine cannot run is planned as skipped, with the
    reason, so every test that asked for it says so.
    """
    order: dict[str, Variant] = {}
    tests: dict[str, list[str]] = {}
    for nodeid, variants in wanted.items():
        for variant in variants:
            known = order.setdefault(variant.name, variant)
            if known.judge_only and not variant.judge_only:
                order[variant.name] = variant
            tests.setdefault(variant.name, []).append(nodeid)
    plan = []
    index = first_index
    for name, variant in order.items():
        reason = unsupported_reason(variant, caps)
        if reason:
            plan.append(PlannedVariant(variant, skipped=reason, nodeids=tuple(tests[name])))
            continue
        # The float64 judge added by repro-check is a yardstick, not a subject: one replica.
        specs = variant_specs(variant, 1 if variant.judge_only else runs, index)
        index += len(specs)
        plan.append(PlannedVariant(variant, specs, nodeids=tuple(tests[name])))
    return plan
