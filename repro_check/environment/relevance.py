"""The policy: which snapshot fields can change the numbers, and what a committed baseline keeps.

Relevance is about numerics. The GPU model, driver, CUDA/cuDNN versions, the CPU's instruction
sets and the capability ATen dispatches to, thread counts, BLAS, determinism flags, the torch
build and the numeric packages decide results; a difference there is *relevant* and the baseline
gate stops expecting equal bits. Where the run happened (hostname, paths, interpreter path), the
state of the code (git: the recorded steps already say whether the numbers moved), how long the
capture took, whether an optional *probe* (nvidia-ml-py) was installed, and which libraries
the process happened to have loaded (threadpoolctl) are *informational*: they are shown, never gate anything.
"""

from __future__ import annotations

import re
from typing import Any

from repro_check.environment._common import VOLATILE_KEYS

#: Packages whose version can change results (the numeric stack and data decoders).
NUMERIC_PACKAGES = (
    "torch",
    "torchvision",
    "torchaudio",
    "numpy",
    "scipy",
    "triton",
    "pytorch-triton*",
    "nvidia-*",
    "mkl",
    "mkl-*",
    "intel-openmp",
    "onednn*",
    "scipy-openblas*",
    "pillow*",
    "opencv-*",
)

#: Ordered (pattern, relevant) rules; the first match decides. ``*`` matches within one path segment,
#: ``[*]`` any list index; a pattern also covers everything below it. Unmatched paths: informational.
RELEVANCE: tuple[tuple[str, bool], ...] = (
    ("schema_version", False),
    ("repro_check_version", False),
    ("host", False),
    ("python.version", True),
    ("python.implementation", True),
    ("python", False),  # executable (a path), compiler, build date
    ("platform.system", True),
    ("platform.machine", True),
    ("platform.libc", True),
    ("platform", False),
    ("cpu.logical_cores", False),
    ("cpu.affinity_cores", False),
    ("cpu.cgroup_cpu_max", False),
    ("cpu", True),
    ("threads", True),
    ("torch", True),
    ("determinism", True),
    ("backends", True),
    # The libraries *loaded so far* in this process (they depend on what it imported, and in
    # which order); the BLAS builds are compared through blas.torch and blas.numpy, thread
    # settings through threads and env_vars.
    ("blas.threadpoolctl", False),
    ("blas", True),
    # Another card of the same model computes the same bits: identity and size are informational.
    ("cuda.devices[*].index", False),
    ("cuda.devices[*].uuid", False),
    ("cuda.devices[*].total_memory_mib", False),
    ("cuda", True),
    # How NVML was reached (nvidia-ml-py installed or not, library found or not) says nothing
    # about the GPU; the driver, the CUDA driver version and each device's model do.
    ("gpus.status", False),
    ("gpus.reason", False),
    ("gpus.hint", False),
    ("gpus.error", False),
    ("gpus.detail", False),
    ("gpus.nvml_version", False),
    ("gpus.visible_order_note", False),
    ("gpus.visible", False),
    ("gpus.devices[*].index", False),
    ("gpus.devices[*].uuid", False),
    ("gpus.devices[*].pci_bus_id", False),
    ("gpus.devices[*].clocks", False),
    ("gpus.devices[*].power_limit_w", False),
    ("gpus.devices[*].persistence_mode", False),
    ("gpus.devices[*].ecc_mode", False),
    ("gpus.devices[*].memory_total_mib", False),
    ("gpus", True),
    ("env_vars", True),  # refined by _INFORMATIONAL_ENV_RE in is_relevant
    # Where a package came from (a local path, the installer) is not what it computes.
    ("packages.*.url", False),
    ("packages.*.installer", False),
    ("packages.*.local_directory", False),
    ("packages.*.requested_revision", False),
    ("packages.nvidia-ml-py", False),
    *((f"packages.{name}", True) for name in NUMERIC_PACKAGES),
    ("packages", False),
    ("git", False),
)

#: Environment variables that hold paths, caches, logs or verbosity: informational. The libraries
#: ``LD_PRELOAD``/``LD_LIBRARY_PATH`` select are compared by version elsewhere (torch.parallel,
#: cuda.cudnn, blas), so their paths do not gate.
_INFORMATIONAL_ENV_RE = re.compile(
    r"CACHE|_DIR$|_PATH$|_HOME$|_FILE$|_LOGS?$|_VERBOSE$|STACKTRACES|^LD_PRELOAD$"
)

#: ``status`` values that mean "this part was not captured": :func:`diff` does not compare them.
NOT_CAPTURED = frozenset({"not-captured", "not-initialized"})

#: Sections whose probe depends on an optional package or library. When one side could not look
#: (its status is listed here), what it did or did not see is no evidence either way: every
#: difference below that section is informational.
PROBE_BLIND: dict[str, frozenset[str]] = {
    "gpus": frozenset({"nvml-python-missing", "no-nvml-library", "nvml-error"}),
}

#: Order of sections in diffs and reports.
SECTION_ORDER = (
    "torch",
    "determinism",
    "cpu",
    "threads",
    "env_vars",
    "cuda",
    "gpus",
    "blas",
    "backends",
    "python",
    "platform",
    "packages",
    "git",
    "host",
)


def _compile_rule(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern).replace(r"\[\*\]", r"\[\d+\]").replace(r"\*", r"[^.\[]*")
    return re.compile(regex + r"(?:$|[.\[])")


_RULES = tuple((_compile_rule(p), relevant) for p, relevant in RELEVANCE)


def is_relevant(path: str) -> bool:
    """True when a difference at ``path`` (e.g. ``"torch.version"``) can change the numbers."""
    if path.startswith("env_vars."):
        return not _INFORMATIONAL_ENV_RE.search(path[len("env_vars.") :])
    for rule, relevant in _RULES:
        if rule.match(path):
            return relevant
    return False


def not_captured(value: Any) -> bool:
    """A part the capture skipped on purpose (``packages`` without packages, CUDA not started)."""
    return isinstance(value, dict) and value.get("status") in NOT_CAPTURED


def probe_blind(path: str, value: Any) -> bool:
    """True when ``value`` at ``path`` says its probe could not look (e.g. no nvidia-ml-py)."""
    statuses = PROBE_BLIND.get(path)
    return bool(statuses) and isinstance(value, dict) and value.get("status") in statuses


def section_rank(path: str) -> int:
    head = re.split(r"[.\[]", path, maxsplit=1)[0]
    return SECTION_ORDER.index(head) if head in SECTION_ORDER else len(SECTION_ORDER)


# --------------------------------------------------------------------------------- baselines

# An absolute path anywhere in a string: /x, ~/x, C:\x, \\server, file:/x.
_PATH_RE = re.compile(r"(?:^|[\s=:;,'\"(])(?:/|~/|[A-Za-z]:[\\/]|\\\\)\S|file:", re.IGNORECASE)


#: Informational fields that identify a machine or are one moment's reading, whatever their value.
_MACHINE_KEYS = frozenset({"host", "hostname", "uuid", "pci_bus_id", "clocks", "visible"})


def _names_this_machine(key: str, value: Any) -> bool:
    return key in _MACHINE_KEYS or (isinstance(value, str) and bool(_PATH_RE.search(value)))


def _strip(node: Any, path: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            child = f"{path}.{key}" if path else key
            if not is_relevant(child) and _names_this_machine(key, value):
                continue
            out[key] = _strip(value, child)
        return out
    if isinstance(node, list):
        return [_strip(value, f"{path}[{i}]") for i, value in enumerate(node)]
    return node


def for_baseline(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``snapshot`` fit for a committed baseline: every determinism-relevant field, and
    only those informational fields that name no machine -- no hostname, no GPU UUID or PCI bus
    id, no absolute path (the interpreter, the git checkout, cache folders, local package URLs),
    no capture time or clock reading.

    Relevant fields are kept as they are, because the gate compares them. The result still loads
    as a snapshot, and diffs against a full one with informational differences only.
    """
    kept = {k: v for k, v in snapshot.items() if k not in VOLATILE_KEYS}
    return _strip(kept, "")
