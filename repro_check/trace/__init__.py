"""Op tracing, trace diffs and the CUDA nondeterminism audit (core layer: no pytest).

==============  ===============================================================================
``events``      ``OpEvent``, ``TensorSig``: what a trace holds (plain data)
``tracer``      ``OpTracer``: the TorchDispatchMode that records every aten op (imports torch)
``hashing``     content hashes of traced tensors
``frames``      ``SourceLocator``: which user line called an op (shared with the audit)
``diff``        ``diff_traces`` -> ``TraceDiff``: where two traces first part, and why
``replay``      ``replay_divergence``, ``compare_event_outputs``: element-level replays
``io``          ``write_trace`` / ``read_trace``: trace files (schema header + JSON lines)
``ops``         ``load_table`` -> ``OpTable``: the one table of op knowledge (risk, advice)
``audit``       ``audit`` -> ``RiskFinding``: which ops of a CPU trace are risky on CUDA
==============  ===============================================================================

Names are imported lazily (``audit`` is a module: ``from repro_check.trace.audit import
audit``): ``import repro_check.trace`` does not import torch; only the tracer
and the replay do, when used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OpEvent": "events",
    "TensorSig": "events",
    "OpTracer": "tracer",
    "DEFAULT_MAX_EVENTS": "tracer",
    "SourceLocator": "frames",
    "display_path": "frames",
    "is_internal_file": "frames",
    "user_source": "frames",
    "TraceDiff": "diff",
    "diff_traces": "diff",
    "OutputComparison": "replay",
    "compare_event_outputs": "replay",
    "replay_divergence": "replay",
    "read_trace": "io",
    "write_trace": "io",
    "OpEntry": "ops",
    "OpTable": "ops",
    "advice_for": "ops",
    "load_table": "ops",
    "nondeterminism_alert": "ops",
    "CallSite": "audit",
    "DeterminismAlert": "audit",
    "RiskFinding": "audit",
    "alerts_under_deterministic_mode": "audit",
    "docstring_items": "audit",
    "format_findings": "audit",
    "version_in_range": "audit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'repro_check.trace' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"repro_check.trace.{module}"), name)
    globals()[name] = value
    return value
