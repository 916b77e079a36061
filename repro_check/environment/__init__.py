"""Environment snapshots: everything outside the code that decides the numbers.

A snapshot is a versioned JSON document (``schema: "repro-check/environment"``) with one section per
source of variation: Python, platform, CPU (model, instruction sets, the capability ATen dispatches
to), thread settings, the torch build and every determinism flag, BLAS/OpenMP, CUDA/cuDNN, GPUs
through NVML, installed packages, the git state of the code and an allowlist of environment
variables.

Modules: ``probes/`` (one per source, each field under its own guard), ``snapshot`` (capture, save,
load, hash, summary), ``relevance`` (which fields decide the numbers; what a baseline keeps),
``diff``, ``render`` (text) and ``requirements`` (a pinned requirements file).

Core layer: never imports pytest; torch, numpy and pynvml are imported inside the probes, so
importing this package costs nothing.
"""

from __future__ import annotations

from repro_check.core.atomic import StoredFileError
from repro_check.environment._common import SCHEMA, SCHEMA_VERSION, printable
from repro_check.environment.diff import UNSET, EnvDifference, diff, format_diff
from repro_check.environment.probes import clear_cache
from repro_check.environment.probes.system import supported_cpu_capabilities
from repro_check.environment.relevance import RELEVANCE, for_baseline, is_relevant
from repro_check.environment.render import render_text
from repro_check.environment.requirements import requirements, torch_index_url
from repro_check.environment.snapshot import (
    capture,
    load,
    load_any,
    save,
    snapshot_hash,
    summary,
)

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "RELEVANCE",
    "UNSET",
    "EnvDifference",
    "StoredFileError",
    "capture",
    "clear_cache",
    "diff",
    "for_baseline",
    "format_diff",
    "is_relevant",
    "load",
    "load_any",
    "printable",
    "render_text",
    "requirements",
    "save",
    "snapshot_hash",
    "summary",
    "supported_cpu_capabilities",
    "torch_index_url",
]
