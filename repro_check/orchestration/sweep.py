"""Seed-sensitivity sweeps: which runs to make, where their results live, how to resume.

For each named source, K runs perturb only that source's stream (``SeedPlan`` perturbations);
``all`` perturbs every stream at once; ``bitflip`` keeps every seed and nudges one weight by one
ulp. Results are appended, one JSON line per finished run, to a store in the report folder, so a
killed sweep restarts from the runs already finished.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro_check.core.seeding import GLOBAL_SOURCE
from repro_check.orchestration.executor import append_channel
from repro_check.orchestration.replicas import ReplicaResult, RunSpec

ALL = "all"
BITFLIP = "bitflip"
BACKEND = "backend"
#: What a ``backend`` run changes instead of a seed, cycled over its K runs.
BACKEND_VARIANTS = (
    {"threads": 1},
    {"threads": 2},
    {"deterministic": True},
    {"threads": 1, "deterministic": True},
)
DEFAULT_SOURCES = ("init", "data", GLOBAL_SOURCE)
STORE_NAME = "runs.jsonl"


def plan_runs(sources: Sequence[str], k: int, only: str | None = None) -> list[RunSpec]:
    """K runs per source, plus K runs of ``all`` (always: the reference for variance shares)."""
    names = list(dict.fromkeys([*sources, ALL]))
    runs = []
    for source in names:
        for index in range(k):
            if source == BITFLIP:
                run = RunSpec(f"{source}:{index}", {}, bitflip=index, label=source)
            elif source == BACKEND:
                variant = BACKEND_VARIANTS[index % len(BACKEND_VARIANTS)]
                run = RunSpec(f"{source}:{index}", {}, label=source, backend=variant)
            else:
                run = RunSpec(f"{source}:{index}", {source: index + 1}, label=source)
            runs.append(run)
    if only is not None:
        runs = [run for run in runs if run.run_id == only]
    return runs


def split_round_robin(runs: Sequence[RunSpec], jobs: int) -> list[list[RunSpec]]:
    buckets: list[list[RunSpec]] = [[] for _ in range(max(1, min(jobs, len(runs))))]
    for position, run in enumerate(runs):
        buckets[position % len(buckets)].append(run)
    return buckets


@dataclass
class SweepStore:
    """The append-only record of finished runs (the resume point of an interrupted sweep)."""

    path: Path
    base_seed: int

    def completed(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Finished rows of this base seed, keyed by (test, run id); a torn last line (the
        process was killed mid-write) is ignored."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        if not self.path.exists():
            return rows
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("base_seed") == self.base_seed and row.get("status") in ("ok", "nan"):
                rows[(row["test"], row["run_id"])] = row
        return rows

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_channel(self.path, row)


def result_row(
    result: ReplicaResult, *, base_seed: int, root_seed: int, command: str
) -> dict[str, Any]:
    source, _, index = result.run_id.partition(":")
    metrics = result.metrics
    status = "ok"
    if result.outcome in ("failed", "crashed"):
        status = "failed"
    elif not metrics:
        status = "failed"
    elif any(not math.isfinite(v) for v in metrics.values()):
        status = "nan"
    return {
        "test": result.nodeid,
        "run_id": result.run_id,
        "source": source,
        "k": int(index) if index.isdigit() else 0,
        "status": status,
        "base_seed": base_seed,
        "root_seed": root_seed,
        "perturbation": int(index) + 1 if index.isdigit() else 0,
        "command": command,
        "error": result.error
        if status == "failed"
        else ("" if metrics else "the test recorded no scalar metric (record(step, loss=...))"),
        "metrics": {k: (v if math.isfinite(v) else repr(v)) for k, v in metrics.items()},
        "sources_used": result.sources_used,
        "predictions": result.predictions,
        "run_info": result.run_info,
        "duration_s": round(result.duration, 4),
    }


def runs_frame(rows: Iterable[dict[str, Any]]) -> Any:
    """The DataFrame the analysis reads: one row per run, ``metric.<name>`` columns."""
    import pandas as pd

    records = []
    for row in rows:
        flat = {
            key: row[key]
            for key in (
                "test",
                "source",
                "k",
                "status",
                "root_seed",
                "perturbation",
                "command",
                "error",
                "run_id",
            )
        }
        for name, value in row["metrics"].items():
            flat[name] = float(value)
        records.append(flat)
    return pd.DataFrame.from_records(records)


def prediction_agreement(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per test and source: mean pairwise disagreement and correlation of the predictions."""
    import itertools

    import numpy as np

    grouped: dict[tuple[str, str], list[np.ndarray]] = {}
    for row in rows:
        if row.get("predictions"):
            grouped.setdefault((row["test"], row["source"]), []).append(
                np.asarray(row["predictions"], dtype=np.float64)
            )
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (test, source), arrays in grouped.items():
        pairs = [(a, b) for a, b in itertools.combinations(arrays, 2) if a.shape == b.shape]
        if not pairs:
            continue
        disagreement = float(np.mean([np.mean(a != b) for a, b in pairs]))
        correlations = [
            float(np.corrcoef(a, b)[0, 1]) for a, b in pairs if np.std(a) > 0 and np.std(b) > 0
        ]
        out.setdefault(test, {})[source] = {
            "mean_disagreement": disagreement,
            "mean_correlation": float(np.mean(correlations)) if correlations else float("nan"),
            "pairs": len(pairs),
        }
    return out
