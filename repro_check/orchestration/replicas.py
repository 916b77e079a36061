"""Replicas: what varies between runs of the same test, and their results.

A :class:`ReplicaSpec` is the process-level environment of one replica (environment variables,
thread count, ``PYTHONHASHSEED``). Later work adds *variants* (other thread counts, CPU
capabilities, deterministic mode) as more specs -- the runner does not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from repro_check.core.record import RunRecord


@dataclass(frozen=True)
class ReplicaSpec:
    index: int
    env: Mapping[str, str] = field(default_factory=dict)
    num_threads: int | None = None
    label: str = ""
    #: In-process backend settings of a variant (float64, mkldnn, device, ...): applied by the
    #: worker before each test (repro_check.core.backend.apply_settings).
    settings: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.env.items())]
        if self.num_threads is not None:
            parts.append(f"threads={self.num_threads}")
        return self.label or ", ".join(parts) or "default"

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "env": dict(self.env),
            "num_threads": self.num_threads,
            "label": self.label,
            "settings": dict(self.settings),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplicaSpec:
        return cls(
            int(data["index"]),
            dict(data["env"]),
            data["num_threads"],
            data["label"],
            dict(data.get("settings") or {}),
        )


def default_specs(runs: int, *, subprocess: bool) -> list[ReplicaSpec]:
    """Identical replicas; in subprocesses each gets its own ``PYTHONHASHSEED``, because two
    real reruns of a training script differ in it (and ``set`` iteration order with them)."""
    if not subprocess:
        return [ReplicaSpec(i, label=f"in-process run {i}") for i in range(runs)]
    return [ReplicaSpec(i, env={"PYTHONHASHSEED": str(i)}) for i in range(runs)]


@dataclass(frozen=True)
class RunSpec:
    """One run of a test inside a worker: which seed sources are perturbed, and how."""

    run_id: str
    perturbations: Mapping[str, int] = field(default_factory=dict)
    bitflip: int | None = None  # nudge one weight by one ulp at initialisation (index k)
    label: str = ""
    #: Trace the ops between record(start_after) and record(stop_at) into ``path``.
    trace: Mapping[str, Any] | None = None
    #: In-process backend settings for this run: {"threads": N} and/or {"deterministic": bool}.
    backend: Mapping[str, Any] | None = None
    #: This run's part in a resume check: {"role": straight|stop|resume, "at": k, "path": ...}
    #: (core.resume_state.ResumePlan); the resume run restores the checkpoint at ``path``.
    resume: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "perturbations": dict(self.perturbations),
            "bitflip": self.bitflip,
            "label": self.label,
            "trace": dict(self.trace) if self.trace else None,
            "backend": dict(self.backend) if self.backend else None,
            "resume": dict(self.resume) if self.resume else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSpec:
        return cls(
            str(data["run_id"]),
            {str(k): int(v) for k, v in data["perturbations"].items()},
            data.get("bitflip"),
            data.get("label", ""),
            data.get("trace"),
            data.get("backend"),
            data.get("resume"),
        )


@dataclass
class ReplicaResult:
    """One replica's outcome for one test."""

    nodeid: str
    replica: int
    outcome: str  # "passed" | "failed" | "skipped" | "crashed"
    error: str = ""
    duration: float = 0.0
    record: RunRecord | None = None
    sources_used: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    predictions: list[float] | None = None
    run_info: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """How the parent asks for this result: the run id, or the replica index."""
        return self.run_id or str(self.replica)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "replica": self.replica,
            "outcome": self.outcome,
            "error": self.error,
            "duration": self.duration,
            "record": self.record.to_json() if self.record else None,
            "sources_used": self.sources_used,
            "environment": self.environment,
            "run_id": self.run_id,
            "metrics": {
                k: (v if v == v and abs(v) != float("inf") else repr(v))
                for k, v in self.metrics.items()
            },
            "predictions": self.predictions,
            "run_info": self.run_info,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplicaResult:
        record = RunRecord.from_json(data["record"]) if data.get("record") else None
        return cls(
            data["nodeid"],
            int(data["replica"]),
            data["outcome"],
            data.get("error", ""),
            float(data.get("duration", 0.0)),
            record,
            list(data.get("sources_used", [])),
            dict(data.get("environment", {})),
            str(data.get("run_id", "")),
            {k: float(v) for k, v in data.get("metrics", {}).items()},
            data.get("predictions"),
            dict(data.get("run_info", {})),
        )
